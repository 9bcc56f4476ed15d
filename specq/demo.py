"""``specq demo``: synthetic SDSS files → embedded queue → a real worker → results.

Runs on any laptop: kombu's filesystem broker and a SQLite result store, both in a
demo folder under the state directory; no server to install.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.registry import PLUGINS_ENV
from workers.settings import load_settings

DEMO_TIMEOUT_S = 600
# Spectra of each source beyond BOSS and APOGEE (LAMOST, Gaia RVS, Gaia XP) the demo writes.
N_OTHER_SOURCE = 4


def demo_environment(demo_dir: Path, weights_dir: Path) -> dict[str, str]:
    """Environment for the demo's worker and producer: embedded broker, SQLite store."""
    # Nothing of a production configuration may reach the demo: no config file, no broker.
    # The plugins stay: the demo runs the pipelines this specq knows.
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "SPECQ_CONFIG") and (not k.startswith("SPECQ_") or k == PLUGINS_ENV)}
    env.update({
        "SPECQ_CONFIG": os.devnull,
        "SPECQ_STATE_DIR": str(demo_dir / "state"),
        "SPECQ_DATA_ROOT": str(demo_dir / "data"),
        "SPECQ_DATABASE_URL": f"sqlite:///{demo_dir / 'results.sqlite'}",
        "SPECQ_WEIGHTS_DIR": str(weights_dir),
        "SPECQ_DEMO_WEIGHTS": "1",  # the demo asks for demo weights where no published ones are installed
        "PYTHONUNBUFFERED": "1",
    })
    return env


def start_worker(env: dict[str, str], log_path: Path, queues: str | None = None,
                 name: str = "demo") -> subprocess.Popen:
    """A real ``celery worker`` process (solo pool: one process, the model loaded once).

    ``queues`` None: every registered pipeline's queue.
    """
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "worker", *(["-Q", queues] if queues else []),
           "-P", "solo", "-l", "INFO", "-n", f"specq-{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    log = open(log_path, "wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_demo(n_boss: int = 12, n_apogee: int = 4, keep: bool = False, pipelines: list[str] | None = None) -> int:
    """Run the demo; returns the exit status.

    ``pipelines``: those to run (None: every registered one); synthetic spectra are
    written for their instruments only (``n_boss`` BOSS, ``n_apogee`` APOGEE). Each
    pipeline that declares demo inputs (its spec's ``demo_inputs``) writes them beside
    the spectra. ``keep``: leave the synthetic files, the broker folder and the worker
    log in the demo folder for inspection (they are removed otherwise, the results stay).
    A failed demo keeps everything and says where.
    """
    from specq.progress import progress_bar
    from specq.testing.synthetic import make_dataset
    from workers import registry

    pipelines = list(pipelines or registry.names())
    instruments = {registry.get(p).instrument for p in pipelines}
    n_boss = n_boss if "boss" in instruments else 0
    n_apogee = n_apogee if "apogee" in instruments else 0

    base = load_settings()
    demo_dir = base.state_dir / "demo"
    weights_dir = base.weights_cache  # demo weights are made once and reused between demos
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    (demo_dir / "data").mkdir(parents=True)
    env = demo_environment(demo_dir, weights_dir)
    others = sorted(instruments - {"boss", "apogee"})
    print(f"specq demo: writing {n_boss} BOSS and {n_apogee} APOGEE synthetic spectra"
          + (f", {N_OTHER_SOURCE} of each of {', '.join(others)}," if others else "") + f" to {demo_dir / 'data'}")
    truth = make_dataset(demo_dir / "data", n_boss=n_boss, n_apogee=n_apogee, seed=7)
    # Sources beyond BOSS and APOGEE (LAMOST, Gaia) have their own synthetic files.
    from specq.testing.surveys import write_source_files

    other_files = [f for i in others for f in write_source_files(demo_dir / "data", i, N_OTHER_SOURCE, seed=7)]
    for p in pipelines:
        write_inputs = registry.get(p).load_demo_inputs()
        if write_inputs:
            env.update(write_inputs(truth, demo_dir / "data"))

    # The producer side of the demo runs here, against the demo's embedded broker.
    for key in [k for k in os.environ if k.startswith("SPECQ_") or k == "CELERY_BROKER_URL"]:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPECQ_")})
    from tasks.app import app, configure
    from tasks.producer import submit
    from workers.store import ResultStore

    settings = load_settings()
    configure(app, settings)
    log_path = demo_dir / "worker.log"
    queues = ",".join(dict.fromkeys(settings.queue_for(p) for p in pipelines))
    worker = start_worker(env, log_path, queues=queues)
    print(f"started worker pid {worker.pid} on queues {queues} (log: {log_path})")
    try:
        files = sorted(set(truth["path"])) + other_files
        sub = submit(files, pipelines, settings=settings)
        expected = sub.n_spectra
        print(f"enqueued {expected} spectra in {sub.n_messages} messages "
              f"({', '.join(f'{p}: {len(r)}' for p, r in sub.refs.items())})")
        print("waiting for the results: the worker loads its models first (a first demo also makes "
              "the demo weights, some 30 s)")
        store = ResultStore(settings.database)
        t0 = time.monotonic()
        done = 0
        with progress_bar(total=expected, unit="spectrum", desc="results") as bar:
            while done < expected:
                if worker.poll() is not None:
                    print(f"the worker exited ({worker.returncode}); see {log_path}", file=sys.stderr)
                    return 1
                if time.monotonic() - t0 > DEMO_TIMEOUT_S:
                    print(f"timed out after {DEMO_TIMEOUT_S} s; see {log_path}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
                now = store.count()
                bar.update(now - done)
                done = now
        wall = time.monotonic() - t0
    finally:
        stop_worker(worker)
    print_summary(store, truth, demo_dir, wall)
    if keep:
        print(f"\nkept for inspection in {demo_dir}: synthetic files and the pipelines' inputs in data/, broker messages in "
              f"state/broker/, worker log worker.log, results in results.sqlite and a FITS file per pipeline")
    else:
        remove_scratch(demo_dir)
        print(f"\nremoved the demo's synthetic files, broker folder and worker log (--keep keeps them); "
              f"results stay in {demo_dir}")
    return 0


def remove_scratch(demo_dir: Path) -> None:
    """Remove what only served the run (inputs, broker, log); the results stay."""
    for name in ("data", "state"):
        shutil.rmtree(demo_dir / name, ignore_errors=True)
    (demo_dir / "worker.log").unlink(missing_ok=True)


def print_summary(store, truth, demo_dir: Path, wall: float) -> None:
    from specq.console import DEMO_BANNER, banner
    from specq.plots import plot_table
    from workers import registry
    from workers.export import write_results

    demo = False
    plots: list[Path] = []
    shown: list[str] = []
    for pipeline in store.tables:
        table = store.table(pipeline)
        if not len(table):
            continue
        shown.append(pipeline)
        demo = demo or bool(table.meta.get("DEMO"))
        out = write_results(table, demo_dir / f"{pipeline}.fits")
        plots += plot_table(table, pipeline, demo_dir / "plots")
        # The spec names stored columns; the table has the exported names (dist → nn_dist).
        exported = {f.name: f.output_name for f in store.schemas[pipeline].output_fields(all_columns=True)}
        show = [exported.get(c, c) for c in registry.get(pipeline).summary_columns]
        view = table[[c for c in show if c in table.colnames] or table.colnames[:8]]
        for name in view.colnames:
            if view[name].dtype.kind == "f":
                view[name].format = ".4g"
        print(f"\n{pipeline}: {len(table)} rows ({int(sum(table['flag_bad']))} flagged bad) → {out}")
        view.pprint(max_lines=14, max_width=140)
    print(f"\nall results: {store.url}  ({wall:.1f} s through the queue)")
    if plots:
        print(f"plots: {', '.join(p.name for p in plots)} in {plots[0].parent}")
    if shown:
        print("export again with: SPECQ_DATABASE_URL=" + store.url
              + f" specq results export --pipeline {shown[0]} --output results.fits")
    if demo:
        banner(DEMO_BANNER)
