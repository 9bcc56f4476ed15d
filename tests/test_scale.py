"""Several workers sharing one Redis; a pickled message refused; status."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, producer_app, say, wait_for, worker_env
from test_crash import _boss_files

pytestmark = pytest.mark.integration


def test_work_spreads_over_workers_with_their_own_data_roots(tmp_path, monkeypatch, start_worker, clean_redis):
    data = tmp_path / "data"
    files = _boss_files(data, 12)
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    workers = []
    for host in ("hosta", "hostb"):
        mount = tmp_path / host / "mnt" / "sdss"  # each "host" mounts the data at its own path
        shutil.copytree(data, mount)
        env = worker_env(tmp_path / host, mount, db, clean_redis)
        workers.append(start_worker(env, queues="gpu", name=f"specq-{host}"))
    producer_env = worker_env(tmp_path, data, db, clean_redis)
    app, settings = producer_app(producer_env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    store = ResultStore(db)
    # Both workers up before the work arrives, so each can take a share.
    wait_for(lambda: len(app.control.inspect(timeout=1).ping() or {}) == 2, 90, what="two live workers",
             on_fail=lambda: "\n".join(w.log_text()[-2000:] for w in workers))
    sub = submit(files, "bossnet", chunk_size=1, options={"draws": 4}, settings=settings)
    wait_for(lambda: store.count() >= sub.n_spectra, 240, what="every row",
             on_fail=lambda: "\n".join(w.log_text()[-2000:] for w in workers))
    by_worker: dict[str, int] = {}
    for row in store.rows("bossnet"):
        by_worker[row["worker"].split("@")[0]] = by_worker.get(row["worker"].split("@")[0], 0) + 1
    say(f"[scale] rows per worker: {by_worker}")
    # Each worker takes one message at a time, so while one is busy the next goes to the other:
    # both take part. How many each takes is not fixed: a worker's first message loads its
    # model, and one whose load is slower may find the queue emptied by the other.
    assert set(by_worker) == {"specq-hosta", "specq-hostb"}
    assert store.count() == 12

    out = subprocess.run([sys.executable, "-m", "specq.cli", "status"], env=producer_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "workers: 2 live" in out.stdout and "bossnet" in out.stdout and "12 rows" in out.stdout
    assert "dead letters: 0" in out.stdout


def test_a_pickled_message_is_refused_and_logged(tmp_path, monkeypatch, start_worker, clean_redis):
    data = tmp_path / "data"
    files = _boss_files(data, 1)
    env = worker_env(tmp_path, data, f"sqlite:///{tmp_path / 'r.sqlite'}", clean_redis)
    worker = start_worker(env, queues="gpu")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    with app.connection_for_write() as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish({"task": "specq.bossnet", "args": [[{"path": files[0]}]]}, routing_key="gpu",
                         exchange="", serializer="pickle",
                         headers={"task": "specq.bossnet", "id": "pickled-0001", "argsrepr": "", "kwargsrepr": ""})
    sub = submit(files, "bossnet", options={"draws": 2}, settings=settings)
    store = ResultStore(settings.database)
    wait_for(lambda: store.count() >= sub.n_spectra, 120, what="the JSON message's row",
             on_fail=lambda: worker.log_text()[-3000:])
    log = worker.log_text()
    assert "pickle" in log.lower() and ("refusing" in log.lower() or "disallowed" in log.lower())
    assert {r["task_id"] for r in store.rows("bossnet")} == set(sub.task_ids["bossnet"])
    assert worker.proc.poll() is None


def test_no_password_in_worker_logs(tmp_path, monkeypatch, start_worker, redis_url):
    import redis

    password = "s3cret-for-test-only"
    port_url = redis_url.rsplit("/", 1)[0]
    client = redis.Redis.from_url(port_url)
    client.execute_command("ACL", "SETUSER", "specqtest", "on", f">{password}", "~*", "&*", "+@all")
    try:
        url = port_url.replace("redis://", f"redis://specqtest:{password}@") + "/14"
        data = tmp_path / "data"
        files = _boss_files(data, 1)
        env = worker_env(tmp_path, data, f"sqlite:///{tmp_path / 'r.sqlite'}", url)
        worker = start_worker(env, queues="gpu")
        app, settings = producer_app(env, monkeypatch)
        from tasks.producer import submit
        from workers.store import ResultStore

        sub = submit(files, "bossnet", options={"draws": 2}, settings=settings)
        store = ResultStore(settings.database)
        wait_for(lambda: store.count() >= sub.n_spectra, 120, what="the row with a password-protected Redis",
                 on_fail=lambda: worker.log_text()[-3000:])
        out = subprocess.run([sys.executable, "-m", "specq.cli", "status"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert password not in worker.log_text()
        assert password not in out.stdout + out.stderr and "***" in out.stdout
    finally:
        client.execute_command("ACL", "DELUSER", "specqtest")
        redis.Redis.from_url(port_url + "/14").flushdb()
