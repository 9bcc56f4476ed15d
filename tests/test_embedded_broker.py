"""The embedded broker keeps a message until it is acknowledged, across a killed consumer.

Fast tests through kombu directly (no Celery worker); the end-to-end kill -9 test with a
real worker is in test_crash.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from kombu import Connection, Exchange, Queue

from conftest import ROOT, wait_for

QUEUE = Queue("gpu", Exchange("gpu"), routing_key="gpu")


def _connection(folder: Path) -> Connection:
    from tasks.app import configure
    from workers.settings import load_settings
    from celery import Celery

    app = configure(Celery("t"), load_settings(state_dir=folder))
    return app.connection_for_write()


def _publish(conn: Connection, *bodies) -> None:
    with conn.Producer() as producer:
        for body in bodies:
            producer.publish(body, exchange=QUEUE.exchange, routing_key="gpu", declare=[QUEUE], serializer="json")


def _files(folder: Path, sub: str) -> list[Path]:
    return sorted(p for p in (folder / "broker" / sub).rglob("*.msg"))


def test_message_stays_in_flight_until_acknowledged(tmp_path):
    with _connection(tmp_path) as conn:
        _publish(conn, {"n": 1}, {"n": 2})
        queue = QUEUE(conn.default_channel)
        first = queue.get(no_ack=False)
        assert first.payload == {"n": 1}
        assert len(_files(tmp_path, "queue")) == 1 and len(_files(tmp_path, "inflight")) == 1
        first.ack()
        assert not _files(tmp_path, "inflight")
        second = queue.get(no_ack=False)
        second.reject(requeue=True)  # back to the queue, in its place
        assert len(_files(tmp_path, "queue")) == 1 and not _files(tmp_path, "inflight")
        again = queue.get(no_ack=False)
        assert again.payload == {"n": 2}
        again.reject(requeue=False)
        assert not _files(tmp_path, "queue") and not _files(tmp_path, "inflight")


def test_unacknowledged_message_goes_back_at_a_clean_close(tmp_path):
    with _connection(tmp_path) as conn:
        _publish(conn, {"n": 1})
        assert QUEUE(conn.default_channel).get(no_ack=False).payload == {"n": 1}
        assert len(_files(tmp_path, "inflight")) == 1
    assert len(_files(tmp_path, "queue")) == 1 and not list((tmp_path / "broker" / "inflight").iterdir())


CONSUMER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from celery import Celery
    from kombu import Exchange, Queue
    from tasks.app import configure
    from workers.settings import load_settings

    app = configure(Celery("t"), load_settings(state_dir=Path(sys.argv[1])))
    with app.connection_for_write() as conn:
        message = Queue("gpu", Exchange("gpu"), routing_key="gpu")(conn.default_channel).get(no_ack=False)
        print(message.payload["n"], flush=True)
        time.sleep(600)  # killed here, message unacknowledged
""")


def test_messages_of_a_killed_consumer_return_to_the_queue(tmp_path):
    with _connection(tmp_path) as conn:
        _publish(conn, {"n": 1}, {"n": 2})
    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, str(tmp_path), str(ROOT)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert consumer.stdout.readline().strip() == "1"
        with _connection(tmp_path) as conn:
            queue = QUEUE(conn.default_channel)
            # While its consumer lives, the taken message is not handed out again.
            second = queue.get(no_ack=False)
            assert second.payload == {"n": 2}
            second.ack()
            assert queue.get(no_ack=False) is None
            os.kill(consumer.pid, signal.SIGKILL)
            consumer.wait()
            # A new consumer (a restarted worker) sweeps at its first poll.
        with _connection(tmp_path) as conn:
            restored = wait_for(lambda: QUEUE(conn.default_channel).get(no_ack=False), 5, 0.1,
                                what="the killed consumer's message")
            assert restored.payload == {"n": 1}
            restored.ack()
        assert not _files(tmp_path, "queue") and not _files(tmp_path, "inflight")
    finally:
        consumer.kill()
        consumer.wait()


def test_a_half_written_or_foreign_file_is_set_aside_not_lost(tmp_path):
    with _connection(tmp_path) as conn:
        _publish(conn, {"n": 1})  # the first channel makes the broker's folders
        (tmp_path / "broker" / "queue" / "0_x.gpu.msg").write_text("{not json")
        queue = QUEUE(conn.default_channel)
        message = queue.get(no_ack=False)
        assert message.payload == {"n": 1}
        message.ack()
        assert queue.get(no_ack=False) is None
    assert [p.name for p in (tmp_path / "broker" / "unreadable").iterdir()] == ["0_x.gpu.msg"]


def test_no_ack_consumers_keep_nothing_in_flight(tmp_path):
    with _connection(tmp_path) as conn:
        _publish(conn, {"n": 1})
        assert QUEUE(conn.default_channel).get(no_ack=True).payload == {"n": 1}
        assert not _files(tmp_path, "inflight")


def test_status_counts_waiting_and_in_flight_messages(tmp_path):
    from specq.status import queue_depths
    from workers.settings import load_settings

    settings = load_settings(state_dir=tmp_path)
    assert queue_depths(settings)["gpu"]["ordinary"]["waiting"] == 0 and not (tmp_path / "broker").exists()
    with _connection(tmp_path) as conn:
        _publish(conn, {"n": 1}, {"n": 2}, {"n": 3})
        taken = QUEUE(conn.default_channel).get(no_ack=False)
        depths = {q: lanes["ordinary"] for q, lanes in queue_depths(settings).items()}
        assert depths["gpu"]["waiting"] == 2 and depths["gpu"]["in_flight"] == 1
        assert depths["gpu"]["oldest_s"] >= 0 and depths["cpu"] == {"waiting": 0, "oldest_s": None, "in_flight": 0}
        taken.ack()


def test_status_counts_redis_messages_through_its_transport(clean_redis):
    from specq.status import queue_depths
    from workers.settings import load_settings

    settings = load_settings(broker_url=clean_redis)
    assert [d["ordinary"]["waiting"] for d in queue_depths(settings).values()] == [0, 0]
    with Connection(clean_redis) as conn:
        _publish(conn, {"n": 1}, {"n": 2})
    depths = {q: lanes["ordinary"] for q, lanes in queue_depths(settings).items()}
    assert depths["gpu"]["waiting"] == 2 and depths["cpu"]["waiting"] == 0


def test_an_idle_consumer_lists_the_queue_often(tmp_path):
    # kombu's filesystem transport sleeps 1 s between empty polls: a message sent to an
    # idle worker would wait up to that long.
    from tasks.embedded import POLL_INTERVAL_S

    with _connection(tmp_path) as conn:
        conn.connect()
        assert conn.transport.polling_interval == POLL_INTERVAL_S <= 0.1


def test_a_message_is_on_disk_before_the_producer_is_told_it_was_sent(tmp_path, monkeypatch):
    """The message file is flushed before its rename into the queue, the queue folder after it."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def recorded_replace(source, target, **kw):
        events.append(("replace", str(target)))
        return replace(source, target, **kw)

    with _connection(tmp_path) as conn:
        conn.default_channel  # the broker's folders are made before anything is recorded
        monkeypatch.setattr(os, "fsync", recorded_fsync)
        monkeypatch.setattr(os, "replace", recorded_replace)
        _publish(conn, {"n": 1})
    monkeypatch.undo()
    (message,) = _files(tmp_path, "queue")
    queue_folder = str(message.parent)
    steps = [(kind, Path(path).parent.name if kind == "fsync" and path != queue_folder else path)
             for kind, path in events]
    assert steps == [("fsync", "queue"), ("replace", str(message)), ("fsync", queue_folder)], events
    assert Path(events[0][1]).name.startswith("."), "the flushed file is the hidden one, before its rename"
