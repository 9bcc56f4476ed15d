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
or intermediate activation ever reaches main memory. Its conv2 input is split by phase
(:func:`phase_split`), so the four outputs of a max-pool window come from contiguous
loads and the whole window vectorizes. Measured at 100 passes: before the phase split,
~3.4 ms of CPU per spectrum on a 2-core AMD EPYC (Zen 2) against ~12 ms for the torch
ops it replaces; on a Zen 1 host, the phase split and FMA contraction together took one
thread from 11.4 to 7.6 ms per spectrum inside the engine. On a Zen 5 host (AVX-512),
computing the four output channels in one pass over the pooled positions took the kernel
from 5.4 to 4.5 µs per pass row on 2 threads, with the same sums. `specq bench --pipeline
astronn_dist` gives the end-to-end figure.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F

from workers.astronn_dist.shapes import KERNEL, POOL

log = logging.getLogger(__name__)

KEEP_BELOW = -32768 + 45875  # signed 16-bit words below this keep their unit
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


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
        return self.n_pixels // POOL

    @property
    def padded(self) -> int:
        """Length of the zero-padded conv2 input: enough for every pooled output, multiple of 4."""
        return POOL * self.n_pooled + KERNEL

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
    h = F.conv1d(h, w2, b2)[:, :, : POOL * layout.n_pooled]
    h = F.relu(F.max_pool1d(h, POOL)).reshape(rows, s2)
    return h * keep[:, s1:s1 + s2], keep[:, s1 + s2:]


# -- the CPU kernel ---------------------------------------------------------------------

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

# A 16-bit word w, read as signed, is below KEEP_BELOW exactly when (w XOR 0x8000),
# read as unsigned, is below KEEP_BELOW + 32768: the kernel tests words still inside
# their uint64 without an int16 view, which keeps its loops vectorizable.
_U64_LOW16, _U64_SIGN16 = np.uint64(0xFFFF), np.uint64(0x8000)
_U64_KEEP_BELOW_BIASED = np.uint64(KEEP_BELOW + 32768)

# fastmath "contract" lets LLVM fuse conv2's multiply-adds (FMA): the sums keep a
# fixed tap order, each product-add is rounded once instead of twice. Serial and free of
# the GIL: the network runs it on blocks of rows in threads of its own (see
# ApogeeDistBCNN.mc_forward), never in numba's OpenMP pool, a second one beside torch's.
@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _pooled_rows(hpad_phases, seeds, row_spectrum, row_pass, w2, b2, out, keep3):  # pragma: no cover - compiled
    n_rows, n_flat = out.shape
    n_pooled = n_flat // 4
    quarter = hpad_phases.shape[3]
    padded = 4 * quarter
    n_dense = keep3.shape[1]
    off2 = 2 * padded
    off3 = off2 + n_flat
    wpp = (off3 + n_dense + 3) // 4
    for r in range(n_rows):
        s = row_spectrum[r]
        seed = seeds[s]
        base = np.uint64(row_pass[r]) * np.uint64(wpp)
        words = np.empty(wpp, np.uint64)
        for q in range(wpp):
            words[q] = _splitmix(seed, base + np.uint64(q))
        w16 = words.view(np.int16)
        # conv1-site dropout on the conv2 input, split by phase: masked[j, ph, g] is
        # input position 4 g + ph of channel j, whose unit j·padded + 4 g + ph is
        # 16-bit word ph of 64-bit word j·quarter + g (little-endian)
        masked = np.empty((2, 4, quarter), np.float32)
        for j in range(2):
            for ph in range(4):
                shift = np.uint64(16 * ph)
                src = hpad_phases[s, j, ph]
                dst = masked[j, ph]
                first = j * quarter
                for g in range(quarter):
                    word = ((words[first + g] >> shift) & _U64_LOW16) ^ _U64_SIGN16
                    dst[g] = src[g] * np.float32(word < _U64_KEEP_BELOW_BIASED)
        x0, x1, x2, x3 = masked[0, 0], masked[0, 1], masked[0, 2], masked[0, 3]
        y0, y1, y2, y3 = masked[1, 0], masked[1, 1], masked[1, 2], masked[1, 3]
        # All four channels in one pass over g: 16 independent sums per position keep both FMA
        # pipes busy (one channel at a time left them waiting on each sum's latency; 23 % faster
        # on Zen 5) and the 22 input loads serve all of them. Each sum keeps its tap order.
        a00, a01, a02, a03, a04, a05, a06, a07 = w2[0, 0]
        e00, e01, e02, e03, e04, e05, e06, e07 = w2[0, 1]
        a10, a11, a12, a13, a14, a15, a16, a17 = w2[1, 0]
        e10, e11, e12, e13, e14, e15, e16, e17 = w2[1, 1]
        a20, a21, a22, a23, a24, a25, a26, a27 = w2[2, 0]
        e20, e21, e22, e23, e24, e25, e26, e27 = w2[2, 1]
        a30, a31, a32, a33, a34, a35, a36, a37 = w2[3, 0]
        e30, e31, e32, e33, e34, e35, e36, e37 = w2[3, 1]
        c0, c1, c2, c3 = b2[0], b2[1], b2[2], b2[3]
        row = out[r]
        o0, o1 = row[:n_pooled], row[n_pooled:2 * n_pooled]
        o2, o3 = row[2 * n_pooled:3 * n_pooled], row[3 * n_pooled:]
        m0, m1 = w16[off2:off2 + n_pooled], w16[off2 + n_pooled:off2 + 2 * n_pooled]
        m2, m3 = w16[off2 + 2 * n_pooled:off2 + 3 * n_pooled], w16[off2 + 3 * n_pooled:off2 + 4 * n_pooled]
        for g in range(n_pooled):
            # position 4 g + ph + k is phase (ph + k) % 4 of block g + (ph + k) // 4: X[i] = x[i % 4][g + i // 4]
            X0, X1, X2, X3, X4, X5 = x0[g], x1[g], x2[g], x3[g], x0[g + 1], x1[g + 1]
            X6, X7, X8, X9, X10 = x2[g + 1], x3[g + 1], x0[g + 2], x1[g + 2], x2[g + 2]
            Y0, Y1, Y2, Y3, Y4, Y5 = y0[g], y1[g], y2[g], y3[g], y0[g + 1], y1[g + 1]
            Y6, Y7, Y8, Y9, Y10 = y2[g + 1], y3[g + 1], y0[g + 2], y1[g + 2], y2[g + 2]
            v0 = (c0 + a00 * X0 + a01 * X1 + a02 * X2 + a03 * X3 + a04 * X4 + a05 * X5 + a06 * X6 + a07 * X7
                  + e00 * Y0 + e01 * Y1 + e02 * Y2 + e03 * Y3 + e04 * Y4 + e05 * Y5 + e06 * Y6 + e07 * Y7)
            v1 = (c0 + a00 * X1 + a01 * X2 + a02 * X3 + a03 * X4 + a04 * X5 + a05 * X6 + a06 * X7 + a07 * X8
                  + e00 * Y1 + e01 * Y2 + e02 * Y3 + e03 * Y4 + e04 * Y5 + e05 * Y6 + e06 * Y7 + e07 * Y8)
            v2 = (c0 + a00 * X2 + a01 * X3 + a02 * X4 + a03 * X5 + a04 * X6 + a05 * X7 + a06 * X8 + a07 * X9
                  + e00 * Y2 + e01 * Y3 + e02 * Y4 + e03 * Y5 + e04 * Y6 + e05 * Y7 + e06 * Y8 + e07 * Y9)
            v3 = (c0 + a00 * X3 + a01 * X4 + a02 * X5 + a03 * X6 + a04 * X7 + a05 * X8 + a06 * X9 + a07 * X10
                  + e00 * Y3 + e01 * Y4 + e02 * Y5 + e03 * Y6 + e04 * Y7 + e05 * Y8 + e06 * Y9 + e07 * Y10)
            # max-pool, ReLU (they commute) and the flatten-site mask, channel-major
            o0[g] = max(max(max(v0, v1), max(v2, v3)), _F32_ZERO) * np.float32(m0[g] < _I16_KEEP_BELOW)
            v0 = (c1 + a10 * X0 + a11 * X1 + a12 * X2 + a13 * X3 + a14 * X4 + a15 * X5 + a16 * X6 + a17 * X7
                  + e10 * Y0 + e11 * Y1 + e12 * Y2 + e13 * Y3 + e14 * Y4 + e15 * Y5 + e16 * Y6 + e17 * Y7)
            v1 = (c1 + a10 * X1 + a11 * X2 + a12 * X3 + a13 * X4 + a14 * X5 + a15 * X6 + a16 * X7 + a17 * X8
                  + e10 * Y1 + e11 * Y2 + e12 * Y3 + e13 * Y4 + e14 * Y5 + e15 * Y6 + e16 * Y7 + e17 * Y8)
            v2 = (c1 + a10 * X2 + a11 * X3 + a12 * X4 + a13 * X5 + a14 * X6 + a15 * X7 + a16 * X8 + a17 * X9
                  + e10 * Y2 + e11 * Y3 + e12 * Y4 + e13 * Y5 + e14 * Y6 + e15 * Y7 + e16 * Y8 + e17 * Y9)
            v3 = (c1 + a10 * X3 + a11 * X4 + a12 * X5 + a13 * X6 + a14 * X7 + a15 * X8 + a16 * X9 + a17 * X10
                  + e10 * Y3 + e11 * Y4 + e12 * Y5 + e13 * Y6 + e14 * Y7 + e15 * Y8 + e16 * Y9 + e17 * Y10)
            # max-pool, ReLU (they commute) and the flatten-site mask, channel-major
            o1[g] = max(max(max(v0, v1), max(v2, v3)), _F32_ZERO) * np.float32(m1[g] < _I16_KEEP_BELOW)
            v0 = (c2 + a20 * X0 + a21 * X1 + a22 * X2 + a23 * X3 + a24 * X4 + a25 * X5 + a26 * X6 + a27 * X7
                  + e20 * Y0 + e21 * Y1 + e22 * Y2 + e23 * Y3 + e24 * Y4 + e25 * Y5 + e26 * Y6 + e27 * Y7)
            v1 = (c2 + a20 * X1 + a21 * X2 + a22 * X3 + a23 * X4 + a24 * X5 + a25 * X6 + a26 * X7 + a27 * X8
                  + e20 * Y1 + e21 * Y2 + e22 * Y3 + e23 * Y4 + e24 * Y5 + e25 * Y6 + e26 * Y7 + e27 * Y8)
            v2 = (c2 + a20 * X2 + a21 * X3 + a22 * X4 + a23 * X5 + a24 * X6 + a25 * X7 + a26 * X8 + a27 * X9
                  + e20 * Y2 + e21 * Y3 + e22 * Y4 + e23 * Y5 + e24 * Y6 + e25 * Y7 + e26 * Y8 + e27 * Y9)
            v3 = (c2 + a20 * X3 + a21 * X4 + a22 * X5 + a23 * X6 + a24 * X7 + a25 * X8 + a26 * X9 + a27 * X10
                  + e20 * Y3 + e21 * Y4 + e22 * Y5 + e23 * Y6 + e24 * Y7 + e25 * Y8 + e26 * Y9 + e27 * Y10)
            # max-pool, ReLU (they commute) and the flatten-site mask, channel-major
            o2[g] = max(max(max(v0, v1), max(v2, v3)), _F32_ZERO) * np.float32(m2[g] < _I16_KEEP_BELOW)
            v0 = (c3 + a30 * X0 + a31 * X1 + a32 * X2 + a33 * X3 + a34 * X4 + a35 * X5 + a36 * X6 + a37 * X7
                  + e30 * Y0 + e31 * Y1 + e32 * Y2 + e33 * Y3 + e34 * Y4 + e35 * Y5 + e36 * Y6 + e37 * Y7)
            v1 = (c3 + a30 * X1 + a31 * X2 + a32 * X3 + a33 * X4 + a34 * X5 + a35 * X6 + a36 * X7 + a37 * X8
                  + e30 * Y1 + e31 * Y2 + e32 * Y3 + e33 * Y4 + e34 * Y5 + e35 * Y6 + e36 * Y7 + e37 * Y8)
            v2 = (c3 + a30 * X2 + a31 * X3 + a32 * X4 + a33 * X5 + a34 * X6 + a35 * X7 + a36 * X8 + a37 * X9
                  + e30 * Y2 + e31 * Y3 + e32 * Y4 + e33 * Y5 + e34 * Y6 + e35 * Y7 + e36 * Y8 + e37 * Y9)
            v3 = (c3 + a30 * X3 + a31 * X4 + a32 * X5 + a33 * X6 + a34 * X7 + a35 * X8 + a36 * X9 + a37 * X10
                  + e30 * Y3 + e31 * Y4 + e32 * Y5 + e33 * Y6 + e34 * Y7 + e35 * Y8 + e36 * Y9 + e37 * Y10)
            # max-pool, ReLU (they commute) and the flatten-site mask, channel-major
            o3[g] = max(max(max(v0, v1), max(v2, v3)), _F32_ZERO) * np.float32(m3[g] < _I16_KEEP_BELOW)
        for k in range(n_dense):
            keep3[r, k] = np.float32(w16[off3 + k] < _I16_KEEP_BELOW)


def cpu_kernel():
    """The compiled CPU kernel (numba is a dependency of workers)."""
    return _pooled_rows


def phase_split(hpad: torch.Tensor) -> torch.Tensor:
    """The padded conv2 input (S, 2, padded) as (S, 2, 4, padded/4): ``[s, j, ph, g] = hpad[s, j, 4 g + ph]``.

    The CPU kernel reads its input this way, once per :meth:`mc_forward` call, so that the
    four conv2 outputs of a max-pool window come from contiguous loads.
    """
    s, channels, padded = hpad.shape
    return hpad.reshape(s, channels, padded // POOL, POOL).transpose(2, 3).contiguous()


def pooled_rows_cpu(kernel, hpad_phases: torch.Tensor, seeds: torch.Tensor, row_spectrum: torch.Tensor,
                    row_pass: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                    layout: MaskLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`pooled_rows_torch`, computed by the fused numba kernel (CPU tensors).

    ``hpad_phases`` is :func:`phase_split` of the ``hpad`` that :func:`pooled_rows_torch` takes.
    """
    expected = (2, POOL, layout.padded // POOL)
    if tuple(hpad_phases.shape[1:]) != expected or not hpad_phases.is_contiguous():
        # numba does not check bounds: a wrong layout would be read out of range silently
        raise ValueError(f"hpad_phases must be a contiguous (S, {', '.join(map(str, expected))}) tensor "
                         f"from phase_split, got {tuple(hpad_phases.shape)}")
    rows = row_spectrum.shape[0]
    flat = torch.empty(rows, layout.sizes[1])
    keep3 = torch.empty(rows, layout.n_dense)
    kernel(hpad_phases.numpy(), seeds.numpy().view(np.uint64), row_spectrum.numpy(), row_pass.numpy(),
           w2.contiguous().numpy(), b2.contiguous().numpy(), flat.numpy(), keep3.numpy())
    return flat, keep3
