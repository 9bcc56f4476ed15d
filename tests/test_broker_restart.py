"""A broker that restarts: the deploy's Redis keeps every queued message; one without AOF
loses them, `specq status` says so and names them, and `specq reconcile` brings every
spectrum to exactly one row. Each test starts its own ``redis-server`` (never the shared one).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, producer_app, wait_for, worker_env
from proxy import free_port

pytestmark = pytest.mark.integration

N_SPECTRA = 8


class RedisServer:
    """A ``redis-server`` of the test's own: its port, its folder, its options; kill -9 and restart it."""

    def __init__(self, folder: Path, *options: str):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is needed on PATH (`.ci/run` installs it)")
        self.folder, self.options, self.port = folder, options, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import redis

        # Options after the config file override it: our port and folder, loopback only.
        cmd = ["redis-server", *self.options, "--port", str(self.port), "--dir", str(self.folder),
               "--bind", "127.0.0.1", "--protected-mode", "no", "--daemonize", "no"]
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def ready():
            try:
                # Loading the AOF answers LOADING errors until done: ready means a real answer.
                return client.ping() and client.info("persistence").get("loading") == 0
            except redis.exceptions.RedisError:
                return False

        wait_for(ready, 30, 0.1, what="redis-server to answer", on_fail=self.log)
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()


@pytest.fixture
def redis_server(tmp_path):
    started: list[RedisServer] = []

    def start(*options: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", *options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _files(root: Path) -> list[str]:
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(root, n_boss=N_SPECTRA, n_apogee=0, seed=21, formats=("spec-lite",))
    return sorted(set(truth["path"]))


def _specq(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specq.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _queued(url: str) -> int:
    import redis

    return redis.Redis.from_url(url).llen("gpu")


def _deploy_conf(folder: Path) -> Path:
    """deploy/redis.conf as it is, but for its data folder (``dir /data``, the container's volume)."""
    text = (ROOT / "deploy" / "redis.conf").read_text()
    assert "\nappendonly yes" in text and "\nappendfsync everysec" in text and "maxmemory-policy noeviction" in text
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "redis.conf"
    conf.write_text("\n".join(f"dir {folder}" if line.startswith("dir ") else line for line in text.splitlines()))
    return conf


def test_the_deploy_redis_conf_keeps_queued_messages_through_kill_9(tmp_path, monkeypatch, redis_server):
    server = redis_server(str(_deploy_conf(tmp_path / "conf")))
    root = tmp_path / "data"
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", server.url)
    _, settings = producer_app(env, monkeypatch)
    from tasks.brokers import persistence_warnings
    from tasks.producer import submit

    assert persistence_warnings(settings) == []  # AOF on, noeviction: nothing to warn of
    sub = submit(_files(root), "bossnet", chunk_size=1, settings=settings)
    assert sub.n_messages == N_SPECTRA and _queued(server.url) == N_SPECTRA
    server.kill9()  # no shutdown, no final save: only the AOF written so far
    server.start()
    assert _queued(server.url) == N_SPECTRA, server.log()


def test_without_aof_status_names_the_lost_references_and_reconcile_brings_each_to_one_row(
        tmp_path, monkeypatch, redis_server, start_worker, postgres_schema_url):
    server = redis_server("--appendonly", "no", "--save", "")  # Debian's packaged default, persistence-wise
    root = tmp_path / "data"
    env = worker_env(tmp_path, root, postgres_schema_url, server.url)
    _, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    status = _specq(env, "status")
    assert "WARNING: the broker Redis has no append-only file" in status.stdout, status.stdout + status.stderr
    sub = submit(_files(root), "bossnet", chunk_size=3, settings=settings)
    keys = sorted(r.key for r in sub.refs["bossnet"])
    assert len(keys) == N_SPECTRA and _queued(server.url) == sub.n_messages
    server.kill9()
    server.start()
    assert _queued(server.url) == 0  # every message lost, and the broker says nothing of it

    status = _specq(env, "status")
    assert f"sent, not finished: {N_SPECTRA}" in status.stdout, status.stdout + status.stderr
    listed = _specq(env, "status", "--unfinished")
    assert listed.returncode == 0 and all(k in listed.stdout for k in keys), listed.stdout
    worker = start_worker(env, queues="gpu")
    again = _specq(env, "reconcile", "--older-than", "0")
    assert again.returncode == 0 and f"sent again {N_SPECTRA} unfinished" in again.stdout, again.stderr
    store = ResultStore(postgres_schema_url)
    wait_for(lambda: store.count("bossnet") >= N_SPECTRA, 240, what="a row for every reference sent again",
             on_fail=lambda: worker.log_text()[-3000:])
    rows = store.rows("bossnet")
    assert sorted(r["spectrum_key"] for r in rows) == keys  # exactly one row each
    assert "sent, not finished: 0" in _specq(env, "status").stdout
    assert "the broker Redis has no append-only file" in worker.log_text()  # said at start-up too


def test_embedded_broker_lost_messages_are_sent_again(tmp_path, monkeypatch, start_worker):
    root = tmp_path / "data"
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}")
    _, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    sub = submit(_files(root), "bossnet", chunk_size=4, settings=settings)
    queue = settings.broker_folder / "queue"
    lost = sorted(queue.glob("*.gpu.msg"))
    assert len(lost) == sub.n_messages
    for path in lost:  # the broker's folder lost them (a disk restored from backup, a purge)
        os.unlink(path)
    listed = _specq(env, "status", "--unfinished")
    assert all(r.key in listed.stdout for r in sub.refs["bossnet"]), listed.stdout
    dry = _specq(env, "reconcile", "--older-than", "0s", "--dry-run")
    assert f"would send again {N_SPECTRA}" in dry.stdout and not list(queue.glob("*.gpu.msg"))
    assert "sent again" in _specq(env, "reconcile", "--older-than", "0").stdout
    worker = start_worker(env, queues="gpu")
    store = ResultStore(settings.database)
    wait_for(lambda: store.count("bossnet") >= N_SPECTRA, 240, what="a row for every reference sent again",
             on_fail=lambda: worker.log_text()[-3000:])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "sent, not finished: 0" not in _specq(env, "status").stdout:
        time.sleep(0.5)
    assert sorted(r["spectrum_key"] for r in store.rows("bossnet")) == sorted(r.key for r in sub.refs["bossnet"])
    assert "sent, not finished: 0" in _specq(env, "status").stdout


@pytest.mark.parametrize("transport", ["tasks.brokers:RedisTransport", "redis"])
def test_a_message_taken_as_redis_dies_goes_back_to_its_queue(monkeypatch, redis_server, transport):
    """Redis killed after BRPOP took a message and before the worker recorded it as held.

    The message is then in neither the queue nor the ``unacked`` hash: kombu's own transport
    loses it, specq's puts it back when the worker connects again.
    """
    import redis
    from kombu import Connection, Consumer, Exchange, Producer, Queue
    from kombu.transport import redis as kombu_redis

    server = redis_server("--appendonly", "yes", "--appendfsync", "always", "--save", "")
    queue = Queue("window", Exchange("window", type="direct"), routing_key="window")
    with Connection(server.url, transport=transport) as conn:
        Producer(conn).publish({"spectrum": 7}, exchange=queue.exchange, routing_key="window", declare=[queue],
                               serializer="json", delivery_mode=2)

    recording = kombu_redis.QoS.append

    def dies_before_recording(qos, message, delivery_tag):
        server.kill9()  # BRPOP's answer is in the worker, the AOF holds the queue without it
        return recording(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", dies_before_recording)
    worker = Connection(server.url, transport=transport, transport_options={"visibility_timeout": 60})
    received: list[dict] = []
    Consumer(worker, [queue], callbacks=[lambda body, message: received.append(body)], accept=["json"]).consume()
    with pytest.raises(worker.connection_errors):
        worker.drain_events(timeout=10)
    worker.release()
    monkeypatch.setattr(kombu_redis.QoS, "append", recording)

    server.start()  # replays the AOF
    client = redis.Redis.from_url(server.url)
    assert client.llen("window") == 0 and client.hlen("unacked") == 0, "the message is in neither place"
    assert not received

    with Connection(server.url, transport=transport, transport_options={"visibility_timeout": 60}) as again:
        Consumer(again, [queue], callbacks=[lambda body, message: (received.append(body), message.ack())],
                 accept=["json"]).consume()
        try:
            again.drain_events(timeout=2)
        except TimeoutError:
            pass
    if transport == "redis":
        assert received == [], "kombu's own transport is expected to lose it"
    else:
        assert received == [{"spectrum": 7}]
        assert client.llen("window") == 0 and client.hlen("unacked") == 0


def test_a_message_redis_refuses_to_record_goes_back_when_it_takes_writes_again(monkeypatch, redis_server):
    """Redis refuses the record of a taken message (out of memory): it goes back at the next one recorded."""
    import redis
    from kombu import Connection, Consumer, Exchange, Producer, Queue
    from kombu.transport import redis as kombu_redis

    server = redis_server("--save", "")
    queue = Queue("refused", Exchange("refused", type="direct"), routing_key="refused")
    received: list[int] = []
    recording = kombu_redis.QoS.append
    refusals = [redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")]

    def refused_once(qos, message, delivery_tag):
        if refusals:
            raise refusals.pop()
        return recording(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", refused_once)
    with Connection(server.url, transport="tasks.brokers:RedisTransport",
                    transport_options={"visibility_timeout": 60}) as conn:
        Producer(conn).publish({"n": 1}, exchange=queue.exchange, routing_key="refused", declare=[queue],
                               serializer="json")
        Producer(conn).publish({"n": 2}, exchange=queue.exchange, routing_key="refused", serializer="json")
        Consumer(conn, [queue], callbacks=[lambda body, message: (received.append(body["n"]), message.ack())],
                 accept=["json"]).consume()
        with pytest.raises(redis.ResponseError):
            conn.drain_events(timeout=5)  # message 1 taken, its record refused
        assert redis.Redis.from_url(server.url).llen("refused") == 1
        for _ in range(2):  # message 2 recorded, message 1 back at the head, then taken again
            conn.drain_events(timeout=5)
    assert sorted(received) == [1, 2]
    client = redis.Redis.from_url(server.url)
    assert client.llen("refused") == 0 and client.hlen("unacked") == 0
