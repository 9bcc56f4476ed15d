"""``specq bench --latency --backlog N``: how long a new spectrum waits beside a reprocessing.

N BOSS spectra of a reprocessing are queued in the bulk lane, one warm worker busy with
them; then files land one by one in a watched folder (``--spectra`` files at ``--rate``
per second). Measured: seconds from a file's landing (renamed into place) to its result
row, p50 and p99, on the broker given (Redis, RabbitMQ, or the embedded broker when no
``--broker`` is given and no Redis answers). Also told: how many backlog rows were
written while the new files waited.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_FILES = 40


class BrokerRefused(RuntimeError):
    """The bench's broker holds messages the bench did not send (and no --force)."""


def claim_broker(settings, force: bool = False) -> None:
    """Make the bench's broker empty, if it is the bench's to empty.

    Redis: :func:`specq.bench.claim_redis` (a database holding other keys is refused).
    RabbitMQ: the lane queues of the bench's virtual host are emptied when they hold
    nothing or ``force``; give the bench a virtual host of its own. The embedded broker
    lives in the bench's own folder.

    Raises
    ------
    BrokerRefused, specq.bench.BenchRefused
    """
    from specq.bench.queue import claim_redis
    from tasks.app import worker_queues
    from tasks.brokers import kind, lane_depths, purge
    from workers.store_check import redact_url as redact
    from tasks.lanes import lane_queues

    broker = kind(settings)
    if broker == "redis":
        claim_redis(settings.broker, force)
    elif broker != "embedded":
        queues = worker_queues(settings)
        waiting = sum(d["waiting"] for lanes in lane_depths(settings, queues).values() for d in lanes.values())
        if waiting and not force:
            raise BrokerRefused(f"{redact(settings.broker)} holds {waiting} message(s) the bench did not send, and "
                                f"the bench empties its queues: give --broker a virtual host of its own, or --force")
        purge(settings, lane_queues(queues))


def run_latency_backlog(n_files: int = DEFAULT_FILES, rate: float = 2.0, backlog: int = 640,
                        draws: int | None = None, broker_url: str | None = None, seed: int = 1,
                        force: bool = False) -> dict:
    """Land ``n_files`` files at ``rate`` per second while ``backlog`` bulk spectra wait; see the module docstring.

    Returns
    -------
    dict
        ``files``, ``rate_per_s``, ``backlog``, ``p50_s``, ``p99_s``, ``max_s`` (landing
        to row), ``backlog_rows_meanwhile`` (backlog rows written before the last new
        file's row), ``broker``.
    """
    import numpy as np

    from specq.bench.queue import DEFAULT_REDIS, redis_reachable as _redis_reachable, utc_seconds as _utc_seconds, \
        wait_rows as _wait_rows
    from specq.demo import start_worker, stop_worker
    from specq.testing.synthetic import make_dataset, write_spec_lite
    from tasks.app import app, configure
    from workers.store_check import redact_url as redact
    from tasks.producer import expand_file, submit
    from tasks.watch import Watcher
    from workers.settings import load_settings
    from workers.store import ResultStore

    url = broker_url if broker_url is not None else (DEFAULT_REDIS if _redis_reachable(DEFAULT_REDIS) else "")
    work = Path(tempfile.mkdtemp(prefix="specq-latency-"))
    incoming = work / "data" / "incoming"
    incoming.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update({"SPECQ_STATE_DIR": str(work / "state"), "SPECQ_DATA_ROOT": str(work / "data"),
                "SPECQ_DATABASE_URL": f"sqlite:///{work / 'results.sqlite'}", "SPECQ_BROKER_URL": url,
                "SPECQ_DEMO_WEIGHTS": "1"})
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPECQ_")})
    settings = load_settings()
    configure(app, settings)
    claim_broker(settings, force)
    options = {"draws": draws} if draws is not None else {}
    # The reprocessing: synthetic BOSS spectra under backlog/, expanded as a producer does.
    make_dataset(work / "data" / "backlog", n_boss=backlog, n_apogee=0, seed=seed)
    refs = [r for f in sorted(p.relative_to(work / "data").as_posix() for p in (work / "data" / "backlog").rglob("*.fits"))
            for r in expand_file(f, ["bossnet"], settings.data_root).refs.get("bossnet", [])][:backlog]
    worker = start_worker(env, work / "worker.log", queues=settings.queue_for("bossnet"), name="latency")
    store = ResultStore(settings.database)
    watcher = Watcher([incoming], "bossnet", settings, poll_interval=2.0, settle=2.0, events=True, options=options)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    landed: dict[str, float] = {}
    try:
        # Warm-up file: the worker loads its model before the clock starts.
        write_spec_lite(incoming / "spec-0-0-0.fits", teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=seed)
        _wait_rows(store, 1, [worker], work)
        submit(refs, "bossnet", options=options, settings=settings, bulk=True)
        t_next = time.monotonic()
        for i in range(1, n_files + 1):
            time.sleep(max(0.0, t_next - time.monotonic()))
            name = f"spec-{i}-60000-{i}.fits"
            write_spec_lite(incoming / name, teff=4000 + 50 * i, logg=4.0, fe_h=-0.2, v_r=10.0, snr=30, seed=seed + i)
            landed[f"incoming/{name}"] = time.time()
            t_next += 1.0 / rate
        _wait_new_rows(store, set(landed), worker, work)
    finally:
        stop.set()
        thread.join(10)
        stop_worker(worker)
        claim_broker(settings, force=True)  # the rest of the backlog is the bench's own: drop it
    rows = store.rows("bossnet")
    created = {r["path"]: _utc_seconds(r["created"]) for r in rows}
    last_new = max(created[p] for p in landed)
    lat = np.array([created[p] - t for p, t in landed.items()])
    return {"files": n_files, "rate_per_s": rate, "backlog": len(refs), "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99)), "max_s": float(lat.max()),
            "backlog_rows_meanwhile": sum(1 for r in rows if r["path"].startswith("backlog/")
                                          and _utc_seconds(r["created"]) <= last_new),
            "broker": redact(url) if url else "embedded filesystem"}


def _wait_new_rows(store, paths: set[str], worker, work: Path, timeout: float = 1800) -> None:
    """Until every landed file has its row (the backlog may still be running)."""
    deadline = time.monotonic() + timeout
    while len(paths & {r["path"] for r in store.rows("bossnet")}) < len(paths):
        if worker.poll() is not None:
            raise RuntimeError(f"the bench worker exited; see {work / 'worker.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the landed files got no rows in {timeout:.0f} s; see {work / 'worker.log'}")
        time.sleep(0.5)


def render(res: dict) -> str:
    return (f"specq bench --latency --backlog {res['backlog']}: {res['files']} files at {res['rate_per_s']} files/s "
            f"via {res['broker']}, {res['backlog']} bulk spectra queued first: land → row p50 {res['p50_s']:.2f} s, "
            f"p99 {res['p99_s']:.2f} s, max {res['max_s']:.2f} s ({res['backlog_rows_meanwhile']} backlog rows "
            f"written meanwhile)")


def main_latency_backlog(args) -> int:
    """``specq bench --latency --backlog N``: run, print one line; a broker not the bench's is one line, exit 2."""
    import sys

    from specq.bench.queue import BenchRefused
    from tasks.app import broker_errors
    from tasks.brokers import describe_error
    from workers.settings import load_settings

    try:
        res = run_latency_backlog(n_files=args.spectra, rate=args.rate, backlog=args.backlog, draws=args.draws,
                                  broker_url=args.broker, force=bool(args.force))
    except (BenchRefused, BrokerRefused) as exc:
        print(f"specq bench: {exc}", file=sys.stderr)
        return 2
    except broker_errors() as exc:
        print(f"specq bench: {describe_error(exc, load_settings(broker_url=args.broker))}", file=sys.stderr)
        return 2
    print(render(res), flush=True)
    return 0
