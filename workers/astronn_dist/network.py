"""The astroNN distance network (``ApogeeDistBCNN``) in PyTorch, with Monte Carlo dropout.

The module is state-dict compatible, key for key, with the published PyTorch port of the
astroNN DR17 distance network (``astroNN_dist_model_parameter.pt``, a ``torch.save``d
``{"model_state_dict": ...}``).

Monte Carlo dropout is *folded into the batch*: :meth:`ApogeeDistBCNN.mc_forward` runs all
passes of all spectra as rows of one tensor, each row with its own dropout masks, instead
of looping over passes in Python. Every mask is a hash of (spectrum seed, pass, unit)
(:mod:`workers.astronn_dist.dropout`), so a spectrum's result depends on its seed only,
never on which other spectra share the batch, nor on the device. On a CPU a fused numba
kernel does the masked conv2 + pool stage, and the steps of pass rows run side by side, one
thread each (:func:`step_threads`).

Importing this module imports torch but never astroNN or TensorFlow.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.astronn_dist.shapes import DROPOUT, KERNEL, N_DENSE, N_PIXELS, POOL
from workers.linear import linear
from workers.precision import cuda_tf32
from workers.threads import one_thread_workers as step_threads, side_by_side
from workers.weights.formats import LoadedWeights, WeightsError, load_state_dict, save_pt

log = logging.getLogger(__name__)

STATE_KEY = "model_state_dict"
DEMO_FILENAME = "astronn_dist-demo.pt"
DEMO_SEED = 20180131  # fixed: every host builds byte-identical demo weights

# Pass rows per step of the MC forward (~31 kB of dense_1 input a row on a CPU). A CPU
# step runs on one thread, the threads taking steps in turn. The torch calls around the
# kernel and dense_1 (row numbers, masks, dense_2, heads) cost per call, 0.1-0.2 ms each a
# step inside the engine: at 256 rows they weigh half what they do at 128, and dense_1 runs
# at its 512-row rate (on Zen 5, 23 against 28 us of one thread's time per pass row).
_ROWS_PER_CHUNK = {"cpu": 256, "cuda": 4096}
_LEAD = (KERNEL - 1) // 2  # zeros before a conv input ("same" padding)


def default_rows_per_chunk(device: torch.device | str) -> int:
    """Pass rows per step of :meth:`ApogeeDistBCNN.mc_forward` on ``device``."""
    return _ROWS_PER_CHUNK.get(torch.device(device).type, _ROWS_PER_CHUNK["cuda"])


def _same_pad(x: torch.Tensor) -> torch.Tensor:
    # Keras "same" padding for an even kernel puts the extra zero at the end: 3 before, 4 after.
    return F.pad(x, (_LEAD, KERNEL // 2))


class ApogeeDistBCNN(nn.Module):
    """Bayesian CNN predicting astroNN's ``fakemag`` (Ks luminosity) from an APOGEE spectrum.

    Parameters
    ----------
    n_pixels : int
        Input length (7514 for the published network).
    dropout : float
        Dropout rate, active at inference for Monte Carlo dropout.

    Notes
    -----
    Input ``x`` is the continuum-normalized flux minus ``input_mean`` (see :meth:`standardize`).
    Outputs are the prediction ``softplus(dense_output)`` (multiply by ``labels_std`` for
    fakemag) and the log variance ``dense_var`` (in the same scaled units).
    """

    def __init__(self, n_pixels: int = N_PIXELS, dropout: float = DROPOUT):
        super().__init__()
        self.n_pixels = n_pixels
        self.dropout = dropout
        self.n_pooled = n_pixels // POOL
        self.n_flat = 4 * self.n_pooled
        self.register_buffer("input_mean", torch.zeros(n_pixels, dtype=torch.float64))
        self.register_buffer("labels_std", torch.ones(1, dtype=torch.float64))
        self.conv1 = nn.Conv1d(1, 2, KERNEL)
        self.conv2 = nn.Conv1d(2, 4, KERNEL)
        self.dense_1 = nn.Linear(self.n_flat, N_DENSE)
        self.dense_2 = nn.Linear(N_DENSE, 64)
        self.dense_output = nn.Linear(64, 1)
        self.dense_var = nn.Linear(64, 1)

    def standardize(self, norm_flux: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalized flux (B, 7514) → network input ``norm_flux − input_mean`` as float32.

        The subtraction is done in float64, as the published ``input_mean`` is float64.
        """
        flux = torch.as_tensor(np.asarray(norm_flux, dtype=np.float64))
        flux = flux.to(self.input_mean.device)
        return (flux - self.input_mean).to(torch.float32)

    def _head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.softplus(self.dense_output(h))[:, 0], self.dense_var(h)[:, 0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over ``x`` (B, 7514); dropout is on in ``train()`` mode, off in ``eval()``.

        Returns
        -------
        prediction, log_variance : Tensor
            Shape (B,) each, in units of ``labels_std``.
        """
        p, train = self.dropout, self.training
        h = F.relu(self.conv1(_same_pad(x[:, None, :])))
        h = F.dropout(h, p, train)
        h = F.relu(self.conv2(_same_pad(h)))
        h = F.max_pool1d(h, POOL)
        h = h.transpose(1, 2).reshape(h.shape[0], -1)  # channels last, as Keras flattens
        h = F.dropout(h, p, train)
        h = F.dropout(F.relu(self.dense_1(h)), p, train)
        h = F.relu(self.dense_2(h))
        return self._head(h)

    def float_ops(self, passes: int) -> dict[str, int]:
        """Floating-point operations (2 per multiply-add) that ``passes`` MC passes of one spectrum need.

        Every product of the dense computation is counted, including those that meet a
        dropped unit (an engine that skips them per row would do less work).

        Parameters
        ----------
        passes : int
            MC dropout passes.

        Returns
        -------
        dict
            ``{"conv1": ..., "conv2": ..., "dense_1": ..., "dense_2": ..., "heads": ...}``; conv1
            runs once per spectrum (its input does not change between passes), the rest per pass.
        """
        n_conv2_out = POOL * self.n_pooled  # positions the max-pool reads
        per_pass = {
            "conv2": 2 * self.conv2.weight.numel() * n_conv2_out,
            "dense_1": 2 * self.dense_1.weight.numel(),
            "dense_2": 2 * self.dense_2.weight.numel(),
            "heads": 2 * (self.dense_output.weight.numel() + self.dense_var.weight.numel()),
        }
        return {"conv1": 2 * self.conv1.weight.numel() * self.n_pixels,
                **{k: v * passes for k, v in per_pass.items()}}

    @property
    def mask_layout(self):
        """Where each dropout unit's random word sits (:class:`~workers.astronn_dist.dropout.MaskLayout`)."""
        from workers.astronn_dist.dropout import MaskLayout

        return MaskLayout(self.n_pixels, self.dense_1.out_features)

    @torch.no_grad()
    def _mc_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """conv2, dense_1 (columns channel-major) and dense_2 weights with 1/(1-p) folded in.

        Kept until a weight changes (``_version`` moves on every in-place change, a new
        tensor on a device move): a 5.8 MB permuted copy per call is a cost that small
        batches would feel.
        """
        from workers.astronn_dist import dropout

        sources = (self.conv2.weight, self.dense_1.weight, self.dense_2.weight)
        state = (self.dropout, *(t._version for t in sources))
        cached = getattr(self, "_mc_cache", None)
        # The cache holds the source tensors themselves, so "is" cannot meet a recycled id.
        if cached is None or cached[1] != state or any(a is not b for a, b in zip(cached[0], sources)):
            scale = 1.0 / (1.0 - self.dropout)
            derived = ((self.conv2.weight * scale).contiguous(),
                       dropout.channel_major_columns(self.dense_1.weight * scale, self.n_pooled),
                       (self.dense_2.weight * scale).contiguous())
            self._mc_cache = (sources, state, derived)
        return self._mc_cache[2]

    @torch.no_grad()
    def mc_forward(self, x: torch.Tensor, passes: int, seeds: Sequence[int],
                   rows_per_chunk: int | None = None, kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Monte Carlo dropout: ``passes`` dropout passes per spectrum, folded into the batch.

        Parameters
        ----------
        x : Tensor
            Standardized input, shape (B, 7514), on the model's device.
        passes : int
            Dropout passes per spectrum.
        seeds : sequence of int
            One per spectrum, in [0, 2**63). Every dropout mask of spectrum ``b`` is a hash
            of (``seeds[b]``, pass, unit) (:mod:`workers.astronn_dist.dropout`), so its
            result depends on its seed only: not on the other spectra of the batch, the
            step size, the thread count or the device.
        rows_per_chunk : int, optional
            Pass rows per step (memory, and matrix-product efficiency); None → 256 on a
            CPU, 4096 on a GPU.
        kernel : {"auto", "numba", "torch"}
            How the masked conv2 + pool stage runs: the fused numba kernel (CPU only) or
            torch ops; "auto" takes numba on a CPU when it is installed.

        Returns
        -------
        prediction, log_variance : Tensor
            Shape (B, passes) each, float32, on the CPU.

        Notes
        -----
        Same arithmetic as :meth:`forward` in ``train()`` mode, arranged for speed:

        * conv1 sees the same input in every pass, so it runs once per spectrum;
        * masks, conv2, max-pool, ReLU (after the pool: they commute) and the flatten-site
          mask are one fused step per pass row, which writes the dense_1 input;
        * the flatten is read channel-major, dense_1's columns permuted to match;
        * dense_1 and dense_2 with their ReLU through :func:`workers.linear.linear` (oneDNN
          on a CPU);
        * inverted dropout's 1/(1-p) is folded into the weights that read each masked tensor;
        * on a CPU, each step of ``rows_per_chunk`` rows (kernel, dense layers, heads) runs on
          one thread of :func:`step_threads`, as many steps at once as torch has threads. A
          row's sums do not depend on the thread count: the results are the same bit for bit.
        """
        # Full float32 on CUDA, whose cuDNN convolutions would otherwise take TF32.
        with cuda_tf32(x.device, False):
            return self._mc_forward(x, passes, seeds, rows_per_chunk, kernel)

    @torch.no_grad()
    def _mc_forward(self, x: torch.Tensor, passes: int, seeds: Sequence[int], rows_per_chunk: int | None,
                    kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
        from workers.astronn_dist import dropout

        if len(seeds) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} spectra but {len(seeds)} seeds")
        if passes < 1:
            raise ValueError(f"need at least one pass, got {passes}")
        if kernel not in ("auto", "numba", "torch"):
            raise ValueError(f"kernel must be auto, numba or torch, got {kernel!r}")
        device = x.device
        cpu_kernel = dropout.cpu_kernel() if device.type == "cpu" and kernel != "torch" else None
        if kernel == "numba" and cpu_kernel is None:
            raise RuntimeError("the numba kernel needs a CPU tensor")
        if rows_per_chunk is None:
            rows_per_chunk = default_rows_per_chunk(device)
        layout = self.mask_layout
        n_spectra = x.shape[0]
        w2, w_d1, w_d2 = self._mc_weights()
        # conv1 once per spectrum, zero-padded for conv2 ("same": 3 zeros before)
        hpad = torch.zeros(n_spectra, 2, layout.padded, device=device)
        hpad[:, :, _LEAD:_LEAD + self.n_pixels] = F.relu(self.conv1(_same_pad(x[:, None, :])))
        hpad_phases = dropout.phase_split(hpad) if cpu_kernel is not None else None
        by_input = dropout.conv_by_input_channel() if cpu_kernel is not None else False
        seed_t = torch.as_tensor([int(s) for s in seeds], dtype=torch.int64, device=device)
        if ((seed_t < 0) | (seed_t >= 2**63 - 1)).any():
            raise ValueError("seeds must lie in [0, 2**63 - 1)")
        total = n_spectra * passes
        pred = torch.empty(total, device=device)
        logvar = torch.empty(total, device=device)
        # every row's spectrum and pass once: a step takes slices (small torch calls cost
        # far more inside a step, after dense_1 has gone through the caches, than here)
        rows = torch.arange(total, device=device)
        spectrum_of_row, pass_of_row = rows // passes, rows % passes

        @torch.no_grad()  # grad mode is per thread: the step threads need their own
        def step(r0: int) -> None:
            r1 = min(r0 + rows_per_chunk, total)
            row_spectrum, row_pass = spectrum_of_row[r0:r1], pass_of_row[r0:r1]
            if cpu_kernel is not None:
                flat, keep3 = dropout.pooled_rows_cpu(cpu_kernel, hpad_phases, seed_t, row_spectrum, row_pass,
                                                      w2, self.conv2.bias, layout, by_input)
            else:
                flat, keep3 = dropout.pooled_rows_torch(hpad, seed_t, row_spectrum, row_pass,
                                                        w2, self.conv2.bias, layout)
            h = linear(flat, w_d1, self.dense_1.bias, relu=True) * keep3
            h = linear(h, w_d2, self.dense_2.bias, relu=True)
            p, v = self._head(h)
            pred[r0:r1] = p
            logvar[r0:r1] = v

        starts = range(0, total, rows_per_chunk)
        n_threads = min(torch.get_num_threads(), len(starts))
        if cpu_kernel is not None and n_threads > 1:
            # each step on one thread, the steps side by side; a step writes its own rows only
            side_by_side(step, starts)
        else:
            for r0 in starts:
                step(r0)
        return (pred.view(n_spectra, passes).float().cpu(), logvar.view(n_spectra, passes).float().cpu())


def spectrum_seed(seed: int, *identity) -> int:
    """A 63-bit generator seed from a base seed and a spectrum's identity (path, hdu, row).

    A hash, so that neighbouring rows get unrelated streams and the seed of a spectrum
    never depends on its position in a batch.
    """
    text = "\x1f".join(str(v) for v in (int(seed), *identity))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "little") >> 1


# -- weights ----------------------------------------------------------------------------

def check_state_dict(model: nn.Module, state_dict: dict) -> list[str]:
    """Check a state dict against ``model``; return the unexpected keys (to be ignored).

    Raises
    ------
    WeightsError
        Naming every missing key, or every key whose shape does not fit.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise WeightsError(f"astronn_dist weights lack key(s): {', '.join(missing)}")
    not_tensors = [f"{k} ({type(state_dict[k]).__name__})" for k in expected if not isinstance(state_dict[k], torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"astronn_dist weights hold values that are not tensors: {', '.join(not_tensors)}")
    bad = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
           for k, v in expected.items() if tuple(state_dict[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsError(f"astronn_dist weights do not fit the network: {'; '.join(bad)}")
    return [k for k in state_dict if k not in expected]


def load_astronn_dist(path: str | os.PathLike,
                      device: str | torch.device | None = None) -> tuple[ApogeeDistBCNN, LoadedWeights]:
    """Build the network and load weights into it.

    Parameters
    ----------
    path : path-like
        The published ``.pt`` (a dict holding ``"model_state_dict"``), or the seeded demo
        weights (:func:`demo_weights_path`).
    device : str or torch.device, optional
        None → CUDA when available, else CPU.

    Returns
    -------
    model : ApogeeDistBCNN
        In ``eval()`` mode, on ``device``; buffer dtypes kept (float64 ``input_mean``).
    loaded : LoadedWeights
        sha256, source, demo marker and the unexpected (ignored) keys.
    """
    loaded = load_state_dict(path, state_key=STATE_KEY)
    model = ApogeeDistBCNN()
    loaded.unexpected = check_state_dict(model, loaded.state_dict)
    wanted = {k: v for k, v in loaded.state_dict.items() if k not in loaded.unexpected}
    if not loaded.demo and _are_demo_weights(wanted):
        # specq's own seeded weights without their marker file (copied by hand): still demo weights.
        log.warning("astronn_dist weights %s are specq's demo weights (their .demo file is missing): labelled demo",
                    loaded.source)
        loaded.demo = True
    model.load_state_dict(wanted, strict=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), loaded


# The demo's output biases: softplus(-1.75)·300 ≈ 48; sqrt(exp(-9.7))·300 ≈ 2.4 ≈ 5% of 48.
_DEMO_OUTPUT_BIASES = {"dense_output.bias": -1.75, "dense_var.bias": -9.7}


def demo_state_dict(seed: int = DEMO_SEED) -> dict:
    """Seeded random weights shaped like the published ones, with plausible outputs.

    Weights are scaled 1/sqrt(fan_in) so dropout moves the prediction by ~1–2%; the output
    bias puts ``softplus(pred)·labels_std`` near fakemag ≈ 48 (M_Ks ≈ −1.6, a red-clump
    giant, APOGEE's most common star) and the log-variance bias gives a ~5% predictive
    error. Not a trained model: for demos and tests only.
    """
    g = torch.Generator().manual_seed(seed)
    model = ApogeeDistBCNN()
    sd = {}
    for key, value in model.state_dict().items():
        if key == "input_mean":
            sd[key] = 0.95 + 0.02 * torch.randn(value.shape, generator=g, dtype=torch.float64)
        elif key == "labels_std":
            sd[key] = torch.tensor([300.0], dtype=torch.float64)  # the published scale is a few hundred
        elif key.endswith(".bias"):
            sd[key] = torch.zeros(value.shape)
        else:
            fan_in = int(np.prod(value.shape[1:]))
            sd[key] = torch.randn(value.shape, generator=g) / fan_in**0.5
    sd.update({key: torch.tensor([value]) for key, value in _DEMO_OUTPUT_BIASES.items()})
    return sd


def _are_demo_weights(state_dict: dict) -> bool:
    """Whether ``state_dict`` holds the tensors of :func:`demo_state_dict` (its output biases first: cheap)."""
    for key, value in _DEMO_OUTPUT_BIASES.items():
        if state_dict[key].numel() != 1 or state_dict[key].item() != torch.tensor([value]).item():
            return False
    demo = demo_state_dict()
    return all(torch.equal(state_dict[key], value) for key, value in demo.items())


def demo_weights_path(cache_dir: str | os.PathLike) -> Path:
    """Path of the demo ``.pt``; written once (atomically, marked demo) when absent.

    Parameters
    ----------
    cache_dir : path-like
        The weights cache (``Settings.weights_cache``).
    """
    path = Path(cache_dir).expanduser() / DEMO_FILENAME
    if not path.exists():
        # save_pt writes to a temporary file and renames it: concurrent workers never
        # see a half-written file, and all of them write identical bytes.
        save_pt({STATE_KEY: demo_state_dict()}, path, demo=True)
    marker = path.with_name(path.name + ".demo")
    if not marker.exists():  # a concurrent writer may have renamed but not yet marked it
        marker.write_text("seeded random weights, not a trained model\n")
    return path
