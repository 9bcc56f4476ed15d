"""The BossNet network in PyTorch, state-dict compatible with the published weights.

``BossNet().state_dict()`` has the published keys and shapes, key for key (72,607,520
parameters). Two ways compute the same forward pass from the same state dict:

``conv_impl="direct"``
    The published sequence of operations (``conv1d`` → BatchNorm → ELU …), unchanged.
``conv_impl="fft"``
    The kernel-30 convolutions of the residual blocks as products in the frequency
    domain (``rfft`` → one batched complex matmul over frequencies → ``irfft``), with the
    inference-mode BatchNorm folded into the convolution. Several times fewer operations
    on a CPU; results agree with the direct way to float32 rounding (≤ 3e-5 of the outputs
    on the formula-weight vectors, where the direct way alone moves by 3e-5 between batch
    sizes).
    On a CPU the linear layers (and their ReLU) go straight to oneDNN as well
    (:mod:`workers.linear`): torch's default BLAS, MKL, takes its AVX2 code on AMD
    processors, oneDNN its AVX-512 code (2.8x the rate on a Zen 5 host). Same float32
    products, another summation order.

Precision (``forward(x, precision=...)``, opt-in, see :data:`PRECISIONS`): ``"float32"``
(default) is the published arithmetic, TF32 off on CUDA; ``"tf32"`` lets CUDA convolutions
and matmuls use TF32 tensor cores (no effect on a CPU); ``"bf16"`` runs the forward under
``torch.autocast(dtype=torch.bfloat16)``. torch has no bfloat16 FFT and autocast leaves
complex matmuls alone, so on the ``fft`` way the convolutional features stay float32 and
only the hidden linear layers (99.7 % of the parameters) run in bfloat16; on the ``direct``
way the convolutions run in bfloat16 too. The last layer (1024 → 4) stays float32 in
every mode, so the outputs are not rounded to bfloat16.

The FFT convolutions are in :mod:`workers.bossnet.fft`; loading weights and the demo
weights in :mod:`workers.bossnet.weights`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.bossnet import fft, pooling
from workers.bossnet.schema import PRECISIONS, check_precision  # noqa: F401 (re-exported)
from workers.linear import linear
from workers.precision import cuda_tf32
from workers.threads import side_by_side

CONV_IMPLS = ("fft", "direct")
FFT_CHUNK_ROWS = 24  # the fewest rows per pass through the convolutions on the fft way
# Activation bytes per pass on the fft way: BOSS's 24 rows of 64 channels × 2,000 samples,
# measured best for its caches. A narrower network (Gaia RVS: 8 channels) takes that many
# bytes in more rows, so its small tensors cost fewer calls per row.
FFT_CHUNK_BYTES = 24 * 64 * 2000 * 4
# Activation bytes per pass when the pass runs on one core (on a CPU, every pass: see
# BossNet._pooled_fft): an eighth of the above, about a core's L2 cache and a half. Gaia RVS
# then takes ~37 rows a pass and its convolutions ~25 % less CPU time than in ~300-row
# passes; BOSS keeps its 24 rows (FFT_CHUNK_ROWS), as fast as 12 on one core.
FFT_CORE_BYTES = FFT_CHUNK_BYTES // 8


# -- modules whose attribute names make the published state-dict keys -------------------

class PositionalEncoding(nn.Module):
    """The published one-channel positional encoding: ``sin(j · inv_freq)``, j = pixel index.

    The published class computes sin and cos for ``ceil(1/2)·2 = 2`` channels and keeps
    the first, so only ``inv_freq`` (= 1) is stored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("inv_freq", torch.ones(1))

    def forward(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """The positional channel, shape ``(length,)``."""
        pos = torch.arange(length, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        return torch.sin(pos * self.inv_freq[0]).to(dtype)


class ConvolutionBlock(nn.Module):
    """Conv1d (with bias) → BatchNorm → ELU → MaxPool1d(2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.conv_layer = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_layer(x)
        out = _bn(out, self.bn)
        return F.max_pool1d(F.elu(out), 2)


def first_block(in_channels: int = 1, model_dim: int = 4, dim_mults: Sequence[int] = (1, 2, 4, 8, 16),
                kernel_size: int = 30, pos_enc: bool = True, **_) -> ConvolutionBlock:
    """The network's first block for its shape arguments (those of :class:`BossNet`; others ignored).

    It is the first module built, and the first to draw from the random generator.
    """
    return ConvolutionBlock(in_channels + (1 if pos_enc else 0), dim_mults[0] * model_dim, kernel_size,
                            kernel_size // 2)


class ResidualBlock(nn.Module):
    """Conv → BN → ELU → Conv → BN, plus the channel-zero-padded input, → ELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.padding1 = padding
        # An even kernel with padding k/2 grows the length by one; conv2 shrinks it back.
        self.padding2 = padding - 1 if kernel_size % 2 == 0 else padding
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=self.padding1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=self.padding2, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)

    @property
    def channel_offset(self) -> int:
        """Zero channels placed before the input's channels in the shortcut."""
        return (self.out_channels - self.in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.elu(_bn(self.conv1(x), self.bn1))
        out = _bn(self.conv2(out), self.bn2)
        ch1 = self.channel_offset
        residual = F.pad(x, (0, 0, ch1, self.out_channels - self.in_channels - ch1))
        return F.elu(out + residual)


class LinearBlock(nn.Module):
    """Linear → ReLU."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear_layer = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear_layer(x))


def _bn(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    # Always the running statistics: the network is only ever used for inference here.
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class BossNet(nn.Module):
    """The BossNet residual CNN (Sizemore et al. 2024); arguments as the published ``model_args.yaml``.

    Parameters
    ----------
    in_channels, model_dim, dim_mults, kernel_size, num_targets, adapt_pool_output_dim,
    num_linear, linear_dim, pos_enc
        Architecture; the defaults are those of the published BOSS model.
    conv_impl : {"auto", "fft", "direct"}
        How the forward pass computes the convolutions (see the module docstring).
        ``"auto"``: ``"fft"`` on a CPU, ``"direct"`` (cuDNN) on other devices.

    Notes
    -----
    Input: ``(B, 1, 3900)`` log-scaled flux. Output: ``(B, 4)`` normalized
    ``[log g, log Teff, [Fe/H], v_r]``. BatchNorm always uses its running statistics.
    The ``fft`` way is for inference only (no gradients flow to the weights).
    """

    def __init__(self, in_channels: int = 1, model_dim: int = 4,
                 dim_mults: Sequence[int] = (1, 2, 4, 8, 16), kernel_size: int = 30,
                 num_targets: int = 4, adapt_pool_output_dim: int = 1024, num_linear: int = 6,
                 linear_dim: int = 1024, pos_enc: bool = True, conv_impl: str = "auto") -> None:
        super().__init__()
        padding = kernel_size // 2
        self.pos_enc = PositionalEncoding() if pos_enc else None
        self.first_conv = first_block(in_channels, model_dim, dim_mults, kernel_size, pos_enc)
        dims = [model_dim * m for m in dim_mults]
        self.res_blocks = nn.ModuleList(
            ResidualBlock(c_in, c_out, kernel_size, padding) for c_in, c_out in zip(dims[:-1], dims[1:])
        )
        self.adapt_pool_output_dim = adapt_pool_output_dim
        self.linear_input_size = dims[-1] * adapt_pool_output_dim
        self.linear_sequential = nn.Sequential(
            LinearBlock(self.linear_input_size, linear_dim),
            *[LinearBlock(linear_dim, linear_dim) for _ in range(num_linear - 1)],
            nn.Linear(linear_dim, num_targets),
        )
        self.conv_impl = conv_impl
        self.fft_chunk_rows = FFT_CHUNK_ROWS
        self._plan: fft.FFTPlan | None = None
        self.eval()

    # -- configuration -------------------------------------------------------------
    @property
    def conv_impl(self) -> str:
        return self._conv_impl

    @conv_impl.setter
    def conv_impl(self, value: str) -> None:
        if value not in ("auto", *CONV_IMPLS):
            raise ValueError(f"conv_impl must be 'auto', 'fft' or 'direct', not {value!r}")
        self._conv_impl = value

    def resolved_conv_impl(self, device: torch.device | None = None) -> str:
        """The convolution way used on ``device`` (the model's device by default)."""
        if self._conv_impl != "auto":
            return self._conv_impl
        device = device or self.first_conv.conv_layer.weight.device
        return "fft" if device.type == "cpu" else "direct"

    # -- forward -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, precision: str = "float32") -> torch.Tensor:
        """Normalized predictions ``(B, 4)`` for log-scaled spectra ``(B, 1, L)``.

        Parameters
        ----------
        x : (B, 1, L) float32 tensor
            Log-scaled spectra on the model's device.
        precision : {"float32", "tf32", "bf16"}
            Arithmetic of the forward (see the module docstring); the output is float32
            whatever the precision.
        """
        precision = check_precision(precision)
        if x.shape[0] == 0:  # FFT libraries reject empty batches
            return x.new_zeros((0, self.linear_sequential[-1].out_features))
        with _precision_mode(x.device, precision):
            if self.resolved_conv_impl(x.device) == "fft":
                # torch has no bfloat16 FFT: keep the frequency-domain features in float32.
                no_autocast = (torch.autocast(x.device.type, enabled=False) if precision == "bf16"
                               else contextlib.nullcontext())
                with no_autocast:
                    out = self._pooled_fft(x)
            else:
                out = self._pooled(self._features_direct(x))
            if precision != "bf16":
                return self._linear_layers(out)
            hidden = self.linear_sequential[:-1](out)
            # The 4-output head in float32: bfloat16 would round the outputs themselves to
            # 8 significant bits (v_r in steps of ~0.5 km/s near 100 km/s); it costs
            # 1024×4 multiply-adds per row.
            with torch.autocast(x.device.type, enabled=False):
                return self.linear_sequential[-1](hidden.float())

    def _fft_chunk(self, x: torch.Tensor, budget: int = FFT_CHUNK_BYTES) -> int:
        """Rows per pass through the fft way's convolutions: ``budget`` bytes of activations, at least ``fft_chunk_rows``."""
        plan = self._fft_plan(x.shape[-1], x.device, x.dtype)
        return max(self.fft_chunk_rows, budget // max(1, plan.row_bytes))

    def _pooled_fft(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features ``(B, C·P)`` of the fft way: convolutions in cache-sized passes of rows.

        On a CPU every pass runs on one core, in passes of :data:`FFT_CORE_BYTES`: with
        several torch threads side by side, one thread each
        (:func:`workers.threads.one_thread_workers`), as many passes as threads at a time,
        with no OpenMP barrier between two operations. The rows of a pass depend on no
        other row, so the split leaves the results as they are.
        """
        out = x.new_empty(x.shape[0], self.linear_input_size)
        cpu = x.device.type == "cpu"
        rows = self._fft_chunk(x, FFT_CORE_BYTES if cpu else FFT_CHUNK_BYTES)
        threads = min(torch.get_num_threads(), x.shape[0]) if cpu else 1
        if threads > 1:  # whole rounds of equal passes: every thread busy to the end
            passes = -(-x.shape[0] // rows)
            rows = -(-x.shape[0] // (-(-passes // threads) * threads))
        parts = list(zip(x.split(rows), out.split(rows)))
        if threads == 1 or len(parts) == 1:
            for part, dest in parts:
                self._pool_into(*self._features_fft(part), dest)
            return out
        self._fft_plan(x.shape[-1], x.device, x.dtype)  # made once, before the threads read it
        side_by_side(lambda part_dest: self._pool_into(*self._features_fft(part_dest[0]), part_dest[1]), parts)
        return out

    def _linear_layers(self, x: torch.Tensor) -> torch.Tensor:
        """The linear stack: on the ``fft`` way through :func:`workers.linear.linear`, else the published modules."""
        if self.resolved_conv_impl(x.device) != "fft":
            return self.linear_sequential(x)
        for block in self.linear_sequential[:-1]:
            x = linear(x, block.linear_layer.weight, block.linear_layer.bias, relu=True)
        last = self.linear_sequential[-1]
        return linear(x, last.weight, last.bias)

    def _pool_into(self, buf: torch.Tensor, length: int, out: torch.Tensor) -> None:
        """Pool the zero-padded features ``buf[..., :length]`` into the flatten ``out`` (rows, C·P)."""
        if buf.device.type == "cpu":
            pooling.pool_into(buf, length, out)
        else:
            out.copy_(self._pooled(buf[..., :length]))

    def _pooled(self, features: torch.Tensor) -> torch.Tensor:
        if features.device.type == "cpu":
            # The CPU kernel vectorizes over channels only in channels-last memory: ~2x
            # faster here, conversions included, and the same sums in the same order.
            features = features.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            out = F.adaptive_avg_pool2d(features, (1, self.adapt_pool_output_dim))
        else:
            out = F.adaptive_avg_pool1d(features, self.adapt_pool_output_dim)
        return out.reshape(out.shape[0], self.linear_input_size)  # channel-major flatten

    def _with_position(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_enc is None:
            return x
        pos = self.pos_enc(x.shape[-1], x.dtype)
        return torch.cat([x, pos.expand(x.shape[0], 1, -1)], dim=1)

    def _features_direct(self, x: torch.Tensor) -> torch.Tensor:
        out = self.first_conv(self._with_position(x))
        for block in self.res_blocks:
            out = block(out)
        return out

    def _features_fft(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The residual blocks' output in its zero-padded buffer ``(B, C, n_fft)``, and its length."""
        return fft.residual_features(self._fft_plan(x.shape[-1], x.device, x.dtype), x)

    # -- the frequency-domain plan, cached until the weights change ----------------
    def _weights_version(self) -> tuple:
        # _version moves on every in-place change (load_state_dict copies in place).
        return tuple(t._version for t in (*self.first_conv.state_dict(keep_vars=True).values(),
                                          *self.res_blocks.state_dict(keep_vars=True).values(),
                                          *([] if self.pos_enc is None else [self.pos_enc.inv_freq])))

    def _fft_plan(self, length: int, device: torch.device, dtype: torch.dtype) -> fft.FFTPlan:
        key = (length, str(device), dtype, self._weights_version())
        if self._plan is not None and self._plan.key == key:
            return self._plan
        # Plain tensors (not inference tensors), without autograd history.
        with torch.inference_mode(False), torch.no_grad():
            self._plan = fft.build_plan(self, key, length, dtype)
        return self._plan


@contextlib.contextmanager
def _precision_mode(device: torch.device, precision: str) -> Iterator[None]:
    """The arithmetic of one forward pass (see :data:`PRECISIONS`)."""
    if precision == "bf16":
        # Ops that autocast leaves in float32 stay in full float32 (no TF32) on CUDA.
        with cuda_tf32(device, False), torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        with cuda_tf32(device, precision == "tf32"):
            yield


def count_parameters(model: nn.Module) -> int:
    """Number of learned parameters (72,607,520 for the published BOSS model)."""
    return sum(p.numel() for p in model.parameters())
