"""Thread counts shared by the engines' numba kernels and torch, and threads that run torch on one core each."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_WORKERS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_WORKERS_LOCK = threading.Lock()


def match_numba_to_torch() -> None:
    """Run numba's parallel loops on as many threads as torch uses (never more than numba started).

    A kernel between two torch operations then neither oversubscribes the cores nor leaves
    some idle; ``torch.set_num_threads`` (or ``OMP_NUM_THREADS``) sets both.
    """
    import numba
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _single_threaded_torch(ready: threading.Barrier) -> None:
    import torch

    # torch reads its thread count into each thread once (at its first parallel call), then
    # keeps it per thread: read it now, then set this thread's to one
    torch.get_num_threads()
    torch.set_num_threads(1)
    ready.wait()


def one_thread_workers(n: int) -> ThreadPoolExecutor:
    """``n`` threads whose torch operations (oneDNN's and MKL's included) each run on that thread alone.

    An engine splits its rows into independent steps and runs them here side by side, each
    step's operations on one core. Neither torch's OpenMP team nor a second one (numba's)
    then waits at a barrier, once per operation, for a core that another thread or process
    holds: on a loaded 2-core machine each such wait costs a scheduler time slice (~5 ms),
    more than many of the operations themselves. Made once per process and ``n``; the
    process's own torch thread count is left as it was.
    """
    import torch

    key = (os.getpid(), n)  # a forked child has none of its parent's threads
    with _WORKERS_LOCK:
        pool = _WORKERS.get(key)
        if pool is None:
            threads = torch.get_num_threads()
            ready = threading.Barrier(n + 1)
            pool = ThreadPoolExecutor(n, thread_name_prefix="torch-one-thread", initializer=_single_threaded_torch,
                                      initargs=(ready,))
            for _ in range(n):  # each initializer holds its thread until all n have started
                pool.submit(int)
            ready.wait()
            torch.set_num_threads(threads)  # torch.set_num_threads also moved the process's count
            _WORKERS[key] = pool
        return pool


def side_by_side(function, items) -> list:
    """``function`` of each of ``items`` in :func:`one_thread_workers`, results in order.

    Each call runs under the caller's inference and grad modes (torch keeps both per
    thread), as many at a time as the caller's torch threads.
    """
    import torch

    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return function(item)

    return list(one_thread_workers(torch.get_num_threads()).map(call, items))
