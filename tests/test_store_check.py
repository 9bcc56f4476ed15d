"""A worker whose result store cannot be reached: real worker processes, real PostgreSQL.

It names the driver's cause (password masked), never says "ready" while the store is
unusable, refuses to start for a cause that waiting cannot fix, and stops within 10 s of
SIGTERM while it waits, handing its message back to the queue.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from conftest import producer_app, say, wait_for, worker_env
from proxy import TcpProxy, free_port
from test_crash import _boss_files, _report

pytestmark = pytest.mark.integration

STOP_WITHIN_S = 10.0


def _stop_seconds(worker) -> float:
    """Seconds from SIGTERM to the worker's main process to its exit (systemd's KillMode=mixed)."""
    t0 = time.monotonic()
    os.kill(worker.proc.pid, signal.SIGTERM)
    try:
        worker.proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    return time.monotonic() - t0


def test_missing_database_refuses_to_start_with_the_cause(tmp_path, start_worker, postgres_url):
    name = f"specq_missing_{uuid.uuid4().hex[:8]}"
    url = postgres_url.replace("postgres@", "postgres:hunter2@").rsplit("/", 1)[0] + f"/{name}"
    env = worker_env(tmp_path, tmp_path / "data", url)
    worker = start_worker(env, queues="gpu")
    wait_for(lambda: worker.proc.poll() is not None, 60, 0.2, what="the worker to refuse to start",
             on_fail=lambda: worker.log_text()[-3000:])
    log = worker.log_text()
    assert worker.proc.returncode == 78, log[-2000:]
    lines = [line for line in log.splitlines() if "cannot be used" in line]
    assert len(lines) == 1, log[-2000:]
    assert f'database "{name}" does not exist' in lines[0] and "not starting" in lines[0]
    assert "hunter2" not in log and "postgres:***@" in lines[0]
    assert " ready." not in log


def test_unreachable_store_is_waited_for_and_said(tmp_path, start_worker, postgres_url):
    port = free_port()  # nothing listens here until the proxy starts
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    env = worker_env(tmp_path, tmp_path / "data", url)
    waiting = start_worker(env, queues="gpu")
    wait_for(lambda: "unreachable" in waiting.log_text(), 60, 0.2, what="the waiting line",
             on_fail=lambda: waiting.log_text()[-3000:])
    assert "Connection refused" in waiting.log_text() and "not taking messages" in waiting.log_text()
    assert " ready." not in waiting.log_text()
    stopped_in = _stop_seconds(waiting)
    say(f"[store unreachable at start] SIGTERM to exit: {stopped_in:.1f} s")
    assert stopped_in < STOP_WITHIN_S

    starting = start_worker(env, queues="gpu")
    wait_for(lambda: "unreachable" in starting.log_text(), 60, 0.2, what="the waiting line",
             on_fail=lambda: starting.log_text()[-3000:])
    proxy = TcpProxy("127.0.0.1", 5432, port=port).start()
    try:
        wait_for(lambda: " ready." in starting.log_text(), 60, 0.2, what="ready once the store answers",
                 on_fail=lambda: starting.log_text()[-3000:])
        assert "reachable; starting" in starting.log_text()
    finally:
        starting.stop()
        proxy.stop()


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_sigterm_while_waiting_for_the_store_stops_fast_and_loses_nothing(
        tmp_path, monkeypatch, start_worker, clean_redis, postgres_schema_url, pool):
    proxy = TcpProxy("127.0.0.1", 5432).start()
    proxied = postgres_schema_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    root = tmp_path / "data"
    files = _boss_files(root, 4)
    env = worker_env(tmp_path, root, proxied, clean_redis)
    first = start_worker(env, queues="gpu", pool=pool)
    try:
        wait_for(lambda: " ready." in first.log_text(), 60, 0.2, what="the worker to be ready",
                 on_fail=lambda: first.log_text()[-3000:])
        proxy.cut()
        app, settings = producer_app(env, monkeypatch)
        from tasks.producer import submit
        from workers.store import ResultStore

        # The producer records what it sends in the store: it reaches the database directly,
        # while the worker's way to it is cut.
        settings.database_url = postgres_schema_url
        sub = submit(files, "bossnet", chunk_size=4, options={"draws": 2}, settings=settings)
        wait_for(lambda: "result store unreachable (" in first.log_text(), 60, 0.2,
                 what="the worker to meet the outage", on_fail=lambda: first.log_text()[-3000:])
        assert "Connection refused" in first.log_text() or "server closed the connection" in first.log_text()
        stopped_in = _stop_seconds(first)
        say(f"[store unreachable mid-run, {pool} pool] SIGTERM to exit: {stopped_in:.1f} s")
        assert stopped_in < STOP_WITHIN_S, first.log_text()[-3000:]
        assert "goes back to the queue" in first.log_text()

        proxy.resume()
        second = start_worker(env, queues="gpu")
        store = ResultStore(postgres_schema_url)
        wait_for(lambda: store.count() >= sub.n_spectra, 180, what="every row after the restart",
                 on_fail=lambda: second.log_text()[-3000:])
        counts = _report(f"SIGTERM during a store outage, {pool} pool", sub.n_spectra, store)
        assert counts == {"enqueued": 4, "rows": 4, "duplicates": 0, "lost": 0}
        store.engine.dispose()
    finally:
        proxy.stop()


def test_a_missing_data_root_is_waited_for_and_said(tmp_path):
    import io
    import threading

    from workers.remote import wait_for_data_root
    from workers.settings import load_settings

    root = tmp_path / "mounted-later"
    out = io.StringIO()
    threading.Timer(0.3, root.mkdir).start()
    wait_for_data_root(load_settings(data_root=root), out=out)
    lines = out.getvalue().splitlines()
    assert root.is_dir() and lines[-1] == f"specq worker: the data root {root} is there; starting"
    assert lines[0].startswith(f"specq worker: the data root {root} does not exist") and "not taking messages" in lines[0]


def test_a_data_root_that_is_a_file_stops_the_worker_at_once(tmp_path):
    import io

    from workers.remote import wait_for_data_root
    from workers.settings import load_settings

    (tmp_path / "root").write_text("not a folder")
    out = io.StringIO()
    with pytest.raises(SystemExit) as stopped:
        wait_for_data_root(load_settings(data_root=tmp_path / "root"), out=out)
    assert stopped.value.code == 78 and "is not a folder (not starting; fix SPECQ_DATA_ROOT)" in out.getvalue()
    wait_for_data_root(load_settings(data_root="https://data.sdss.org/sas"), out=out)  # a URL: not looked at


def test_a_worker_whose_data_root_is_missing_takes_no_message_until_it_is_there(tmp_path, start_worker):
    env = worker_env(tmp_path, tmp_path / "data", f"sqlite:///{tmp_path / 'r.sqlite'}")
    root = tmp_path / "not-mounted-yet"
    env["SPECQ_DATA_ROOT"] = str(root)
    worker = start_worker(env, queues="gpu")
    wait_for(lambda: "does not exist" in worker.log_text(), 60, 0.2, what="the waiting line",
             on_fail=lambda: worker.log_text()[-3000:])
    assert " ready." not in worker.log_text()
    root.mkdir()
    wait_for(lambda: " ready." in worker.log_text(), 60, 0.2, what="ready once the data root is there",
             on_fail=lambda: worker.log_text()[-3000:])
    assert "is there; starting" in worker.log_text()
