"""``specq bench --latency``: seconds from a file landing in a watched folder to its result rows.

Synthetic files of the pipeline's instrument are written beforehand, outside the watched
folder, then renamed into it one after the other at a steady rate, as a data transfer
lands them; ``specq watch``'s watcher sends them to a real worker.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from specq.bench.queue import DEFAULT_REDIS, BenchRefused, bench_environment, claim_redis, redis_reachable, \
    utc_seconds, wait_rows


def run_latency(pipeline: str, n_files: int = 40, rate: float = 2.0, draws: int | None = None,
                broker_url: str | None = None, seed: int = 1, force: bool = False) -> dict:
    """Streaming latency of ``pipeline``: files land at ``rate`` per second in a watched folder;
    seconds from a file's landing (renamed into place) to the last of its result rows, p50 and p99."""
    import threading

    import numpy as np

    from specq.demo import start_worker, stop_worker
    from specq.testing.synthetic import make_dataset
    from tasks.app import app, configure
    from tasks.producer import expand_file
    from tasks.watch import Watcher
    from workers import registry
    from workers.settings import load_settings
    from workers.store import ResultStore

    url = broker_url or DEFAULT_REDIS
    if not redis_reachable(url):
        raise BenchRefused(f"the latency benchmark needs Redis at {url} (--broker redis://HOST:PORT/DB)")
    claim_redis(url, force)
    spec = registry.get(pipeline)
    work = Path(tempfile.mkdtemp(prefix="specq-latency-"))
    staging, incoming = work / "staging", work / "data" / "incoming"
    incoming.mkdir(parents=True)
    # One spectrum a file (the first one warms the worker up): files as a transfer would land them.
    count = {"n_boss": 0, "n_apogee": 0, f"n_{spec.instrument}": n_files + 1}
    truth = make_dataset(staging, seed=seed, formats=("spec-lite", "apStar"), **count)
    files = sorted(set(truth["path"]))
    expected = {f: len(expand_file(f, [pipeline], staging)[0].get(pipeline, [])) for f in files}
    env = bench_environment(work, work / "data", work / "results.sqlite", url, SPECQ_DEMO_WEIGHTS="1")
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPECQ_")})
    settings = load_settings()
    configure(app, settings)
    worker = start_worker(env, work / "worker.log", queues=settings.queue_for(pipeline), name="latency")
    store = ResultStore(settings.database)
    options = {"draws": draws} if draws is not None else {}
    watcher = Watcher([incoming], pipeline, settings, poll_interval=2.0, settle=2.0, events=True, options=options)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()

    def land(rel: str) -> None:
        (incoming / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, incoming / rel)

    landed: dict[str, float] = {}
    try:
        # Warm-up file: the worker loads its model before the clock starts.
        land(files[0])
        wait_rows(store, expected[files[0]], [worker], work)
        t_next = time.monotonic()
        for rel in files[1:]:
            time.sleep(max(0.0, t_next - time.monotonic()))
            land(rel)
            landed[f"incoming/{rel}"] = time.time()
            t_next += 1.0 / rate
        wait_rows(store, sum(expected.values()), [worker], work)
    finally:
        stop.set()
        thread.join(10)
        stop_worker(worker)
    done: dict[str, float] = {}
    for r in store.rows(pipeline):
        done[r["path"]] = max(done.get(r["path"], 0.0), utc_seconds(r["created"]))
    lat = np.array([done[p] - t for p, t in landed.items()])
    return {"pipeline": pipeline, "files": len(landed), "rate_per_s": rate, "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99)), "max_s": float(lat.max()), "broker": url}
