"""Monte Carlo dropout masks for the AstroNN distance network, and the CPU kernel that uses them.

Masks are **counter-based**: the keep/drop decision of every dropout unit is a pure function
of (spectrum seed, pass number, unit number). A splitmix64 hash of the counter gives 64
random bits, read as four signed 16-bit words; a unit is kept when its word is below
:data:`KEEP_BELOW` (P(keep) = 45875/65536 = 0.699997, a drop rate within 3e-6 of 0.3).
Because nothing is drawn from a sequential generator, a spectrum's masks do not depend on
the batch it shares, on how its passes are sliced into steps, on the number of threads,
or on the device: the torch code below (any device) and the numba kernel (CPU) make the
same masks bit for bit, so CPU and GPU results differ only by float rounding.

Unit numbering within one pass (any fixed numbering is valid: units are independent):

1. conv1 site, channel-major over the zero-padded conv2 input, ``2 × padded`` units
   (the units that fall on padding multiply zeros and are never used);
2. flatten site, channel-major (``c * n_pooled + g``), ``4 × n_pooled`` units. The
   network's dense_1 reads the flatten channels-last (``4 g + c``), so its columns are
   permuted once per call to read channel-major (:func:`channel_major_columns`);
3. dense_1 site, ``n_dense`` units.

The numba kernel fuses, for each pass row: hashing, the conv1-site mask, conv2, the
max-pool, ReLU and the flatten-site mask. It writes the dense_1 input directly, so no mask
or intermediate activation ever reaches main memory. Measured on a 2-core AMD EPYC (Zen 2):
~3.4 ms of CPU per spectrum at 100 passes for the kernel against ~12 ms for the torch ops
it replaces (`specq bench --pipeline astronn_dist` gives the end-to-end figure).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

KEEP_BELOW = -32768 + 45875  # signed 16-bit words below this keep their unit
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_LEAD = 3  # Keras "same" padding for kernel 8: 3 zeros before, 4 after
_KERNEL = 8
_POOL = 4


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class MaskLayout:
    """Where each dropout site's units sit in one pass's stream of 16-bit words.

    Parameters
    ----------
    n_pixels : int
        Network input length (7514).
    n_dense : int
        dense_1 output units (192).
    """

    n_pixels: int
    n_dense: int

    @property
    def n_pooled(self) -> int:
        return self.n_pixels // _POOL

    @property
    def padded(self) -> int:
        """Length of the zero-padded conv2 input: enough for every pooled output, multiple of 4."""
        return _POOL * self.n_pooled + _KERNEL

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Units per pass: conv1 site (padded), flatten site, dense_1 site."""
        return 2 * self.padded, 4 * self.n_pooled, self.n_dense

    @property
    def words_per_pass(self) -> int:
        """64-bit hash outputs per pass (four units each)."""
        return -(-sum(self.sizes) // 4)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mask_words(seeds: torch.Tensor, passes: torch.Tensor, layout: MaskLayout) -> torch.Tensor:
    """Random words of whole passes: splitmix64 of ``seed`` at counters ``pass * words_per_pass + q``.

    Parameters
    ----------
    seeds, passes : Tensor
        int64, shape (R,): each row's spectrum seed and pass number.
    layout : MaskLayout

    Returns
    -------
    Tensor
        int64, (R, words_per_pass), on the inputs' device. int64 products wrap modulo 2**64,
        which is the arithmetic splitmix64 is defined in.
    """
    wpp = layout.words_per_pass
    q = torch.arange(wpp, device=seeds.device, dtype=torch.int64)
    counter = passes[:, None] * wpp + q[None, :] + 1
    z = seeds[:, None] + counter * _signed(_GAMMA)
    z = (z ^ _lsr(z, 30)) * _signed(_MUL1)
    z = (z ^ _lsr(z, 27)) * _signed(_MUL2)
    return z ^ _lsr(z, 31)


def keep_masks(seeds: torch.Tensor, passes: torch.Tensor, layout: MaskLayout) -> torch.Tensor:
    """0/1 float32 keep-masks, (R, units per pass), in the unit numbering of the module docstring."""
    words = mask_words(seeds, passes, layout).view(torch.int16)[:, : sum(layout.sizes)]
    return (words < KEEP_BELOW).to(torch.float32)


def channel_major_columns(weight: torch.Tensor, n_pooled: int) -> torch.Tensor:
    """dense_1 weight (out, 4·n_pooled) with columns reordered from ``4 g + c`` to ``c · n_pooled + g``."""
    out = weight.shape[0]
    return weight.reshape(out, n_pooled, 4).permute(0, 2, 1).reshape(out, 4 * n_pooled).contiguous()


def pooled_rows_torch(hpad: torch.Tensor, seeds: torch.Tensor, row_spectrum: torch.Tensor,
                      row_pass: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                      layout: MaskLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """dense_1 input and dense_1-site masks for a block of pass rows, with torch ops (any device).

    Parameters
    ----------
    hpad : Tensor
        (S, 2, padded) conv1 output after ReLU, zero-padded (3 zeros before).
    seeds : Tensor
        (S,) int64 spectrum seeds.
    row_spectrum, row_pass : Tensor
        (R,) int64: which spectrum and which pass each row is.
    w2, b2 : Tensor
        conv2 weight (4, 2, 8), already scaled by 1/(1 - p), and bias.
    layout : MaskLayout

    Returns
    -------
    flat, keep3 : Tensor
        (R, 4·n_pooled) masked ReLU(max-pool(conv2)) in channel-major order, and (R, n_dense)
        dense_1-site masks.
    """
    keep = keep_masks(seeds[row_spectrum], row_pass, layout)
    s1, s2, _ = layout.sizes
    rows = row_spectrum.shape[0]
    h = hpad[row_spectrum] * keep[:, :s1].view(rows, 2, layout.padded)
    h = F.conv1d(h, w2, b2)[:, :, : _POOL * layout.n_pooled]
    h = F.relu(F.max_pool1d(h, _POOL)).reshape(rows, s2)
    return h * keep[:, s1:s1 + s2], keep[:, s1 + s2:]


# -- the CPU kernel ---------------------------------------------------------------------

try:
    import numba
except ImportError:  # optional at import time: the torch path above computes the same thing
    numba = None

if numba is not None:
    # Module-level constants and functions: numba's on-disk cache keys on them, so each
    # worker process loads the compiled kernel instead of compiling it (~4 s).
    _U64_GAMMA, _U64_MUL1, _U64_MUL2 = np.uint64(_GAMMA), np.uint64(_MUL1), np.uint64(_MUL2)
    _U64_ONE, _U64_30, _U64_27, _U64_31 = np.uint64(1), np.uint64(30), np.uint64(27), np.uint64(31)
    _I16_KEEP_BELOW = np.int16(KEEP_BELOW)
    _F32_ZERO = np.float32(0.0)

    @numba.njit(inline="always", cache=True)
    def _splitmix(seed, counter):  # pragma: no cover - compiled
        z = seed + (counter + _U64_ONE) * _U64_GAMMA
        z = (z ^ (z >> _U64_30)) * _U64_MUL1
        z = (z ^ (z >> _U64_27)) * _U64_MUL2
        return z ^ (z >> _U64_31)

    @numba.njit(parallel=True, cache=True, fastmath=False)
    def _pooled_rows(hpad, seeds, row_spectrum, row_pass, w2, b2, out, keep3):  # pragma: no cover - compiled
        n_rows, n_flat = out.shape
        n_pooled = n_flat // 4
        n_pos = 4 * n_pooled
        padded = hpad.shape[2]
        n_dense = keep3.shape[1]
        off2 = 2 * padded
        off3 = off2 + n_flat
        wpp = (off3 + n_dense + 3) // 4
        for r in numba.prange(n_rows):
            s = row_spectrum[r]
            seed = seeds[s]
            base = np.uint64(row_pass[r]) * np.uint64(wpp)
            words = np.empty(wpp, np.uint64)
            for q in range(wpp):
                words[q] = _splitmix(seed, base + np.uint64(q))
            w16 = words.view(np.int16)
            # conv1-site dropout on the padded conv2 input (float multiply: branch-free)
            x = np.empty(padded, np.float32)
            y = np.empty(padded, np.float32)
            hx = hpad[s, 0]
            hy = hpad[s, 1]
            for i in range(padded):
                x[i] = hx[i] * np.float32(w16[i] < _I16_KEEP_BELOW)
            for i in range(padded):
                y[i] = hy[i] * np.float32(w16[padded + i] < _I16_KEEP_BELOW)
            # conv2, one output channel at a time; the 16 taps written out so the loop
            # over positions vectorizes
            conv = np.empty(n_pos, np.float32)
            row = out[r]
            for c in range(4):
                a0, a1, a2, a3 = w2[c, 0, 0], w2[c, 0, 1], w2[c, 0, 2], w2[c, 0, 3]
                a4, a5, a6, a7 = w2[c, 0, 4], w2[c, 0, 5], w2[c, 0, 6], w2[c, 0, 7]
                e0, e1, e2, e3 = w2[c, 1, 0], w2[c, 1, 1], w2[c, 1, 2], w2[c, 1, 3]
                e4, e5, e6, e7 = w2[c, 1, 4], w2[c, 1, 5], w2[c, 1, 6], w2[c, 1, 7]
                bias = b2[c]
                for i in range(n_pos):
                    conv[i] = (bias + a0 * x[i] + a1 * x[i + 1] + a2 * x[i + 2] + a3 * x[i + 3]
                               + a4 * x[i + 4] + a5 * x[i + 5] + a6 * x[i + 6] + a7 * x[i + 7]
                               + e0 * y[i] + e1 * y[i + 1] + e2 * y[i + 2] + e3 * y[i + 3]
                               + e4 * y[i + 4] + e5 * y[i + 5] + e6 * y[i + 6] + e7 * y[i + 7])
                # max-pool, ReLU (they commute) and the flatten-site mask, channel-major
                base_c = c * n_pooled
                for g in range(n_pooled):
                    m = max(max(conv[4 * g], conv[4 * g + 1]), max(conv[4 * g + 2], conv[4 * g + 3]))
                    row[base_c + g] = max(m, _F32_ZERO) * np.float32(w16[off2 + base_c + g] < _I16_KEEP_BELOW)
            for k in range(n_dense):
                keep3[r, k] = np.float32(w16[off3 + k] < _I16_KEEP_BELOW)
else:
    _pooled_rows = None


def cpu_kernel():
    """The compiled CPU kernel, or None where numba is unavailable (the torch path is used)."""
    return _pooled_rows


def pooled_rows_cpu(kernel, hpad: torch.Tensor, seeds: torch.Tensor, row_spectrum: torch.Tensor,
                    row_pass: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                    layout: MaskLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`pooled_rows_torch`, computed by the fused numba kernel (CPU tensors)."""
    rows = row_spectrum.shape[0]
    flat = torch.empty(rows, layout.sizes[1])
    keep3 = torch.empty(rows, layout.n_dense)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    kernel(hpad.contiguous().numpy(), seeds.numpy().view(np.uint64), row_spectrum.numpy(), row_pass.numpy(),
           w2.contiguous().numpy(), b2.contiguous().numpy(), flat.numpy(), keep3.numpy())
    return flat, keep3
