"""BossNet's adaptive average pooling (1950 → 1024 per channel) as one CPU pass.

torch's CPU pooling needs channels-last memory to vectorize, so the ``fft`` way used to
copy the features into that layout, pool, and copy again into the channel-major flatten the
first linear layer reads: three passes over ~0.5 MB per row that together cost more than the
pooling itself. :func:`pool_into` reads the zero-padded activation buffer once and writes
the flatten in place, with torch's arithmetic: each window summed left to right, then
divided by its width (bit-identical to ``F.adaptive_avg_pool1d``; a test checks).
"""
from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
import torch

from workers.threads import match_numba_to_torch



@lru_cache(maxsize=8)
def windows(length: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive pooling windows as torch defines them: start ``⌊j·L/n⌋``, end ``⌈(j+1)·L/n⌉``.

    Returns
    -------
    start, width : (n_out,) int64 arrays
    """
    j = np.arange(n_out, dtype=np.int64)
    start = (j * length) // n_out
    end = -((-(j + 1) * length) // n_out)
    start.setflags(write=False)
    width = end - start
    width.setflags(write=False)
    return start, width


@numba.njit(parallel=True, cache=True)
def _pool_rows(buf, start, width, out):  # pragma: no cover - compiled
    rows, channels, _ = buf.shape
    n_out = start.shape[0]
    for rc in numba.prange(rows * channels):
        r = rc // channels
        c = rc - r * channels
        src = buf[r, c]
        dst = out[r, c * n_out:(c + 1) * n_out]
        for j in range(n_out):
            s = start[j]
            acc = src[s]
            for k in range(1, width[j]):
                acc += src[s + k]
            dst[j] = acc / np.float32(width[j])


# The same loop compiled without numba's thread pool, for callers that run on one thread
# (workers.threads.one_thread_workers): nothing to launch, and safe side by side under any
# of numba's threading layers.
_pool_rows_serial = numba.njit(cache=True)(_pool_rows.py_func)


def pool_into(buf: torch.Tensor, length: int, out: torch.Tensor) -> None:
    """Pool ``buf[..., :length]`` to ``out``'s width per channel and write the channel-major flatten.

    Parameters
    ----------
    buf : (R, C, N) contiguous float32 CPU tensor
        Activations; only the first ``length`` samples of each channel are read.
    length : int
        Samples per channel, ``≤ N``.
    out : (R, C·P) contiguous float32 CPU tensor
        Receives ``adaptive_avg_pool1d(buf[..., :length], P).reshape(R, C·P)``.
    """
    rows, channels, n = buf.shape
    if not (buf.is_contiguous() and out.is_contiguous() and buf.dtype == out.dtype == torch.float32
            and out.shape[0] == rows and out.shape[1] % channels == 0 and length <= n):
        # numba does not check bounds: a wrong layout would be read out of range silently
        raise ValueError(f"pool_into needs contiguous float32 (R, C, N) and (R, C·P) tensors with length ≤ N; "
                         f"got {tuple(buf.shape)}, {tuple(out.shape)}, length {length}")
    start, width = windows(length, out.shape[1] // channels)
    if torch.get_num_threads() == 1:
        _pool_rows_serial(buf.numpy(), start, width, out.numpy())
        return
    match_numba_to_torch()
    _pool_rows(buf.numpy(), start, width, out.numpy())
