"""The bench's queue run: the same spectra end to end through a broker and warm worker processes.

The bench flushes the Redis database it uses; :func:`claim_redis` refuses one that holds
keys the bench did not write.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
# Written into the Redis database the bench uses: a database holding keys but not this one
# is someone else's, and the bench will not flush it without --force.
BENCH_MARKER = "specq:bench"


class BenchRefused(RuntimeError):
    """The bench's Redis database holds keys the bench did not write (and no --force)."""


def claim_redis(url: str, force: bool = False) -> None:
    """Flush the Redis database at ``url`` for the bench, if it is the bench's to flush.

    It is when it is empty, holds the bench's marker (a database the bench used before),
    or ``force``. The marker is written after the flush.

    Raises
    ------
    BenchRefused
        The database holds keys and no marker: it may be a production queue.
    """
    import redis

    from workers.store_check import redact_url

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    keys = client.dbsize()
    if keys and not client.exists(BENCH_MARKER) and not force:
        raise BenchRefused(f"{redact_url(url)} holds {keys} key(s) the bench did not write, and the bench flushes "
                           f"its database: give --broker an empty Redis database, or --force to flush this one")
    client.flushdb()
    client.set(BENCH_MARKER, "this Redis database is flushed by `specq bench` before each run")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ValueError):
        return False


def bench_environment(work: Path, data_root: Path, database: Path, broker_url: str | None, **extra) -> dict:
    """The environment of the bench's workers: this process's, with the bench's state, data and store."""
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update({"SPECQ_STATE_DIR": str(work / "state"), "SPECQ_DATA_ROOT": str(data_root),
                "SPECQ_DATABASE_URL": f"sqlite:///{database}", "SPECQ_BROKER_URL": broker_url or "", **extra})
    return env


def queue_run(name: str, refs: list, data_root: Path, work: Path, broker_url: str | None,
              draws: int, seed: int, weights, device: str, expected: int,
              n_workers: int = 1, repeat: int = 1, force: bool = False,
              progress=None) -> tuple[float, float | None]:
    """Spectra/s end to end through a broker and warm workers (best of ``repeat`` rounds); and the
    workers' largest peak RSS (MB)."""
    from specq.demo import start_worker, stop_worker
    from tasks.app import app, configure
    from tasks.producer import submit
    from workers.settings import load_settings
    from workers.store import ResultStore

    env = bench_environment(work, data_root, work / "queue.sqlite", broker_url, SPECQ_DEVICE=device)
    if weights:
        # The workers find weights by their installed name: install (a checked copy) into the bench's folder.
        from workers.weights.install import install

        env["SPECQ_WEIGHTS_DIR"] = str(install(weights, work / "weights", pipeline=name,
                                               allow_unpublished=True).path.parent)
    else:
        env["SPECQ_DEMO_WEIGHTS"] = "1"  # the bench's default: demo weights where none are installed
    if broker_url:
        claim_redis(broker_url, force)
    saved = {k: os.environ.get(k) for k in env if k.startswith("SPECQ_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPECQ_")})
    try:
        settings = load_settings()
        configure(app, settings)
        queue = settings.queue_for(name)
        if n_workers > 1:  # share the cores instead of oversubscribing them
            threads = str(max(1, (os.cpu_count() or 1) // n_workers))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        workers = [start_worker(env, work / f"worker{i}.log", queues=queue, name=f"bench{i}")
                   for i in range(n_workers)]
        store = ResultStore(settings.database)
        try:
            # Warm up: each worker loads its model on its first message.
            warm = submit(refs[:n_workers], name, options={"draws": draws, "seed": seed}, settings=settings,
                          chunk_size=1)
            wait_rows(store, warm.n_spectra, workers, work, task_ids=task_ids(warm))
            time.sleep(2)  # let every worker finish its warm-up message
            # The same references the engine was timed on (files expanded beforehand, as there).
            # Each round rewrites the same rows: it is done when its own messages wrote them all,
            # and it ended when the last of them was written (the rows' own timestamps, so
            # that polling the store can be slow and cheap: it shares the cores with the worker).
            elapsed = float("inf")
            for _ in range(repeat):
                t0 = time.time()
                sub = submit(refs, name, options={"draws": draws, "seed": seed}, settings=settings,
                             chunk_size=max(1, min(settings.chunk_size_for(name), len(refs) // (2 * n_workers))))
                ids = set(task_ids(sub))
                wait_rows(store, sub.n_spectra, workers, work, task_ids=ids, pipeline=name, poll=0.1)
                last = max(utc_seconds(r["created"]) for r in store.rows(name) if r["task_id"] in ids)
                elapsed = min(elapsed, last - t0)
                if progress:
                    progress(1)
            peak = max((_vm_hwm_mb(w.pid) or 0.0) for w in workers)
        finally:
            for w in workers:
                stop_worker(w)
        return expected / elapsed, peak
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_ids(submission) -> list[str]:
    return [t for ids in submission.task_ids.values() for t in ids]


def wait_rows(store, n: int, workers, work: Path, timeout: float = 1800, task_ids=None,
              pipeline: str | None = None, poll: float = 0.01) -> None:
    """Wait until the store holds ``n`` rows (of ``task_ids``, of ``pipeline``); fail if a worker exits."""
    deadline = time.monotonic() + timeout
    while store.count(pipeline, task_ids=task_ids) < n:
        if any(w.poll() is not None for w in workers):
            raise RuntimeError(f"the bench worker exited; see its log in {work}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the bench worker did not finish; see its log in {work}")
        time.sleep(poll)


def utc_seconds(created) -> float:
    """POSIX seconds of a row's ``created`` (SQLite hands it back without its UTC zone)."""
    import datetime

    return (created if created.tzinfo else created.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None
