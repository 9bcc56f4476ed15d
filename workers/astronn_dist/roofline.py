"""AstroNN's roofline for ``specq bench``: how fast a dense engine could possibly be on this machine.

Spectra/s if all of the network's multiply-adds, done densely, ran at the rate dense_1's
matrix product just reached, and nothing else cost anything. An engine that computes
densely, as specq's does, cannot pass it; roofline/baseline is the most engine/baseline
such an engine could show here. Named by the spec's ``roofline``.
"""
from __future__ import annotations

import time

# Rows per timed dense_1 product on a CPU, where torch's threads together reach their best
# rate (the engine's own steps are smaller, one thread each).
_ROWS = 512


def roofline(pipeline, n_spectra: int, passes: int, tries: int = 3) -> tuple[float, float]:
    """Spectra/s if the network's dense float work ran at dense_1's measured rate and nothing else cost anything.

    dense_1 is timed on random rows in steps of 512 on a CPU (the engine's steps on a GPU),
    on all of torch's threads, with the loaded weights and the engine's matrix product
    (:func:`workers.linear.linear`), ``tries`` times (the fastest is kept); every
    multiply-add of the dense network (:meth:`ApogeeDistBCNN.float_ops`) is then charged at
    that rate. Hashing, conv2's vector code, pooling, reading and normalizing are free
    here. An engine that skipped the products of dropped units row by row could do less
    work than this counts.

    Returns
    -------
    roofline_per_s, gflops : float
    """
    import torch

    from workers.astronn_dist.network import default_rows_per_chunk
    from workers.linear import linear

    model = pipeline.model
    device = model.input_mean.device
    weight = model.dense_1.weight.detach()
    step = max(_ROWS, default_rows_per_chunk(device))
    rows = torch.rand(step, weight.shape[1], device=device, generator=torch.Generator(device).manual_seed(0))
    total = n_spectra * passes
    linear(rows, weight)  # first call outside the clock
    seconds = float("inf")
    for _ in range(tries):
        _sync(device)
        t0 = time.perf_counter()
        for r0 in range(0, total, step):
            linear(rows[: min(step, total - r0)], weight)
        _sync(device)
        seconds = min(seconds, time.perf_counter() - t0)
    gflops = 2.0 * total * weight.numel() / seconds / 1e9
    per_spectrum = sum(model.float_ops(passes).values())
    return gflops * 1e9 / per_spectrum, gflops


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
