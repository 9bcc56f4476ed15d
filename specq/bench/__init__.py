"""``specq bench``: spectra per second, the straightforward way against specq's engine and queue.

One run, the same weights and the same synthetic spectra in the same process:

* **baseline** — the straightforward way the pipeline declares (its spec's ``baseline``,
  e.g. one spectrum at a time); a pipeline without one is timed without it;
* **engine** — specq's batched engine, files read ahead of the device
  (:mod:`specq.bench.engine`);
* **queue** — end to end through a broker (Redis when reachable, else the embedded one)
  and real worker processes (:mod:`specq.bench.queue`).

It prints spectra/s, the ratios engine/baseline and queue/engine, peak memory and the
agreement of the engine's outputs with the baseline's (:mod:`specq.bench.report`). A
pipeline that declares a **roofline** (its spec's ``roofline``) also gets the speed an
engine computing its network densely could not pass here. ``--latency`` measures instead
how long a file takes from landing in a watched folder to its rows
(:mod:`specq.bench.latency`).
"""
from specq.bench.engine import run_bench
from specq.bench.latency import run_latency
from specq.bench.queue import BENCH_MARKER, DEFAULT_REDIS, BenchRefused, claim_redis
from specq.bench.report import BenchResult, render, to_json

__all__ = ["BENCH_MARKER", "DEFAULT_REDIS", "BenchRefused", "BenchResult", "claim_redis", "render", "run_bench",
           "run_latency", "to_json"]
