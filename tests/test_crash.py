"""Crash safety with real processes: every enqueued spectrum ends as exactly one row.

Each test prints its counts (enqueued, rows, duplicates, lost) — run with ``-s`` to see them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import SHARED_REDIS, producer_app, say, wait_for, worker_env
from proxy import TcpProxy, free_port

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 8


def _boss_files(root: Path, n: int, seed: int = 11) -> list[str]:
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(root, n_boss=n, n_apogee=0, seed=seed, formats=("spec-lite",))
    return sorted(set(truth["path"]))


def _report(name: str, expected: int, store) -> dict:
    rows = store.rows("bossnet") + store.rows("astronn_dist")
    keys = [(r["spectrum_key"], r["model_sha256"]) for r in rows]
    counts = {"enqueued": expected, "rows": len(rows), "duplicates": len(keys) - len(set(keys)),
              "lost": expected - len(set(keys))}
    say(f"[{name}] " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def _in_flight(settings) -> int:
    """Messages a worker has taken and not acknowledged, as the broker sees them."""
    if settings.embedded:
        return len(list((settings.broker_folder / "inflight").glob("*/*.msg")))
    if settings.broker.startswith("amqp"):
        from conftest import _rabbitmqctl

        listed = _rabbitmqctl("list_queues", "-p", settings.broker.rsplit("/", 1)[1], "messages_unacknowledged")
        return sum(int(n) for n in listed.stdout.split() if n.isdigit())
    import redis

    return redis.Redis.from_url(settings.broker).hlen("unacked")


@pytest.mark.parametrize("broker", ["embedded", SHARED_REDIS, "rabbitmq"])
def test_kill_9_mid_batch_loses_nothing(tmp_path, monkeypatch, start_worker, broker, request):
    broker_url = (request.getfixturevalue("clean_redis") if broker == "redis" else
                  request.getfixturevalue("rabbitmq_url") if broker == "rabbitmq" else None)
    root = tmp_path / "data"
    files = _boss_files(root, 16)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", broker_url,
                     SPECQ_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT, SPECQ_FAULT_KILL=Path(files[5]).name)
    first = start_worker(env, queues="gpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    sub = submit(files, "bossnet", chunk_size=4, options={"draws": 4}, settings=settings)
    store = ResultStore(settings.database)
    # The worker SIGKILLs itself on the second message, after it took it and before any row:
    # an outside kill -9 cannot be timed into a message that takes 0.1 s.
    wait_for(lambda: first.proc.poll() is not None, 180, 0.1, what="the worker to be killed",
             on_fail=lambda: first.log_text()[-3000:])
    assert first.proc.returncode == -signal.SIGKILL
    # RabbitMQ takes the message back the moment the dead worker's connection closes.
    in_flight = 0 if broker == "rabbitmq" else 1
    assert store.count() == 4 and _in_flight(settings) == in_flight, "one message done, the next one in flight"
    restarted_at = time.monotonic()
    second = start_worker({k: v for k, v in env.items() if k != "SPECQ_FAULT_KILL"}, queues="gpu")
    killed_task = sub.task_ids["bossnet"][1]  # the second message, in flight when the worker died
    wait_for(lambda: f"[{killed_task}] received" in second.log_text(), 180, 0.1,
             what="the killed message handed out again", on_fail=lambda: second.log_text()[-3000:])
    returned_s = time.monotonic() - restarted_at
    wait_for(lambda: store.count() >= sub.n_spectra, 180, what="every row after kill -9",
             on_fail=lambda: second.log_text()[-3000:])
    recovered_s = time.monotonic() - restarted_at
    counts = _report(f"kill -9, {broker} broker", sub.n_spectra, store)
    say(f"[kill -9, {broker} broker] restart to the killed message redelivered: {returned_s:.1f} s, "
        f"to all rows: {recovered_s:.1f} s")
    assert counts == {"enqueued": 16, "rows": 16, "duplicates": 0, "lost": 0}
    assert not store.dead_letter_rows()
    # Bounded: worker start + the remaining work (+ on Redis the visibility timeout and sweep);
    # RabbitMQ hands the message back as soon as the dead worker's connection closes.
    assert returned_s < 60 if broker == "rabbitmq" else recovered_s < 150


def test_duplicate_delivery_writes_no_second_row(tmp_path, monkeypatch, start_worker, clean_redis):
    root = tmp_path / "data"
    files = _boss_files(root, 3)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", clean_redis)
    worker = start_worker(env, queues="gpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import expand_file
    from workers.store import ResultStore

    refs = [r.to_json() for f in files for r in expand_file(f, ["bossnet"], root)[0]["bossnet"]]
    for _ in range(2):  # the same message, same task id, delivered twice
        app.send_task("specq.bossnet", args=[refs], kwargs={"options": {"draws": 2}}, queue="gpu",
                      task_id="duplicate-task-0001")
    store = ResultStore(settings.database)
    wait_for(lambda: len({r["task_id"] for r in store.rows("bossnet")}) == 1 and store.count() >= 3, 120,
             what="the rows", on_fail=lambda: worker.log_text()[-3000:])
    # Both deliveries ran to the end (the second one wrote over the same keys, no new row).
    wait_for(lambda: worker.log_text().count("Task specq.bossnet[duplicate-task-0001] succeeded") == 2, 120,
             what="the second delivery's end", on_fail=lambda: worker.log_text()[-3000:])
    counts = _report("duplicate delivery", 3, store)
    assert counts["rows"] == 3 and counts["duplicates"] == 0 and counts["lost"] == 0


def _private_redis(tmp_path: Path) -> tuple[subprocess.Popen, int, list[str]]:
    port = free_port()
    (tmp_path / "redis").mkdir(exist_ok=True)
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
           "--appendfsync", "always", "--save", "", "--dir", str(tmp_path / "redis")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port, cmd


def _wait_redis(port: int):
    import redis

    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), 20, 0.1, what="redis-server")


def _pings(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def test_redis_restart_with_aof_loses_nothing(tmp_path, monkeypatch, start_worker):
    assert shutil.which("redis-server"), "redis-server must be installed (CI installs it)"
    proc, port, cmd = _private_redis(tmp_path)
    try:
        _wait_redis(port)
        root = tmp_path / "data"
        files = _boss_files(root, 12)
        url = f"redis://127.0.0.1:{port}/0"
        env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", url,
                         SPECQ_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT)
        worker = start_worker(env, queues="gpu")
        app, settings = producer_app(env, monkeypatch)
        from tasks.producer import submit
        from workers.store import ResultStore

        sub = submit(files, "bossnet", chunk_size=2, options={"draws": 4}, settings=settings)
        store = ResultStore(settings.database)
        wait_for(lambda: store.count() >= 2, 180, what="the first rows", on_fail=lambda: worker.log_text()[-3000:])
        proc.send_signal(signal.SIGKILL)  # the harshest restart: no shutdown, AOF only
        proc.wait()
        time.sleep(2)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_redis(port)
        wait_for(lambda: store.count() >= sub.n_spectra, 240, what="every row after the Redis restart",
                 on_fail=lambda: worker.log_text()[-4000:])
        counts = _report("redis restart", sub.n_spectra, store)
        assert counts["rows"] == 12 and counts["duplicates"] == 0 and counts["lost"] == 0
    finally:
        proc.kill()
        proc.wait()


OUTAGE_RETRIES = 3  # the worker's tries through the outage: backoff of 1 and 2 s (±50 %) between them


def test_postgres_outage_through_several_retries_loses_nothing(tmp_path, monkeypatch, start_worker, clean_redis,
                                                               postgres_schema_url):
    proxy = TcpProxy("127.0.0.1", 5432).start()
    proxied = postgres_schema_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    root = tmp_path / "data"
    files = _boss_files(root, 10)
    env = worker_env(tmp_path, root, proxied, clean_redis)
    worker = start_worker(env, queues="gpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    store = ResultStore(postgres_schema_url)  # the test reads past the proxy
    try:
        # Before the outage: work done, the worker's pooled connections open.
        before = submit(files[:4], "bossnet", chunk_size=2, options={"draws": 2}, settings=settings)
        wait_for(lambda: store.count() >= before.n_spectra, 180, what="the rows before the outage",
                 on_fail=lambda: worker.log_text()[-3000:])
        proxy.cut()  # open connections reset, new ones refused: the same outage every run
        cut_at = time.monotonic()
        # During it: work arrives, and the worker meets the outage at its first database call.
        # The producer records what it sends in the database first (it would refuse to send
        # through this outage): its own way there stays up, only the worker's is cut.
        settings.database_url = postgres_schema_url
        during = submit(files[4:], "bossnet", chunk_size=2, options={"draws": 2}, settings=settings)
        # The outage lasts until the worker has met it OUTAGE_RETRIES times, waiting in between
        # (seconds, growing): it is waited out inside the worker, whatever the machine's speed.
        wait_for(lambda: worker.log_text().count("result store unreachable (") >= OUTAGE_RETRIES, 90, 0.2,
                 what=f"the worker to meet the outage {OUTAGE_RETRIES} times",
                 on_fail=lambda: worker.log_text()[-3000:])
        outage_s = time.monotonic() - cut_at
        proxy.resume()
        expected = before.n_spectra + during.n_spectra
        wait_for(lambda: store.count() >= expected, 240, what="every row after PostgreSQL returns",
                 on_fail=lambda: worker.log_text()[-4000:])
    finally:
        proxy.stop()
    assert "Connection refused" in worker.log_text() or "reset" in worker.log_text()  # the driver's cause
    counts = _report("postgres outage", expected, store)
    say(f"[postgres outage] lasted {outage_s:.1f} s")
    assert counts == {"enqueued": 10, "rows": 10, "duplicates": 0, "lost": 0}
    store.engine.dispose()


def test_message_that_kills_its_worker_is_dead_lettered(tmp_path, monkeypatch, start_worker, clean_redis):
    root = tmp_path / "data"
    files = _boss_files(root, 2)
    poison = files[0]
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", clean_redis,
                     SPECQ_FAULT_KILL=Path(poison).name, SPECQ_MAX_REDELIVERIES=1, SPECQ_VISIBILITY_TIMEOUT=4)
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    sub = submit(files, "bossnet", chunk_size=1, options={"draws": 2}, settings=settings)
    store = ResultStore(settings.database)
    # As systemd's Restart=on-failure would: start a worker again each time the message kills it.
    restarts = 0
    while store.count() < 2:
        assert restarts < 8, "the poison message was never dead-lettered"
        worker = start_worker(env, queues="gpu")
        wait_for(lambda: worker.proc.poll() is not None or store.count() >= 2, 120, 0.2,
                 what="the worker to die or finish", on_fail=lambda: worker.log_text()[-3000:])
        restarts += worker.proc.poll() is not None
    dead = store.dead_letter_rows()
    assert len(dead) == 1 and dead[0]["deliveries"] == 3 and "dead-lettered" in dead[0]["reason"]
    # Deliveries 1 and 2 each killed a worker and the 3rd was dead-lettered; a worker can also
    # die starting up next to a dying one, so count kills as at least 2 (and bounded by the loop).
    assert restarts >= 2
    rows = {r["path"]: r for r in store.rows("bossnet")}
    assert rows[poison]["flag_bad"] and "dead-lettered" in rows[poison]["error"]
    assert not rows[files[1]]["flag_bad"]
    _report("poison message", sub.n_spectra, store)
