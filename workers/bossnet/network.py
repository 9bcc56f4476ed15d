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

Loading (:func:`load_bossnet`) reports unexpected keys by name instead of dropping them
silently as the published loaders do, fails with the name of a missing learned tensor,
and fills the fixed buffers (``pos_enc.inv_freq``, ``num_batches_tracked``) when absent.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.bossnet import pooling
from workers.bossnet.schema import PRECISIONS, check_precision  # noqa: F401 (re-exported)
from workers.linear import linear
from workers.weights import DEMO_MARKER, N_CHUNKS, LoadedWeights, WeightsError, chunk_files, load_state_dict, save_chunks

log = logging.getLogger(__name__)

DEMO_SEED = 20240101
DEMO_FOLDER = "bossnet-demo"
CONV_IMPLS = ("fft", "direct")
FFT_CHUNK_ROWS = 24  # rows per pass through the convolutions on the fft way (CPU caches)


def is_fixed_buffer(key: str) -> bool:
    """True for state-dict entries that are not learned and may be absent from a file."""
    return key == "pos_enc.inv_freq" or key.endswith("num_batches_tracked")


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


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``bn(x) = x·scale + shift`` in inference mode (float64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


def _fft_size(n_min: int) -> int:
    """Smallest 5-smooth integer ≥ ``n_min`` (sizes that FFT libraries handle fastest)."""
    n = max(n_min, 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


@dataclass
class _SpectralConv:
    """One convolution with its BatchNorm folded in, prepared for the frequency domain.

    Works on zero-padded buffers ``(B, C, n_fft)``: the input's samples beyond its length
    must be zero; the output's samples beyond ``out_len`` are wrap-around garbage.
    """

    n_fft: int
    out_len: int
    weight: torch.Tensor  # (F, C_in, C_out) complex: spectrum of the flipped, shifted kernel
    dc: torch.Tensor  # (C_out,) complex: the BN shift, added to the zero-frequency bin (×n_fft)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(x, n=self.n_fft)  # (B, C_in, F)
        # bmm on a permuted view falls back to one small gemm per frequency: transpose first.
        prod = torch.bmm(_outer_to_inner(spec), self.weight)  # (F, B, C_out)
        prod[0] += self.dc  # a constant shift lives in the DC bin: saves a pass over the output
        return torch.fft.irfft(_inner_to_outer(prod), n=self.n_fft)


# torch copies a plain 2-D transpose with a cache-blocked kernel, ~1.5x faster than the
# generic copy of a permuted 3-D view once the tensor outgrows the caches (slower before).
_BLOCKED_TRANSPOSE_MIN = 1 << 20


def _outer_to_inner(t: torch.Tensor) -> torch.Tensor:
    """(B, C, F) → contiguous (F, B, C)."""
    b, c, f = t.shape
    if t.numel() < _BLOCKED_TRANSPOSE_MIN:
        return t.permute(2, 0, 1).contiguous()
    return t.reshape(b * c, f).t().contiguous().reshape(f, b, c)


def _inner_to_outer(t: torch.Tensor) -> torch.Tensor:
    """(F, B, C) → contiguous (B, C, F)."""
    f, b, c = t.shape
    if t.numel() < _BLOCKED_TRANSPOSE_MIN:
        return t.permute(1, 2, 0).contiguous()
    return t.reshape(f, b * c).t().contiguous().reshape(b, c, f)


def _spectral_conv(weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   padding: int, in_len: int, n_fft: int, dtype: torch.dtype) -> _SpectralConv:
    """Frequency-domain form of ``bn(conv1d(x, weight, padding))`` for inputs of ``in_len``.

    ``y[t] = Σ_k w[k]·x[t+k−p]`` is the circular convolution of x with the kernel
    ``g[(p−k) mod N] = w[k]``; no wrap-around reaches the outputs kept when
    ``N ≥ in_len + p`` (negative indices land on the zero tail of x).
    """
    c_out, c_in, k = weight.shape
    out_len = in_len + 2 * padding - k + 1
    if n_fft < max(in_len + padding, k, out_len):
        raise ValueError(f"n_fft {n_fft} too short for length {in_len}, kernel {k}, padding {padding}")
    w = weight.double() * scale[:, None, None]
    g = torch.zeros(c_out, c_in, n_fft, dtype=torch.float64, device=weight.device)
    g[:, :, (padding - torch.arange(k, device=weight.device)) % n_fft] = w
    spec = torch.fft.rfft(g, n=n_fft)  # computed in float64, stored in the model's precision
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    return _SpectralConv(n_fft, out_len, spec.permute(2, 1, 0).contiguous().to(cdtype),
                         (shift * n_fft).to(cdtype))


@dataclass
class _FFTPlan:
    """Everything the ``fft`` forward needs for one input length, device and dtype."""

    key: tuple
    first_weight: torch.Tensor  # (C, in_channels, K) folded weights on the flux channel(s)
    first_const: torch.Tensor  # (1, C, L+1): positional channel's contribution + folded bias
    first_padding: int
    n_fft: int  # one transform length for every residual convolution
    length: int  # the residual blocks' sequence length
    blocks: list[tuple[_SpectralConv, _SpectralConv, int, int]]  # conv1, conv2, offset, c_in


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
        self.first_conv = ConvolutionBlock(in_channels + (1 if pos_enc else 0),
                                           dim_mults[0] * model_dim, kernel_size, padding)
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
        self._plan: _FFTPlan | None = None
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
                    # Convolutions in cache-sized chunks of rows, the linear layers on all rows at once.
                    out = x.new_empty(x.shape[0], self.linear_input_size)
                    for part, dest in zip(x.split(self.fft_chunk_rows), out.split(self.fft_chunk_rows)):
                        self._pool_into(*self._features_fft(part), dest)
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
        plan = self._fft_plan(x.shape[-1], x.device, x.dtype)
        out = F.conv1d(x, plan.first_weight, padding=plan.first_padding)
        out = F.max_pool1d(F.elu_(out.add_(plan.first_const)), 2)
        length = plan.length
        # Activations live in zero-padded (B, C, n_fft) buffers: no padding copy per transform.
        buf = out.new_zeros(out.shape[0], out.shape[1], plan.n_fft)
        buf[..., :length] = out
        for conv1, conv2, offset, c_in in plan.blocks:
            h = conv1(buf)
            F.elu_(h[..., :conv1.out_len])
            h[..., conv1.out_len:] = 0
            h = conv2(h)
            h[:, offset:offset + c_in, :length] += buf[..., :length]  # shortcut, channel-padded
            F.elu_(h[..., :length])
            h[..., length:] = 0
            buf = h
        return buf, length

    # -- the frequency-domain plan, cached until the weights change ----------------
    def _weights_version(self) -> tuple:
        # _version moves on every in-place change (load_state_dict copies in place).
        return tuple(t._version for t in (*self.first_conv.state_dict(keep_vars=True).values(),
                                          *self.res_blocks.state_dict(keep_vars=True).values(),
                                          *([] if self.pos_enc is None else [self.pos_enc.inv_freq])))

    def _fft_plan(self, length: int, device: torch.device, dtype: torch.dtype) -> _FFTPlan:
        key = (length, str(device), dtype, self._weights_version())
        if self._plan is not None and self._plan.key == key:
            return self._plan
        # Plain tensors (not inference tensors), without autograd history.
        with torch.inference_mode(False), torch.no_grad():
            self._plan = self._build_plan(key, length, dtype)
        return self._plan

    def _build_plan(self, key: tuple, length: int, dtype: torch.dtype) -> _FFTPlan:
        fc = self.first_conv
        scale, shift = _bn_affine(fc.bn)
        w = fc.conv_layer.weight.double() * scale[:, None, None]
        bias = fc.conv_layer.bias.double() * scale + shift
        n_flux = w.shape[1] - (1 if self.pos_enc is not None else 0)
        if self.pos_enc is not None:
            pos = self.pos_enc(length, torch.float64)
            const = F.conv1d(pos[None, None], w[:, n_flux:], padding=fc.padding)
        else:
            const = torch.zeros(1, w.shape[0], length + 2 * fc.padding - w.shape[-1] + 1,
                                dtype=torch.float64, device=w.device)
        const = const + bias[None, :, None]
        blocks = []
        in_len = (length + 2 * fc.padding - w.shape[-1] + 1) // 2
        k = w.shape[-1]
        # The smallest 5-smooth length that every residual convolution fits without wrap-around.
        n_fft = _fft_size(max(max(in_len + b.padding1, in_len + 2 * b.padding1 - k + 1 + b.padding2, k)
                              for b in self.res_blocks)) if len(self.res_blocks) else 0
        for block in self.res_blocks:
            s1, b1 = _bn_affine(block.bn1)
            s2, b2 = _bn_affine(block.bn2)
            conv1 = _spectral_conv(block.conv1.weight, s1, b1, block.padding1, in_len, n_fft, dtype)
            conv2 = _spectral_conv(block.conv2.weight, s2, b2, block.padding2, conv1.out_len, n_fft, dtype)
            if conv2.out_len != in_len:
                raise ValueError("residual block changes the length; the fft way needs it kept")
            blocks.append((conv1, conv2, block.channel_offset, block.in_channels))
        return _FFTPlan(key, w[:, :n_flux].to(dtype).contiguous(), const.to(dtype), fc.padding,
                        n_fft, in_len, blocks)


@contextlib.contextmanager
def _cuda_tf32(device: torch.device, allowed: bool) -> Iterator[None]:
    """Set whether CUDA convolutions and matmuls may use TF32, restoring the global flags afterwards.

    ``allowed=False`` keeps full float32 for parity; elsewhere than CUDA there is nothing to switch.
    """
    if device.type != "cuda":
        yield
        return
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


@contextlib.contextmanager
def _precision_mode(device: torch.device, precision: str) -> Iterator[None]:
    """The arithmetic of one forward pass (see :data:`PRECISIONS`)."""
    if precision == "bf16":
        # Ops that autocast leaves in float32 stay in full float32 (no TF32) on CUDA.
        with _cuda_tf32(device, False), torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        with _cuda_tf32(device, precision == "tf32"):
            yield


def count_parameters(model: nn.Module) -> int:
    """Number of learned parameters (72,607,520 for the published BOSS model)."""
    return sum(p.numel() for p in model.parameters())


# -- loading -------------------------------------------------------------------------

def fit_state_dict(model: nn.Module, state_dict: dict) -> tuple[dict, list[str]]:
    """Check a state dict against ``model``: (the dict to load strictly, unexpected keys).

    Raises
    ------
    WeightsError
        A learned tensor is missing (all missing names are listed) or has the wrong shape.
    """
    expected = model.state_dict()
    unexpected = sorted(k for k in state_dict if k not in expected)
    missing = [k for k in expected if k not in state_dict and not is_fixed_buffer(k)]
    if missing:
        raise WeightsError(f"BossNet weights lack {len(missing)} tensor(s): {', '.join(missing)}")
    fitted = {}
    for key, ref in expected.items():
        if key not in state_dict:
            fitted[key] = _fixed_buffer_value(key, ref)
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"BossNet weights: {key} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise WeightsError(f"BossNet weights: {key} has shape {tuple(value.shape)}, "
                               f"the network needs {tuple(ref.shape)}")
        fitted[key] = value.to(ref.dtype)
    return fitted, unexpected


def _fixed_buffer_value(key: str, ref: torch.Tensor) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros(ref.shape, dtype=ref.dtype)
    return torch.ones(ref.shape, dtype=ref.dtype)  # pos_enc.inv_freq: one channel → frequency 1


def load_bossnet(path: str | os.PathLike, device: str | torch.device | None = None,
                 conv_impl: str = "auto") -> tuple[BossNet, LoadedWeights]:
    """Build BossNet and load weights from a ten-chunk folder or a ``.pt`` file.

    Parameters
    ----------
    path : path-like
        Weights (folder of ``model_chunk_*`` or a single file): the published ones, or the
        seeded demo weights of :func:`demo_weights_path`.
    device : str or torch.device, optional
        Where the model lives; None → CUDA when available, else the CPU.
    conv_impl : {"auto", "fft", "direct"}
        See :class:`BossNet`.

    Returns
    -------
    model : BossNet
        In eval mode, on ``device``.
    loaded : LoadedWeights
        Source, sha256, demo marker and ``unexpected`` keys (reported, ignored).
    """
    loaded = load_state_dict(path)
    with torch.device("meta"):  # no random initialisation of 72.6M parameters to overwrite
        model = BossNet(conv_impl=conv_impl)
    fitted, unexpected = fit_state_dict(model, loaded.state_dict)
    if unexpected:
        log.warning("BossNet weights %s: ignoring %d unexpected key(s): %s",
                    loaded.source, len(unexpected), ", ".join(unexpected))
    model.load_state_dict({k: v.contiguous() for k, v in fitted.items()}, strict=True, assign=True)
    loaded.unexpected = unexpected
    loaded.state_dict = {}  # the model holds the tensors; don't keep a second copy alive
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval(), loaded


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def demo_state_dict(seed: int = DEMO_SEED) -> dict:
    """Seeded random weights (torch's default initialisation), without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BossNet()
    return model.state_dict()


def demo_weights_path(cache_dir: str | os.PathLike) -> Path:
    """The demo weights' chunk folder, written once into ``<weights cache>/bossnet-demo/``.

    Safe when several processes race: each writes a private temporary folder and renames
    it into place; a loser finds the winner's folder and uses it.
    """
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / DEMO_FOLDER
    if _complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{DEMO_FOLDER}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        save_chunks(demo_state_dict(), tmp, demo=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # neither ours nor a complete one from a racing process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote BossNet demo weights to %s", final)
    return final


def _complete(folder: Path) -> bool:
    if not (folder / DEMO_MARKER).exists():
        return False
    try:
        return len(chunk_files(folder)) == N_CHUNKS
    except (WeightsError, OSError):
        return False
