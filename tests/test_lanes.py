"""Two lanes on every device queue: new spectra (ordinary) are served before a reprocessing (bulk).

With real worker processes on the embedded broker, Redis and RabbitMQ (classic and quorum
queues, each test in a virtual host of its own).
"""
from __future__ import annotations

import datetime
import re
import time
from pathlib import Path

import pytest

from conftest import SHARED_REDIS, producer_app, say, wait_for, worker_env

BACKLOG_SPECTRA, PER_MESSAGE = 48, 4  # 12 bulk messages
NEW_SPECTRA = 4  # sent at once, a message each
DRAWS = {"draws": 4}  # light messages: the order is under test, not the arithmetic


_RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                       r"Task \S+\[([0-9a-f-]+)\] received$", re.MULTILINE)


def _received_at(log_text: str) -> dict[str, float]:
    """Task id → when the worker received it (POSIX seconds), from its log."""
    return {task: datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for stamp, task in _RECEIVED.findall(log_text)}


def _boss_files(root: Path, n: int, seed: int = 5) -> list[str]:
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(root, n_boss=n, n_apogee=0, seed=seed, formats=("spec-lite",))
    return sorted(set(truth["path"]))


@pytest.fixture(scope="module")
def backlog_and_new(tmp_path_factory) -> tuple[Path, list[str]]:
    """The data root and files of the overtaking tests, written once: their workers only read them."""
    root = tmp_path_factory.mktemp("lanes") / "data"
    return root, _boss_files(root, BACKLOG_SPECTRA + NEW_SPECTRA)


def _broker(kind: str, request) -> tuple[str | None, dict]:
    if kind == "embedded":
        return None, {}
    if kind == "redis":
        return request.getfixturevalue("clean_redis"), {}
    return request.getfixturevalue("rabbitmq_url"), {"SPECQ_QUEUE_TYPE": "quorum" if kind == "quorum" else "classic"}


@pytest.mark.integration
@pytest.mark.parametrize("broker", ["embedded", SHARED_REDIS, "rabbitmq", "quorum"])
def test_new_spectra_overtake_a_bulk_backlog(tmp_path, monkeypatch, start_worker, broker, request, backlog_and_new):
    """New spectra run back to back ahead of the backlog, not in turns with it (RabbitMQ: the bulk lane's gate)."""
    broker_url, extra = _broker(broker, request)
    root, files = backlog_and_new
    backlog, new = files[:BACKLOG_SPECTRA], files[BACKLOG_SPECTRA:]
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", broker_url, **extra)
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    bulk = submit(backlog, "bossnet", chunk_size=PER_MESSAGE, options=DRAWS, settings=settings, bulk=True)
    assert bulk.n_messages == BACKLOG_SPECTRA // PER_MESSAGE >= 10
    worker = start_worker(env, queues="gpu")
    store = ResultStore(settings.database)
    # Two bulk messages done: the worker is busy with the backlog when the new spectra come.
    wait_for(lambda: store.count() >= 2 * PER_MESSAGE, 240, 0.1, what="the backlog under way",
             on_fail=lambda: worker.log_text()[-3000:])
    done_when_sent = store.count()
    assert submit(new, "bossnet", chunk_size=1, options=DRAWS, settings=settings).n_messages == NEW_SPECTRA
    all_sent = time.time()
    wait_for(lambda: store.count() >= len(files), 600, what="every row", on_fail=lambda: worker.log_text()[-3000:])
    rows = store.rows("bossnet")  # in the order written
    last_new = max(i for i, r in enumerate(rows) if r["path"] in new)
    bulk_between = {r["task_id"] for r in rows[done_when_sent:last_new] if r["path"] not in new}
    # The producer writes each message to the ledger before it publishes it, so the new
    # messages arrive one by one; a worker that finishes one before the next is there
    # rightly serves the bulk lane meanwhile. The rule is for messages that wait: once
    # every new one is in the queue, the worker takes at most one bulk message more.
    received = _received_at(worker.log_text())
    bulk_taken_while_waiting = {t for t in bulk_between if received[t] >= all_sent}
    say(f"[{broker}] bulk messages finished after {NEW_SPECTRA} new spectra were sent and before the last "
        f"one's row: {len(bulk_between)}, of them taken after the last was sent: {len(bulk_taken_while_waiting)}; "
        f"bulk rows after it: {len(rows) - last_new - 1}")
    assert len(bulk_taken_while_waiting) <= 1, "waiting new spectra go before the backlog, not in turns with it"
    assert len(rows) - last_new - 1 >= PER_MESSAGE, "the backlog was still there: the new spectra overtook it"
    assert len({r["spectrum_key"] for r in rows}) == len(rows) == len(files), "exactly one row each"
    assert not any(r["flag_bad"] for r in rows)


@pytest.mark.integration
def test_a_worker_dedicated_to_one_lane(tmp_path, monkeypatch, start_worker, clean_redis):
    root = tmp_path / "data"
    files = _boss_files(root, 2)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", clean_redis)
    app, settings = producer_app(env, monkeypatch)
    from specq.status import queue_depths
    from tasks.producer import submit
    from workers.store import ResultStore

    submit([files[0]], "bossnet", settings=settings, bulk=True)
    submit([files[1]], "bossnet", settings=settings)
    night = start_worker({**env, "SPECQ_LANES": "ordinary"}, queues="gpu")
    store = ResultStore(settings.database)
    wait_for(lambda: store.count() >= 1, 240, what="the ordinary row", on_fail=lambda: night.log_text()[-3000:])
    night.stop()
    assert [r["path"] for r in store.rows("bossnet")] == [files[1]]
    depths = queue_depths(settings)["gpu"]
    assert depths["bulk"]["waiting"] == 1 and depths["ordinary"]["waiting"] == 0
    assert depths["bulk"]["oldest_s"] is not None and depths["bulk"]["oldest_s"] >= 0
    reprocessing = start_worker({**env, "SPECQ_LANES": "bulk"}, queues="gpu")
    wait_for(lambda: store.count() >= 2, 240, what="the bulk row", on_fail=lambda: reprocessing.log_text()[-3000:])
    served = [line.split()[1] for line in reprocessing.log_text().splitlines() if line.strip().startswith(".> ")]
    assert served == ["gpu.bulk"], served  # Celery's banner: the queues the worker consumes


def test_served_queues_put_every_ordinary_lane_first():
    from tasks.lanes import lane_queues, served_queues, split
    from workers.settings import load_settings

    both = load_settings()
    assert served_queues(["gpu", "cpu"], both) == ["gpu", "cpu", "gpu.bulk", "cpu.bulk"]
    assert served_queues(["cpu.bulk", "gpu"], both) == ["gpu", "cpu.bulk", "gpu.bulk"]
    assert served_queues(["gpu"], load_settings(lanes="ordinary")) == ["gpu"]
    every = ["cpu", "gpu", "cpu.bulk", "gpu.bulk"]  # a worker started without -Q
    assert served_queues(every, load_settings(lanes="ordinary")) == ["cpu", "gpu"]
    assert served_queues(["gpu", "cpu"], load_settings(lanes="bulk")) == ["gpu.bulk", "cpu.bulk"]
    assert lane_queues(["gpu"]) == ["gpu", "gpu.bulk"] and split("gpu.bulk") == ("gpu", "bulk")


def test_lane_and_queue_type_settings_refuse_what_they_do_not_know():
    from workers.settings import load_settings

    for bad in ({"lanes": "fast"}, {"lanes": ""}, {"queue_type": "stream"}):
        with pytest.raises(ValueError, match="SPECQ_"):
            load_settings(**bad)
    assert load_settings(lanes="bulk, ordinary").served_lanes == ("ordinary", "bulk")


def test_embedded_broker_asks_ordinary_lanes_first(tmp_path):
    """The embedded channel takes the ordinary message first, whatever came first and whatever was consumed first."""
    from kombu import Connection

    folder = tmp_path / "broker"
    for sub in ("queue", "processed", "control", "inflight"):
        (folder / sub).mkdir(parents=True)
    options = {"data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
               "control_folder": str(folder / "control"), "inflight_folder": str(folder / "inflight")}
    taken = []
    with Connection("filesystem://", transport="tasks.embedded:Transport", transport_options=options) as conn:
        with conn.SimpleQueue("gpu.bulk") as bulk, conn.SimpleQueue("gpu") as ordinary:
            bulk.put("b1")
            bulk.put("b2")
            ordinary.put("o1")
        channel = conn.channel()
        consumer = conn.Consumer([conn.SimpleQueue("gpu.bulk", channel=channel).queue,
                                  conn.SimpleQueue("gpu", channel=channel).queue], channel=channel,
                                 callbacks=[lambda body, message: (taken.append(body), message.ack())])
        with consumer:
            for _ in range(3):
                conn.drain_events(timeout=2)
    assert taken == ["o1", "b1", "b2"]


def test_lane_gauges_read_the_broker(tmp_path, monkeypatch):
    from prometheus_client import CollectorRegistry, generate_latest

    from tasks.app import configure, app
    from tasks.brokers import LaneGauges
    from tasks.producer import send_message
    from workers.settings import load_settings

    settings = load_settings(state_dir=tmp_path / "state")
    configure(app, settings)
    for bulk in (True, True, False):
        send_message("bossnet", [{"path": "a.fits"}], settings=settings, bulk=bulk)
    registry = CollectorRegistry()
    registry.register(LaneGauges(settings, ["gpu", "cpu"]))
    text = generate_latest(registry).decode()
    assert 'specq_lane_messages{lane="bulk",queue="gpu"} 2.0' in text
    assert 'specq_lane_messages{lane="ordinary",queue="gpu"} 1.0' in text
    assert 'specq_lane_oldest_seconds{lane="bulk",queue="gpu"}' in text


@pytest.mark.integration
def test_latency_bench_beside_a_backlog_runs_on_the_embedded_broker(monkeypatch):
    from specq.bench.latency_backlog import render, run_latency_backlog

    for key in ("SPECQ_DATA_ROOT", "SPECQ_DATABASE_URL", "SPECQ_BROKER_URL"):
        monkeypatch.setenv(key, "")  # the bench sets them for its run: restored after the test
    res = run_latency_backlog(n_files=2, rate=4.0, backlog=8, draws=2, broker_url="")
    assert res["backlog"] == 8 and res["files"] == 2 and res["broker"] == "embedded filesystem"
    assert 0 < res["p50_s"] <= res["p99_s"] <= res["max_s"]
    assert 0 <= res["backlog_rows_meanwhile"] <= 8
    assert "land → row p50" in render(res)


def test_reconcile_bulk_sends_the_lost_references_to_the_bulk_lane(tmp_path, monkeypatch):
    """``specq reconcile --bulk``: what a reprocessing lost goes back behind the new spectra; plain, ahead of them."""
    import subprocess
    import sys

    from conftest import ROOT

    env = worker_env(tmp_path, tmp_path / "data", f"sqlite:///{tmp_path / 'r.sqlite'}", SPECQ_BOSSNET_CHUNK_SIZE=2)
    app, settings = producer_app(env, monkeypatch)  # the embedded broker, in the test's state folder
    from specq.status import queue_depths
    from workers import ledger
    from workers.refs import SpectrumRef
    from workers.store import ResultStore

    lost = [SpectrumRef(f"dr19/spec-{i}.fits", 1, 0).to_json() for i in range(3)]
    ledger.record(ResultStore(settings.database).create(), "bossnet", lost, "lost-in-the-broker")

    def reconcile(*flags: str) -> str:
        out = subprocess.run([sys.executable, "-m", "specq.cli", "reconcile", "--older-than", "0", *flags],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    assert "sent again 3 unfinished reference(s) in 2 message(s) (bulk lane)" in reconcile("--bulk")
    gpu = queue_depths(settings)["gpu"]
    assert (gpu["ordinary"]["waiting"], gpu["bulk"]["waiting"]) == (0, 2)
    # Waiting in the bulk lane, however long: not lost, not sent again.
    assert "left alone: 3 unfinished reference(s)" in reconcile()
    from tasks.brokers import purge
    from tasks.lanes import BULK, lane_queue

    assert purge(settings, [lane_queue("gpu", BULK)]) == 2  # lost this time
    assert "(bulk lane)" not in reconcile()
    gpu = queue_depths(settings)["gpu"]
    assert (gpu["ordinary"]["waiting"], gpu["bulk"]["waiting"]) == (2, 0)


class _Queue:
    def __init__(self, name):
        self.name = name


class _TaskConsumer:
    no_ack = False

    def __init__(self, names):
        self.queues = [_Queue(n) for n in names]
        self.consumed: list[str] = []
        self.cancelled: list[str] = []
        self._active_tags = {q.name: f"tag-{q.name}" for q in self.queues}
        self.channel = type("Channel", (), {"callbacks": {}, "cancel_callbacks": {}, "_pending": {},
                                            "basic_cancel": lambda _, tag, nowait: self.cancelled.append(tag)})()

    def consuming_from(self, name):
        return name in {q.name for q in self.queues}

    def _basic_consume(self, queue, no_ack, nowait):
        self.consumed.append(queue.name)


class _Hub:
    def __init__(self):
        self.scheduled = []
        self.ready = []

    def call_soon(self, callback, *args):
        self.ready.append((callback, args))

    def run_ready(self):
        ready, self.ready = self.ready, []
        for callback, args in ready:
            callback(*args)

    def call_later(self, delay, callback):
        self.scheduled.append(callback)
        return type("Entry", (), {"cancel": lambda self: None})()


def _gate_whose_broker_cannot_be_reached(failure):
    from types import SimpleNamespace

    from tasks.lane_gate import BulkGate
    from tasks.lanes import BULK, ORDINARY, lane_queue

    def connection_for_read(**_):
        raise failure

    gate = BulkGate.__new__(BulkGate)
    tc = _TaskConsumer([lane_queue("gpu", ORDINARY), lane_queue("gpu", BULK)])
    app = SimpleNamespace(connection_for_read=connection_for_read)
    connection = SimpleNamespace(connection_errors=(), channel_errors=())
    gate.consumer = SimpleNamespace(task_consumer=tc, hub=_Hub(), app=app, connection=connection)
    gate.task_consumer, gate.connection, gate.entry, gate.cancelled = tc, None, None, []
    gate.closed, gate.closing, gate.idle_since = True, False, 0.0  # idle since long ago
    return gate, tc


def test_the_bulk_gate_opens_when_rabbitmq_cannot_be_asked(caplog):
    from kombu.exceptions import OperationalError

    gate, tc = _gate_whose_broker_cannot_be_reached(OperationalError("connection refused"))
    with caplog.at_level("WARNING", logger="specq.worker"):
        gate._tick()
    assert not gate.closed and tc.consumed == [tc.queues[1].name]
    assert "cannot read the ordinary lanes" in caplog.text


def test_a_reception_closes_the_bulk_gate_at_once():
    """A solo worker runs the message inside the handler: its acknowledgement must refill nothing."""
    gate, tc = _gate_whose_broker_cannot_be_reached(RuntimeError("not asked"))
    gate.closed, gate.closing, gate.idle_since = False, False, None
    gate._on_received(sender=gate.consumer)
    assert tc.cancelled == ["tag-gpu.bulk"] and gate.closed and gate.consumer.hub.ready == []


def test_a_reception_while_kombu_waits_for_a_consume_ok_closes_the_gate_from_the_event_loop():
    """kombu hands over deliveries while it waits for the bulk consumer's consume-ok; a cancel
    sent then crashes the channel in RabbitMQ, so the gate closes once the handler is done."""
    from amqp import spec

    gate, tc = _gate_whose_broker_cannot_be_reached(RuntimeError("not asked"))
    gate.closed, gate.closing, gate.idle_since = False, False, None
    hub = gate.consumer.hub
    tc.channel._pending = {spec.Basic.ConsumeOk: object()}  # as py-amqp's Channel.wait keeps it
    gate._on_received(sender=gate.consumer)
    gate._on_received(sender=gate.consumer)  # a second delivery in the same wait
    assert tc.cancelled == [] and not gate.closed
    hub.run_ready()
    assert tc.cancelled == ["tag-gpu.bulk"] and gate.closed and "gpu.bulk" not in tc._active_tags
    assert len(hub.scheduled) == 1  # it watches for the worker to be idle


def test_a_close_queued_for_a_restarted_consumer_does_nothing():
    from amqp import spec

    gate, tc = _gate_whose_broker_cannot_be_reached(RuntimeError("not asked"))
    gate.closed, gate.closing = False, False
    tc.channel._pending = {spec.Basic.ConsumeOk: object()}
    gate._on_received(sender=gate.consumer)
    gate.task_consumer = _TaskConsumer([q.name for q in tc.queues])  # the connection was lost meanwhile
    gate.consumer.hub.run_ready()
    assert tc.cancelled == [] and gate.task_consumer.cancelled == [] and not gate.closed


def test_a_queued_close_on_a_connection_that_broke_meanwhile_is_dropped(caplog):
    """Celery runs what the loop still holds while it tears down a broken connection."""
    from amqp import spec

    gate, tc = _gate_whose_broker_cannot_be_reached(RuntimeError("not asked"))
    gate.closed, gate.closing = False, False

    def broken(tag, nowait):
        raise ConnectionResetError("connection reset by peer")

    tc.channel.basic_cancel = broken
    tc.channel._pending = {spec.Basic.ConsumeOk: object()}
    gate._on_received(sender=gate.consumer)
    with caplog.at_level("DEBUG", logger="specq.worker"):
        gate.consumer.hub.run_ready()
    assert "not closed, the connection is gone" in caplog.text and not gate.closing


def test_a_bulk_gate_whose_look_fails_unexpectedly_looks_again():
    gate, tc = _gate_whose_broker_cannot_be_reached(RuntimeError("a bug in a library"))
    with pytest.raises(RuntimeError):
        gate._tick()
    # Still closed, but scheduled to look again: the bulk lane is not shut for good.
    assert gate.closed and gate.entry is not None and gate.consumer.hub.scheduled == [gate._tick]
