"""Operations through a real worker: metrics, heartbeats in `specq status`, JSON logs, dead letters."""
from __future__ import annotations

import json
import socket
import sqlite3
import urllib.request

import pytest

from conftest import producer_app, wait_for, worker_env

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple, float] | None:
    """Samples of the worker's /metrics as {(name, sorted labels): value}; None while it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)




def test_busy_worker_metrics_status_logs_and_dead_letters(tmp_path, monkeypatch, start_worker, clean_redis, capsys):
    from specq.status import collect, render
    from specq.testing.synthetic import make_dataset
    from tasks.producer import submit
    from workers.store import ResultStore

    root = tmp_path / "data"
    root.mkdir()
    truth = make_dataset(root, n_boss=3, n_apogee=0, seed=5)
    db_path = tmp_path / "results.sqlite"
    port = _free_port()
    env = worker_env(tmp_path, root, f"sqlite:///{db_path}", clean_redis, SPECQ_METRICS_PORT=port,
                     SPECQ_LOG_FORMAT="json")
    worker = start_worker(env, queues="gpu", name="opsw")
    app, settings = producer_app(env, monkeypatch)
    store = ResultStore(settings.database).create()
    up = wait_for(lambda: _scrape(port), 120, what="the worker's metrics server",
                  on_fail=lambda: worker.log_text()[-3000:])
    assert _value(up, "specq_worker_up") == 1 and _value(up, "specq_worker_busy") == 0

    # Hold the result store's write lock: the solo worker's task blocks on it (as on a database
    # outage), busy and unable to answer Celery's ping; its heartbeat still says what it does.
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        files = sorted(set(truth["path"]))
        # A producer records what it sends in the store first, and would wait on this lock
        # too: the worker's side is under test here, so this one message goes unrecorded.
        import tasks.producer

        with monkeypatch.context() as unrecorded:
            unrecorded.setattr(tasks.producer.ledger, "record", lambda *args, **kwargs: None)
            sub = submit(files, "bossnet", options={"draws": 2, "seed": 1}, chunk_size=10, settings=settings)
        (task_id,) = sub.task_ids["bossnet"]

        def busy():
            info = collect(settings, timeout=0.5)
            tasks = [t for h in info.get("heartbeats", []) for t in h["tasks"]]
            return info if any(t["task_id"] == task_id for t in tasks) else None

        info = wait_for(busy, 60, what="the busy worker's heartbeat", on_fail=lambda: worker.log_text()[-3000:])
        assert not (app.control.inspect(timeout=0.5).ping() or {}), "a busy solo worker does not answer ping"
        assert [w for w in info["workers"] if w.startswith("opsw@")], info
        text = render(info)
        assert "workers: 1 live" in text and f"with bossnet task {task_id} (3 references)" in text, text
        assert _value(_scrape(port), "specq_worker_busy") == 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    wait_for(lambda: store.count("bossnet") >= 3, 180, what="3 rows", on_fail=lambda: worker.log_text()[-3000:])
    rows = store.rows("bossnet")

    def task_ended():
        # Rows and counters are written inside the task; the busy gauge and the heartbeat's
        # task list change after it returns (task_postrun): wait for that end, not the rows.
        samples = _scrape(port)
        total = sum(_value(samples, "specq_spectra_total", pipeline="bossnet", outcome=o)
                    for o in ("ok", "flagged", "failed"))
        idle = collect(settings, timeout=0.5)
        ended = (total == len(rows) and _value(samples, "specq_worker_busy") == 0
                 and all(not h["tasks"] for h in idle["heartbeats"]))
        return samples if ended else None

    samples = wait_for(task_ended, 30, what="the task's end (counters, busy gauge, heartbeat)")
    expected = {"ok": sum(not r["error"] and not r["flag_bad"] for r in rows),
                "flagged": sum(not r["error"] and bool(r["flag_bad"]) for r in rows),
                "failed": sum(bool(r["error"]) for r in rows)}
    for outcome, n in expected.items():
        assert _value(samples, "specq_spectra_total", pipeline="bossnet", outcome=outcome) == n, outcome
    assert _value(samples, "specq_queue_wait_seconds_count", pipeline="bossnet") == 1
    # The wait covers the lock held above: at least the time the test spent checking status.
    assert _value(samples, "specq_queue_wait_seconds_sum", pipeline="bossnet") > 0
    for stage in ("read", "predict", "write"):
        assert _value(samples, "specq_stage_seconds_count", pipeline="bossnet", stage=stage) >= 1, stage
    assert _value(samples, "specq_batch_spectra_sum", pipeline="bossnet") == 3
    assert _value(samples, "specq_device_memory_bytes", device="cpu", kind="rss") > 50e6
    assert _value(samples, "specq_worker_busy") == 0
    idle = collect(settings, timeout=0.5)
    assert all(not h["tasks"] for h in idle["heartbeats"]) and "idle" in render(idle)

    # JSON logs: the lines logged inside the task carry its id.
    lines = [json.loads(line) for line in worker.log_text().splitlines() if line.startswith("{")]
    assert any(r.get("task_id") == task_id and r["logger"] == "specq.engine" for r in lines), lines[-5:]

    # A dead letter is listed, requeued as a new message, processed, and marked.
    ref = {"path": rows[0]["path"], "hdu": rows[0]["hdu"], "row": rows[0]["row"]}
    store.dead_letter("dead-1", "bossnet", [ref], "delivered 5 times without finishing", 5)
    from specq.cli import main

    assert main(["dead-letters", "list"]) == 0
    listed = capsys.readouterr().out
    assert "delivered 5 times" in listed and rows[0]["path"] in listed
    (dead,) = store.dead_letter_rows()
    assert main(["dead-letters", "requeue", str(dead["id"])]) == 0
    (dead,) = store.dead_letter_rows()
    assert dead["requeued"] is not None and dead["requeue_task_id"]
    wait_for(lambda: store.count("bossnet", task_ids=[dead["requeue_task_id"]]) == 1, 120,
             what="the requeued message's row", on_fail=lambda: worker.log_text()[-3000:])
    capsys.readouterr()
    assert main(["dead-letters", "requeue", str(dead["id"])]) == 2  # already requeued: --force to resend
    assert "already requeued" in capsys.readouterr().err
    assert main(["status"]) == 0
    assert "dead letters: 0 (1 more requeued)" in capsys.readouterr().out


def test_heartbeat_records_written_from_several_threads_at_once_stay_whole(tmp_path):
    """The heartbeat thread and the task hooks of one worker write its record side by side."""
    import threading

    from tasks.heartbeat import FolderRecords

    records = FolderRecords(tmp_path / "workers")
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def write(thread: int) -> None:
        start.wait()
        try:
            for i in range(200):
                records.write("celery@host", {"worker": "celery@host", "thread": thread, "i": i,
                                              "updated": 1e12})
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [record] = records.read()
    assert record["i"] == 199 and list((tmp_path / "workers").iterdir()) == [tmp_path / "workers" / "celery@host.json"]
