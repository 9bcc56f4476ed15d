"""Thread counts shared by the engines' numba kernels and torch."""
from __future__ import annotations


def match_numba_to_torch() -> None:
    """Run numba's parallel loops on as many threads as torch uses (never more than numba started).

    A kernel between two torch operations then neither oversubscribes the cores nor leaves
    some idle; ``torch.set_num_threads`` (or ``OMP_NUM_THREADS``) sets both.
    """
    import numba
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
