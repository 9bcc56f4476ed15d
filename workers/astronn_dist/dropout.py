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
one loop over the pooled positions per output channel, each input added to all four
sums of its window in turn, keeps the sums and taps in registers: 7.5 µs of one thread's
time per pass row against 9.4 µs for all four channels in one loop, with the same sums.
That loop needs ~20 vector registers; where it spills (AVX2's 16) or each vector is split
in two (Zen 4), one input channel per loop, with the sums stored between the two, is the
faster: 23.5 against 28.5 µs a pass row for the whole kernel on Zen 3 (AVX2), 13.3 against
16.0 on Zen 4. Each process times the two orders once (:func:`conv_by_input_channel`).
`specq bench --pipeline astronn_dist` gives the end-to-end figure.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F

from workers.astronn_dist.shapes import KERNEL, N_DENSE, N_PIXELS, POOL

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
# their 32-bit lanes without an int16 view, which keeps its loops vectorizable.
_U32_LOW16, _U32_SIGN16 = np.uint32(0xFFFF), np.uint32(0x8000)
_U32_KEEP_BELOW_BIASED = np.uint32(KEEP_BELOW + 32768)


@numba.njit(inline="always", cache=True)
def _taps_of(w2, c, j):  # pragma: no cover - compiled
    # conv2's 8 taps from input channel j to output channel c, as scalars the loops keep in registers
    w = w2[c, j]
    return w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]


@numba.njit(inline="always", cache=True)
def _conv_phases(s0, s1, s2, s3, p0, p1, p2, p3, g, w):  # pragma: no cover - compiled
    """Add one input channel's 8 taps to the 4 sums of max-pool window ``g`` (``s_ph``: position 4 g + ph).

    Input position 4 g + i is phase ``p_{i % 4}`` at block g + i // 4. The inputs are taken
    in order, each added to every sum that reads it: sum ph gets tap k = i - ph, so each sum
    still adds its taps in order 0…7 (the same rounding as adding them one sum at a time).
    Inlined into :func:`_pooled_rows`, whose fastmath "contract" makes each step one FMA.
    """
    w0, w1, w2, w3, w4, w5, w6, w7 = w
    v = p0[g]
    s0 = s0 + w0 * v
    v = p1[g]
    s0, s1 = s0 + w1 * v, s1 + w0 * v
    v = p2[g]
    s0, s1, s2 = s0 + w2 * v, s1 + w1 * v, s2 + w0 * v
    v = p3[g]
    s0, s1, s2, s3 = s0 + w3 * v, s1 + w2 * v, s2 + w1 * v, s3 + w0 * v
    v = p0[g + 1]
    s0, s1, s2, s3 = s0 + w4 * v, s1 + w3 * v, s2 + w2 * v, s3 + w1 * v
    v = p1[g + 1]
    s0, s1, s2, s3 = s0 + w5 * v, s1 + w4 * v, s2 + w3 * v, s3 + w2 * v
    v = p2[g + 1]
    s0, s1, s2, s3 = s0 + w6 * v, s1 + w5 * v, s2 + w4 * v, s3 + w3 * v
    v = p3[g + 1]
    s0, s1, s2, s3 = s0 + w7 * v, s1 + w6 * v, s2 + w5 * v, s3 + w4 * v
    v = p0[g + 2]
    s1, s2, s3 = s1 + w7 * v, s2 + w6 * v, s3 + w5 * v
    v = p1[g + 2]
    s2, s3 = s2 + w7 * v, s3 + w6 * v
    v = p2[g + 2]
    s3 = s3 + w7 * v
    return s0, s1, s2, s3


@numba.njit(inline="always", cache=True)
def _pooled_masked(s0, s1, s2, s3, word):  # pragma: no cover - compiled
    """Max-pool of a window's 4 sums, ReLU (they commute) and the flatten-site mask."""
    return max(max(max(s0, s1), max(s2, s3)), _F32_ZERO) * np.float32(word < _I16_KEEP_BELOW)


@numba.njit(inline="always", cache=True)
def _conv_pool_channel(x0, x1, x2, x3, y0, y1, y2, y3, wx, wy, bias, words, out):  # pragma: no cover - compiled
    """One output channel of conv2, max-pooled, ReLU'd and masked, for every window g."""
    for g in range(out.shape[0]):
        s0, s1, s2, s3 = _conv_phases(bias, bias, bias, bias, x0, x1, x2, x3, g, wx)
        s0, s1, s2, s3 = _conv_phases(s0, s1, s2, s3, y0, y1, y2, y3, g, wy)
        out[g] = _pooled_masked(s0, s1, s2, s3, words[g])


@numba.njit(inline="always", cache=True)
def _conv_pool_channel_by_input(x0, x1, x2, x3, y0, y1, y2, y3, wx, wy, bias, sums, words, out):  # pragma: no cover - compiled
    """:func:`_conv_pool_channel` one input channel per loop over g (8 taps and 4 sums in
    registers), the first channel's sums stored in ``sums`` (4, n) between the two loops.

    Each sum adds the same taps in the same order: the same values bit for bit.
    """
    t0, t1, t2, t3 = sums[0], sums[1], sums[2], sums[3]
    for g in range(out.shape[0]):
        s0, s1, s2, s3 = _conv_phases(bias, bias, bias, bias, x0, x1, x2, x3, g, wx)
        t0[g], t1[g], t2[g] = s0, s1, s2
        t3[g] = s3
    for g in range(out.shape[0]):
        s0, s1, s2, s3 = _conv_phases(t0[g], t1[g], t2[g], t3[g], y0, y1, y2, y3, g, wy)
        out[g] = _pooled_masked(s0, s1, s2, s3, words[g])


# fastmath "contract" lets LLVM fuse conv2's multiply-adds (FMA): the sums keep a
# fixed tap order, each product-add is rounded once instead of twice. Serial and free of
# the GIL: the network runs it on blocks of rows in threads of its own (see
# ApogeeDistBCNN.mc_forward), never in numba's OpenMP pool, a second one beside torch's.
@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _pooled_rows(hpad_phases, seeds, row_spectrum, row_pass, w2, b2, out, keep3, by_input):  # pragma: no cover - compiled
    n_rows, n_flat = out.shape
    n_pooled = n_flat // 4
    quarter = hpad_phases.shape[3]
    padded = 4 * quarter
    n_dense = keep3.shape[1]
    off2 = 2 * padded
    off3 = off2 + n_flat
    wpp = (off3 + n_dense + 3) // 4
    words = np.empty(wpp, np.uint64)
    w16, w32 = words.view(np.int16), words.view(np.uint32)
    masked = np.empty((2, 4, quarter), np.float32)
    sums = np.empty((4, n_pooled), np.float32)
    for r in range(n_rows):
        s = row_spectrum[r]
        seed = seeds[s]
        base = np.uint64(row_pass[r]) * np.uint64(wpp)
        for q in range(wpp):
            words[q] = _splitmix(seed, base + np.uint64(q))
        # conv1-site dropout on the conv2 input, split by phase: masked[j, ph, g] is
        # input position 4 g + ph of channel j, whose unit j·padded + 4 g + ph is
        # 16-bit word ph of 64-bit word j·quarter + g (little-endian), that is 16-bit half
        # ph % 2 of 32-bit word 2 (j·quarter + g) + ph // 2: 32-bit lanes vectorize twice
        # as wide as 64-bit ones
        for j in range(2):
            for ph in range(4):
                shift = np.uint32(16 * (ph % 2))
                src = hpad_phases[s, j, ph]
                dst = masked[j, ph]
                first = 2 * j * quarter + ph // 2
                for g in range(quarter):
                    word = ((w32[first + 2 * g] >> shift) & _U32_LOW16) ^ _U32_SIGN16
                    dst[g] = src[g] * np.float32(word < _U32_KEEP_BELOW_BIASED)
        x0, x1, x2, x3 = masked[0, 0], masked[0, 1], masked[0, 2], masked[0, 3]
        y0, y1, y2, y3 = masked[1, 0], masked[1, 1], masked[1, 2], masked[1, 3]
        wx0, wy0, wx1, wy1 = _taps_of(w2, 0, 0), _taps_of(w2, 0, 1), _taps_of(w2, 1, 0), _taps_of(w2, 1, 1)
        wx2, wy2, wx3, wy3 = _taps_of(w2, 2, 0), _taps_of(w2, 2, 1), _taps_of(w2, 3, 0), _taps_of(w2, 3, 1)
        c0, c1, c2, c3 = b2[0], b2[1], b2[2], b2[3]
        row = out[r]
        o0, o1 = row[:n_pooled], row[n_pooled:2 * n_pooled]
        o2, o3 = row[2 * n_pooled:3 * n_pooled], row[3 * n_pooled:]
        m0, m1 = w16[off2:off2 + n_pooled], w16[off2 + n_pooled:off2 + 2 * n_pooled]
        m2, m3 = w16[off2 + 2 * n_pooled:off2 + 3 * n_pooled], w16[off2 + 3 * n_pooled:off2 + 4 * n_pooled]
        if by_input:
            # one input channel per loop over g: 8 taps and 4 sums in registers
            _conv_pool_channel_by_input(x0, x1, x2, x3, y0, y1, y2, y3, wx0, wy0, c0, sums, m0, o0)
            _conv_pool_channel_by_input(x0, x1, x2, x3, y0, y1, y2, y3, wx1, wy1, c1, sums, m1, o1)
            _conv_pool_channel_by_input(x0, x1, x2, x3, y0, y1, y2, y3, wx2, wy2, c2, sums, m2, o2)
            _conv_pool_channel_by_input(x0, x1, x2, x3, y0, y1, y2, y3, wx3, wy3, c3, sums, m3, o3)
        else:
            # one output channel per loop over g (~20 vector registers), its 4 sums,
            # 16 taps and a few inputs in registers (all four channels in one loop spilled
            # their 64 taps and 16 sums to the stack and ran ~20 % slower on Zen 5)
            _conv_pool_channel(x0, x1, x2, x3, y0, y1, y2, y3, wx0, wy0, c0, m0, o0)
            _conv_pool_channel(x0, x1, x2, x3, y0, y1, y2, y3, wx1, wy1, c1, m1, o1)
            _conv_pool_channel(x0, x1, x2, x3, y0, y1, y2, y3, wx2, wy2, c2, m2, o2)
            _conv_pool_channel(x0, x1, x2, x3, y0, y1, y2, y3, wx3, wy3, c3, m3, o3)
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


@functools.cache
def conv_by_input_channel() -> bool:
    """Whether the kernel runs conv2 one input channel at a time on this CPU: the faster order, measured.

    A loop over the pooled windows that holds one output channel's 16 taps and 4 sums needs
    about 20 vector registers. Where the CPU has them and runs full-width vectors (Zen 5),
    that order is the faster: 7.5 against 9.4 µs a pass row. Where it spills (16 registers:
    AVX2) or splits each vector in two (Zen 4 runs AVX-512 on 256-bit units), one input
    channel per loop is: 19 → 14 µs for conv2 on Zen 3, 16.0 → 13.3 µs for the whole kernel
    on Zen 4. The instruction set does not tell the two kinds of core apart, so the order is
    timed once per process on a few rows of the real shapes (a few ms). The sums are the
    same bit for bit either way.
    """
    layout = MaskLayout(N_PIXELS, N_DENSE)
    gen = torch.Generator().manual_seed(0)
    phases = phase_split(torch.relu(torch.randn(1, 2, layout.padded, generator=gen)))
    w2, b2 = torch.randn(4, 2, KERNEL, generator=gen), torch.randn(4, generator=gen)
    rows = torch.zeros(_TIMED_ROWS, dtype=torch.int64)
    seeds = torch.tensor([1], dtype=torch.int64)

    def run(by_input: bool) -> None:
        pooled_rows_cpu(cpu_kernel(), phases, seeds, rows, torch.arange(_TIMED_ROWS), w2, b2, layout, by_input)

    by_input = faster_order(run)
    log.debug("astronn_dist kernel: conv2 one %s channel per loop (measured)", "input" if by_input else "output")
    return by_input


_TIMED_ROWS = 16


def faster_order(run, tries: int = 5) -> bool:
    """Whether ``run(True)`` is faster than ``run(False)``: the best of ``tries`` each, timed in turns.

    In turns, so that both orders meet the same moments of a machine shared with other work.
    """
    best = {True: float("inf"), False: float("inf")}
    run(True), run(False)  # first calls load the compiled kernel
    for _ in range(tries):
        for order in (True, False):
            start = time.perf_counter()
            run(order)
            best[order] = min(best[order], time.perf_counter() - start)
    return best[True] < best[False]


def pooled_rows_cpu(kernel, hpad_phases: torch.Tensor, seeds: torch.Tensor, row_spectrum: torch.Tensor,
                    row_pass: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                    layout: MaskLayout, by_input: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`pooled_rows_torch`, computed by the fused numba kernel (CPU tensors).

    ``hpad_phases`` is :func:`phase_split` of the ``hpad`` that :func:`pooled_rows_torch` takes.
    ``by_input`` picks the kernel's conv2 loop order (:func:`conv_by_input_channel` when None);
    both give the same values.
    """
    if by_input is None:
        by_input = conv_by_input_channel()
    expected = (2, POOL, layout.padded // POOL)
    if tuple(hpad_phases.shape[1:]) != expected or not hpad_phases.is_contiguous():
        # numba does not check bounds: a wrong layout would be read out of range silently
        raise ValueError(f"hpad_phases must be a contiguous (S, {', '.join(map(str, expected))}) tensor "
                         f"from phase_split, got {tuple(hpad_phases.shape)}")
    rows = row_spectrum.shape[0]
    flat = torch.empty(rows, layout.sizes[1])
    keep3 = torch.empty(rows, layout.n_dense)
    kernel(hpad_phases.numpy(), seeds.numpy().view(np.uint64), row_spectrum.numpy(), row_pass.numpy(),
           w2.contiguous().numpy(), b2.contiguous().numpy(), flat.numpy(), keep3.numpy(), bool(by_input))
    return flat, keep3
