"""End to end through real Celery worker processes: embedded broker and the real Redis."""
from __future__ import annotations

import os

import pytest

from conftest import SHARED_REDIS, producer_app, wait_for, worker_env

pytestmark = pytest.mark.integration




def _dataset(root):
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(root, n_boss=3, n_apogee=1, seed=3)
    (root / "spec-broken.fits").write_bytes(b"SIMPLE  =                    T" + os.urandom(3000))
    return truth


@pytest.mark.parametrize("broker", ["embedded", SHARED_REDIS])
def test_worker_processes_files_and_flags_a_broken_one(tmp_path, monkeypatch, start_worker, broker, request):
    broker_url = request.getfixturevalue("clean_redis") if broker == "redis" else None
    root = tmp_path / "data"
    root.mkdir()
    truth = _dataset(root)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'results.sqlite'}", broker_url)
    worker = start_worker(env, queues="gpu,cpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    files = sorted(set(truth["path"])) + ["spec-broken.fits"]
    sub = submit(files, "bossnet,astronn_dist", options={"draws": 2, "seed": 1}, chunk_size=2, settings=settings)
    store = ResultStore(settings.database)
    expected = sub.n_spectra
    assert expected == len(truth) + 1
    wait_for(lambda: store.count() >= expected, 240, what=f"{expected} rows",
             on_fail=lambda: worker.log_text()[-4000:])
    assert worker.proc.poll() is None, "the worker must survive a broken file"
    boss = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    dist = {r["spectrum_key"]: r for r in store.rows("astronn_dist")}
    assert len(boss) + len(dist) == expected
    broken = boss["spec-broken.fits:*:*"]
    assert broken["result_flags"] & 1 and broken["flag_bad"] and broken["error"]
    good = [r for k, r in boss.items() if k != "spec-broken.fits:*:*"]
    assert good and all(r["teff"] is not None and r["teff"] > 0 for r in good)
    assert all(r["demo_weights"] and len(r["model_sha256"]) == 64 and r["task_id"] for r in good)
    assert all(r["L_fakemag"] is not None for r in dist.values())
    if broker == "redis":  # each model timed at its first load: a full message fits the default timeout
        log = worker.log_text()
        assert "bossnet: a message of 32 references × 2 draws takes about" in log, log[-4000:]
        assert "may take" not in log


def test_a_prefork_worker_reads_with_its_readers_and_computes_every_spectrum(tmp_path, monkeypatch, start_worker):
    """The CPU workers of the deployments run a prefork pool: its children, daemons, read with
    threads (a daemon may start no processes) and give results, not flagged rows."""
    from specq.testing.synthetic import make_dataset

    root = tmp_path / "data"
    truth = make_dataset(root, n_boss=0, n_apogee=3, seed=4, formats=("apStar",))
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'results.sqlite'}", SPECQ_READERS=2)
    worker = start_worker(env, queues="cpu", pool="prefork", concurrency=2)
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    submit(sorted(set(truth["path"])), "astronn_dist", options={"draws": 4, "seed": 1}, settings=settings)
    store = ResultStore(settings.database)
    wait_for(lambda: store.count() >= len(truth), 240, what=f"{len(truth)} rows",
             on_fail=lambda: worker.log_text()[-4000:])
    rows = store.rows("astronn_dist")
    assert len(rows) == len(truth) and [r["error"] for r in rows] == [None] * len(truth), worker.log_text()[-3000:]
    assert all(r["L_fakemag"] is not None for r in rows)
    assert "it reads with threads, not processes" in worker.log_text()


def test_files_that_cannot_be_opened_become_flagged_rows_through_enqueue_and_the_worker(
        tmp_path, monkeypatch, start_worker, clean_redis):
    """A broken link and a folder named like a spectrum: sent by the producer, and each ends
    as a flagged row naming the reason and the path (nothing vanishes between them)."""
    root = tmp_path / "data"
    (root / "night").mkdir(parents=True)
    (root / "night" / "spec-1-60000-1.fits").symlink_to(root / "night" / "gone.fits")
    (root / "night" / "spec-2-60000-2.fits").mkdir()
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'results.sqlite'}", clean_redis, SPECQ_MAX_RETRIES=0)
    worker = start_worker(env, queues="gpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    sub = submit(["night"], "bossnet", settings=settings)
    assert sorted(r.key for r in sub.refs["bossnet"]) == ["night/spec-1-60000-1.fits:*:*",
                                                          "night/spec-2-60000-2.fits:*:*"]
    store = ResultStore(settings.database)
    wait_for(lambda: store.count() >= 2, 240, what="two flagged rows", on_fail=lambda: worker.log_text()[-4000:])
    rows = {r["path"]: r for r in store.rows("bossnet")}
    link, folder = rows["night/spec-1-60000-1.fits"], rows["night/spec-2-60000-2.fits"]
    assert link["flag_bad"] and "broken link" in link["error"] and "gone.fits" in link["error"]
    assert "night/spec-1-60000-1.fits" in link["error"]
    assert folder["flag_bad"] and "a folder, not a spectrum file" in folder["error"]
    assert "night/spec-2-60000-2.fits" in folder["error"]


def test_a_warm_shutdown_hands_back_the_messages_not_started(tmp_path, monkeypatch, start_worker, clean_redis):
    """A worker holds a message it has not started (a retry waiting out its backoff); SIGTERM
    puts it back in the queue at once, not after the visibility timeout."""
    import redis

    root = tmp_path / "data"
    root.mkdir()
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'results.sqlite'}", clean_redis,
                     SPECQ_RETRY_BACKOFF=120, SPECQ_VISIBILITY_TIMEOUT=600)
    worker = start_worker(env, queues="gpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import send_message

    # Not there yet: a transient error, retried after a backoff of minutes, held by the worker meanwhile.
    task_id = send_message("bossnet", [{"path": "later/spec-9-60000-9.fits", "hdu": 1, "row": 0}], settings=settings)
    client = redis.Redis.from_url(clean_redis)
    wait_for(lambda: "retry" in worker.log_text() and client.hlen("unacked") == 1 and client.llen("gpu") == 0,
             120, 0.2, what="the retry held by the worker, unstarted", on_fail=lambda: worker.log_text()[-4000:])
    worker.stop()  # SIGTERM: a warm shutdown
    assert worker.proc.returncode == 0
    assert client.llen("gpu") == 1 and client.hlen("unacked") == 0, "handed back at once"
    import json

    message = json.loads(client.lindex("gpu", 0))
    assert message["headers"]["id"] == task_id and message["headers"]["retries"] == 1


def test_a_file_no_one_may_read_is_a_flagged_row_through_enqueue_and_the_worker(tmp_path, start_worker):
    """Mode 000, producer and worker as an ordinary user: enqueue says so and sends it anyway
    (permissions may be fixed before a worker reads it), the worker flags it, naming why and where."""
    import subprocess
    import sys

    from conftest import ROOT
    from specq.testing.synthetic import write_spec_lite
    from test_cli_errors import _as_ordinary_user
    from workers.store import ResultStore

    root = tmp_path / "data"
    write_spec_lite(root / "night" / "spec-1-60000-1.fits", teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=1)
    (root / "night" / "spec-1-60000-1.fits").chmod(0)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'results.sqlite'}", SPECQ_MAX_RETRIES=0)
    sent = subprocess.run(_as_ordinary_user(sys.executable, "-m", "specq.cli", "enqueue", "--pipeline", "bossnet",
                                            "night/spec-1-60000-1.fits"),
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0 and "bossnet: 1 spectrum in 1 message" in sent.stdout, sent.stderr
    assert "night/spec-1-60000-1.fits: cannot be opened" in sent.stderr and "permission denied" in sent.stderr
    worker = start_worker(env, queues="gpu", wrap=tuple(_as_ordinary_user()))
    store = ResultStore(env["SPECQ_DATABASE_URL"])
    wait_for(lambda: store.count() >= 1, 240, what="the flagged row", on_fail=lambda: worker.log_text()[-4000:])
    (row,) = store.rows("bossnet")
    assert row["flag_bad"] and "permission denied" in row["error"] and "night/spec-1-60000-1.fits" in row["error"]


def test_status_shows_a_killed_worker_stale_and_its_message_held_too_long(tmp_path, monkeypatch, start_worker,
                                                                          clean_redis):
    from specq.status import collect, render
    from tasks.heartbeat import STALE_S

    root = tmp_path / "data"
    from specq.testing.synthetic import write_spec_lite

    write_spec_lite(root / "spec-1-60000-1.fits", teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=1)
    # Held longer than expected: over half the visibility timeout, 15 s. Any Redis client that
    # waits for replies (status's ping included) puts the message back in its queue once it
    # has been held for the whole timeout, 30 s: the worker's last beat, up to a beat interval
    # after it took the message and loaded the model, plus STALE_S (11 s) must come first.
    visibility = 30
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'results.sqlite'}", clean_redis,
                     SPECQ_VISIBILITY_TIMEOUT=visibility, SPECQ_FAULT_KILL="spec-1-60000-1")
    worker = start_worker(env, queues="gpu", name="doomed")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit

    wait_for(lambda: any(w.startswith("doomed@") for w in collect(settings, timeout=0.5).get("workers", [])), 120,
             what="the worker live in status", on_fail=lambda: worker.log_text()[-3000:])
    submit(["spec-1-60000-1.fits"], "bossnet", settings=settings)
    wait_for(lambda: worker.proc.poll() is not None, 120, 0.1, what="the worker to kill itself mid-message")
    info = wait_for(lambda: (i := collect(settings, timeout=0.5)).get("stale_workers") and i, STALE_S + 10, 0.5,
                    what="the killed worker stale")
    assert not any(w.startswith("doomed@") for w in info["workers"])
    assert "no heartbeat for" in render(info) and "workers: 0 live" in render(info)
    info = wait_for(lambda: (i := collect(settings, timeout=0.5))["held"]["too_long_s"] and i, visibility, 0.5,
                    what="the killed worker's message held too long")
    assert info["held"]["messages"] == 1 and "held longer than expected" in render(info)
