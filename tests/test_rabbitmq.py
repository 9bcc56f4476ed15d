"""RabbitMQ as a broker beside Redis and the embedded one: status, heartbeats, mistakes, quorum queues.

Each test gets a virtual host of its own (the ``rabbitmq_url`` fixture), removed after; a
machine without RabbitMQ says so and skips these tests only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _rabbitmqctl, producer_app, wait_for, worker_env
from proxy import free_port

pytestmark = pytest.mark.integration


def _specq(*args, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specq.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _boss_file(root) -> list[str]:
    from specq.testing.synthetic import make_dataset

    return sorted(set(make_dataset(root, n_boss=3, n_apogee=0, seed=2, formats=("spec-lite",))["path"]))


def _one_message_gpu_queue(rabbitmq_url: str) -> str:
    """The test's virtual host, whose gpu queue holds one ready message and refuses the next (reject-publish)."""
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    policy = _rabbitmqctl("set_policy", "-p", vhost, "one-message", "^gpu$",
                          '{"max-length": 1, "overflow": "reject-publish"}', "--apply-to", "queues")
    assert policy.returncode == 0, policy.stderr
    return vhost


def test_status_shows_lane_depths_and_live_workers_without_redis(tmp_path, monkeypatch, start_worker, rabbitmq_url):
    root = tmp_path / "data"
    files = _boss_file(root)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url)
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit

    # No -c: Celery would give a solo worker the host's CPU count as its prefetch.
    worker = start_worker({**env, "SPECQ_LANES": "ordinary"}, queues="gpu", name="night", concurrency=None)
    submit(files, "bossnet", chunk_size=1, settings=settings, bulk=True)  # no worker serves the bulk lane
    wait_for(lambda: "ready" in worker.log_text(), 120, what="the worker ready", on_fail=lambda: worker.log_text())

    def status() -> str:
        out = _specq("status", env=env, cwd=tmp_path)
        assert "error" not in out.stdout, out.stdout + out.stderr
        return out.stdout

    text = wait_for(lambda: (lambda t: "workers: 1 live" in t and t)(status()), 60, 1,
                    what="the worker listed as live", on_fail=lambda: worker.log_text()[-3000:])
    lines = text.splitlines()
    assert any(line.split()[:2] == ["queue", "gpu"] and "ordinary" in line and line.split()[-1] == "0"
               for line in lines), text
    assert any(line.split()[:3] == ["bulk", "waiting", "3"] for line in lines), text
    assert "night@" in text and "heartbeat not written" not in worker.log_text()
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    listed = _rabbitmqctl("list_consumers", "-q", "-p", vhost, "queue_name", "prefetch_count").stdout.split()
    prefetch = dict(zip(listed[::2], listed[1::2]))
    assert prefetch.get("gpu") == "1", listed  # a solo worker holds one message at a time
    os.killpg(worker.proc.pid, signal.SIGKILL)
    wait_for(lambda: "workers: 0 live" in status(), 60, 2, what="the killed worker gone from the status")


@pytest.mark.parametrize("case", ["password", "vhost", "unreachable"])
def test_rabbitmq_mistakes_are_one_line(tmp_path, rabbitmq_url, case):
    root = tmp_path / "data"
    files = _boss_file(root)
    good = rabbitmq_url.rsplit("/", 1)[0]
    url = {"password": rabbitmq_url.replace("guest:guest@", "guest:wrong@"),
           "vhost": f"{good}/no-such-vhost",
           "unreachable": f"amqp://guest:guest@127.0.0.1:{free_port()}//"}[case]
    expected = {"password": "refused the user name or password", "vhost": "no virtual host 'no-such-vhost'",
                "unreachable": "cannot reach the broker"}[case]
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", url)
    commands = [["enqueue", files[0]]] + ([["worker", "-Q", "gpu"]] if case != "unreachable" else [])
    for command in commands:
        out = _specq(*command, env=env, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert expected in lines[0] and "guest:wrong" not in lines[0], lines[0]


def test_quorum_queues_are_declared_and_carry_both_lanes(tmp_path, monkeypatch, start_worker, rabbitmq_url):
    root = tmp_path / "data"
    files = _boss_file(root)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url, SPECQ_QUEUE_TYPE="quorum")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    from specq.testing.synthetic import write_spec_lite

    late = "spec-9-60000-9.fits"  # sent before it lands: retried after a countdown (delayed delivery)
    submit(files[:1], "bossnet", settings=settings, bulk=True)
    submit(files[1:] + [{"path": late}], "bossnet", settings=settings)
    worker = start_worker(env, queues="gpu")
    store = ResultStore(settings.database)
    wait_for(lambda: "retry 1" in worker.log_text(), 240, what="the missing file retried",
             on_fail=lambda: worker.log_text()[-3000:])
    write_spec_lite(root / late, teff=5200, logg=4.2, fe_h=-0.1, v_r=5.0, snr=40, seed=9)
    wait_for(lambda: store.count() >= len(files) + 1, 240, what="every row",
             on_fail=lambda: worker.log_text()[-3000:])
    assert not any(r["flag_bad"] for r in store.rows("bossnet")), "the late file read on a retry"
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    listed = _rabbitmqctl("list_queues", "-p", vhost, "name", "type").stdout.split()
    types = dict(zip(listed[::2], listed[1::2]))
    assert types.get("gpu") == "quorum" and types.get("gpu.bulk") == "quorum", listed
    assert len({r["spectrum_key"] for r in store.rows("bossnet")}) == len(files) + 1


def test_worker_heartbeat_kept_in_the_result_store(tmp_path):
    """A broker with no place for small records: heartbeats are rows of the result store, live while fresh."""
    import time

    from tasks.heartbeat import TTL_S, Heartbeat, read_heartbeats
    from workers.settings import load_settings

    settings = load_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//",
                             database_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    beat = Heartbeat(settings, "celery@host", "solo")
    beat.task_started("t1", "bossnet", 4)
    assert [(h["hostname"], h["tasks"][0]["refs"]) for h in read_heartbeats(settings)] == [("celery@host", 4)]
    stale = Heartbeat(settings, "celery@gone", "solo")
    stale.record = lambda: {"hostname": "celery@gone", "pid": 1, "updated": time.time() - 2 * TTL_S, "tasks": []}
    stale.beat()
    assert [h["hostname"] for h in read_heartbeats(settings)] == ["celery@host"], "a stale record is not live"
    beat.stop()
    assert read_heartbeats(settings) == []


def test_a_message_that_keeps_killing_its_worker_is_dead_lettered(tmp_path, monkeypatch, start_worker, rabbitmq_url):
    from pathlib import Path

    root = tmp_path / "data"
    files = _boss_file(root)[:1]
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url,
                     SPECQ_MAX_REDELIVERIES=1, SPECQ_FAULT_KILL=Path(files[0]).name)
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    submit(files, "bossnet", settings=settings, bulk=True)
    store = ResultStore(settings.database)
    kills = 0
    while not store.dead_letter_rows():
        assert kills < 3, "dead-lettered at the third delivery"
        worker = start_worker(env, queues="gpu")
        wait_for(lambda: worker.proc.poll() is not None or store.dead_letter_rows(), 240, 0.2,
                 what="the worker killed by its message, or the message dead-lettered",
                 on_fail=lambda: worker.log_text()[-3000:])
        kills += worker.proc.poll() == -signal.SIGKILL
    (dead,) = store.dead_letter_rows()
    assert kills == 2 and dead["deliveries"] == 3 and dead["pipeline"] == "bossnet"
    wait_for(lambda: store.count() == 1, 60, what="the flagged row")
    (row,) = store.rows("bossnet")
    assert row["flag_bad"] and "dead-lettered" in row["error"]


def test_a_message_rabbitmq_refuses_is_an_error_not_a_silent_loss(tmp_path, rabbitmq_url):
    """A queue at its max-length (reject-publish) nacks the next message: the producer says so."""
    root = tmp_path / "data"
    files = _boss_file(root)
    vhost = _one_message_gpu_queue(rabbitmq_url)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url)
    out = _specq("enqueue", "--pipeline", "bossnet", "--chunk-size", "1", *files, env=env, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr[-3000:]
    assert "refused a message" in lines[0] and "guest:guest" not in lines[0], lines[0]
    listed = _rabbitmqctl("list_queues", "-p", vhost, "name", "messages").stdout.split()
    assert dict(zip(listed[::2], listed[1::2])).get("gpu") == "1", listed  # the first message only
    # The refused message was recorded before it was sent: the ledger knows it unfinished.
    unfinished = _specq("status", "--unfinished", env=env, cwd=tmp_path)
    assert unfinished.returncode == 0, unfinished.stderr[-3000:]
    assert sum(line.startswith("bossnet") for line in unfinished.stdout.splitlines()) == 2, unfinished.stdout


def test_parts_of_an_oversized_message_the_broker_refuses_become_flagged_rows(tmp_path, monkeypatch, start_worker,
                                                                              rabbitmq_url):
    """A worker cuts an oversized message into parts; RabbitMQ refuses those past the queue's
    max-length: their spectra get flagged rows (not a silent loss), the part it took a result."""
    root = tmp_path / "data"
    files = _boss_file(root)
    _one_message_gpu_queue(rabbitmq_url)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url, SPECQ_MAX_MESSAGE_REFS=1)
    app, settings = producer_app(env, monkeypatch)
    from workers.registry import get
    from workers.store import ResultStore

    refs = [{"path": f, "hdu": 1, "row": 0} for f in files]
    assert len(refs) == 3
    store = ResultStore(settings.database)
    worker = start_worker(env, queues="gpu")
    # Sent once the worker consumes, so the one place in the queue is the test's to fill.
    wait_for(lambda: " ready." in worker.log_text(), 60, 0.1, what="the worker to be ready",
             on_fail=lambda: worker.log_text()[-3000:])
    # By hand, as the producer never would: three references where the worker takes one.
    app.send_task(get("bossnet").task_name, args=[refs], kwargs={"options": {"draws": 2}}, queue="gpu",
                  serializer="json")
    wait_for(lambda: store.count() >= 3, 120, 0.2, what="a row for each of the three spectra",
             on_fail=lambda: worker.log_text()[-3000:])
    rows = {r["path"]: r for r in store.rows("bossnet")}
    assert sorted(rows) == sorted(files) and store.count() == 3
    good = [p for p, r in rows.items() if not r["flag_bad"]]
    refused = [p for p, r in rows.items() if r["flag_bad"]]
    assert good == [files[0]]  # the first part went out and was processed
    assert refused == files[1:] and all("broker refused a part" in rows[p]["error"] for p in refused)


def test_a_retry_the_broker_refuses_leaves_flagged_rows_not_a_silent_loss(tmp_path, monkeypatch, start_worker,
                                                                          rabbitmq_url):
    """A message whose file hangs its reader is retried; with the queue full the broker refuses
    the retry, and the spectrum gets a flagged row saying so (it was dropped unconfirmed)."""
    root = tmp_path / "data"
    hanging, waiting = _boss_file(root)[:2]
    vhost = _one_message_gpu_queue(rabbitmq_url)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url,
                     SPECQ_FAULT_HANG_READER=Path(hanging).name, SPECQ_READ_TIMEOUT=10, SPECQ_MAX_RETRIES=3,
                     SPECQ_RETRY_BACKOFF=0.1)
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    worker = start_worker(env, queues="gpu")
    wait_for(lambda: " ready." in worker.log_text(), 60, 0.1, what="the worker to be ready",
             on_fail=lambda: worker.log_text()[-3000:])  # see the oversized-message test
    submit([hanging], "bossnet", settings=settings, options={"draws": 2})

    def ready() -> int:
        listed = _rabbitmqctl("list_queues", "-p", vhost, "name", "messages_ready").stdout.split()
        return int(dict(zip(listed[::2], listed[1::2])).get("gpu", -1))

    wait_for(lambda: ready() == 0 and "] received" in worker.log_text(), 60, 0.2, what="the worker to take it",
             on_fail=lambda: worker.log_text()[-3000:])
    submit([waiting], "bossnet", settings=settings, options={"draws": 2})  # the queue is now full
    store = ResultStore(settings.database)
    wait_for(lambda: store.count() >= 2, 120, 0.2, what="a row for each spectrum",
             on_fail=lambda: worker.log_text()[-3000:])
    rows = {r["path"]: r for r in store.rows("bossnet")}
    assert store.count() == 2 and not rows[waiting]["flag_bad"]
    assert rows[hanging]["flag_bad"] and "the broker refused the retry" in rows[hanging]["error"], rows[hanging]


def test_messages_waiting_when_a_worker_starts_are_each_delivered_once(tmp_path, monkeypatch, start_worker,
                                                                       rabbitmq_url):
    """Both lanes hold messages before the worker starts: the first deliveries arrive while kombu
    waits for the bulk consumer's consume-ok. The bulk gate must not cancel that consumer then
    (RabbitMQ would close the channel and deliver the worker's messages a second time)."""
    import sqlalchemy as sa

    from specq.testing.synthetic import make_dataset

    root = tmp_path / "data"
    files = sorted(set(make_dataset(root, n_boss=24, n_apogee=0, seed=3, formats=("spec-lite",))["path"]))
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url,
                     SPECQ_PLUGINS="workers.null.spec")
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    for i, path in enumerate(files):  # a spectrum a message: many deliveries while the consumers are set up
        submit([path], "null_boss", settings=settings, bulk=bool(i % 2))
    vhost = rabbitmq_url.rsplit("/", 1)[1]

    def held() -> int:
        listed = _rabbitmqctl("list_queues", "-p", vhost, "name", "messages").stdout.split()
        return sum(int(n) for name, n in zip(listed[::2], listed[1::2]) if name in ("null", "null.bulk"))

    assert held() == len(files)
    store = ResultStore(settings.database)
    worker = start_worker(env, queues="null")
    wait_for(lambda: store.count() >= len(files) and held() == 0, 120, 0.2, what="every message processed and acked",
             on_fail=lambda: worker.log_text()[-3000:])
    with store.engine.connect() as conn:
        counts = [n for (n,) in conn.execute(sa.select(store.deliveries.c.count))]
    log = worker.log_text()
    assert len(counts) == len(files) and set(counts) == {1}, (counts, log[-3000:])
    assert "Couldn't ack" not in log and "Connection to broker lost" not in log, log[-3000:]
    assert store.count() == len(files)


def test_a_worker_stopped_by_sigterm_finishes_its_message_and_leaves_the_rest_queued(tmp_path, monkeypatch,
                                                                                     start_worker, rabbitmq_url):
    """The first SIGTERM: the message in hand finishes, the worker's steps stop without an error
    (the bulk gate among them), and the waiting messages stay in their queue for the next worker."""
    root = tmp_path / "data"
    files = _boss_file(root)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url)
    app, settings = producer_app(env, monkeypatch)
    from tasks.producer import submit
    from workers.store import ResultStore

    for path in files:
        submit([path], "bossnet", settings=settings, bulk=True, options={"draws": 2})
    worker = start_worker(env, queues="gpu")
    wait_for(lambda: "] received" in worker.log_text(), 60, 0.05, what="the first message taken",
             on_fail=lambda: worker.log_text()[-3000:])
    worker.stop(signal.SIGTERM, timeout=60)
    log = worker.log_text()
    assert worker.proc.returncode == 0, log[-3000:]
    assert "Error on stopping" not in log and "Traceback" not in log, log[-3000:]
    store = ResultStore(settings.database)
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    listed = _rabbitmqctl("list_queues", "-p", vhost, "name", "messages").stdout.split()
    waiting = int(dict(zip(listed[::2], listed[1::2]))["gpu.bulk"])
    assert log.count("succeeded in") == store.count() == 1, log[-3000:]
    assert waiting == len(files) - 1, (listed, log[-3000:])


def _declare_by_hand(rabbitmq_url: str, queue: str, arguments: dict) -> None:
    """Declare ``queue`` in the test's virtual host as an older specq or an operator might have."""
    from kombu import Connection

    with Connection(rabbitmq_url) as connection:
        connection.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False, arguments=arguments)


@pytest.mark.parametrize("case", ["priority", "quorum"])
def test_a_lane_queue_declared_with_other_arguments_is_one_line(tmp_path, rabbitmq_url, case):
    """RabbitMQ refuses to declare a queue again with other arguments (PRECONDITION_FAILED): the
    producers and the worker say which queue and what to do in one line, and exit 2 (a watcher
    would otherwise retry every file for ever)."""
    root = tmp_path / "data"
    files = _boss_file(root)
    arguments, setting = {"priority": ({"x-max-priority": 10}, {}),
                          "quorum": ({"x-queue-type": "quorum"}, {"SPECQ_QUEUE_TYPE": "classic"})}[case]
    _declare_by_hand(rabbitmq_url, "gpu", arguments)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url, **setting)
    for command in (["enqueue", files[0]], ["worker", "-Q", "gpu"], ["watch", "--pipeline", "bossnet", str(root)]):
        out = _specq(*command, env=env, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "queue 'gpu'" in lines[0] and next(iter(arguments)) in lines[0], lines[0]
        assert "delete_queue" in lines[0] and "guest:guest" not in lines[0], lines[0]


def test_an_exchange_declared_otherwise_is_one_line_that_names_it(tmp_path, rabbitmq_url):
    from kombu import Connection

    root = tmp_path / "data"
    files = _boss_file(root)
    with Connection(rabbitmq_url) as connection:  # specq's exchange, made a fanout by someone else
        connection.default_channel.exchange_declare(exchange="cpu", type="fanout", durable=True, auto_delete=False)
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url)
    out = _specq("enqueue", files[0], env=env, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "exchange 'cpu'" in lines[0] and "delete exchange name=cpu" in lines[0] and "'?'" not in lines[0], lines[0]


def test_permissions_refused_in_the_vhost_are_one_line_that_names_them(tmp_path, rabbitmq_url):
    """A user who may not configure (declare) in the virtual host: not a wrong password, one line."""
    root = tmp_path / "data"
    files = _boss_file(root)
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    done = _rabbitmqctl("set_permissions", "-p", vhost, "guest", "", ".*", ".*")
    assert done.returncode == 0, done.stderr
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url)
    for command in (["enqueue", files[0]], ["worker", "-Q", "gpu"], ["watch", "--pipeline", "bossnet", str(root)]):
        out = _specq(*command, env=env, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "user name or password" not in lines[0] and "set_permissions" in lines[0], lines[0]


def test_a_worker_celery_stops_on_an_unrecoverable_error_exits_non_zero(tmp_path, rabbitmq_url):
    """A worker whose consumer cannot start (here: it may declare its queues, not Celery's own exchanges)
    stops; its exit status says it failed, so a supervisor (systemd Restart=on-failure) sees it."""
    root = tmp_path / "data"
    _boss_file(root)
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    done = _rabbitmqctl("set_permissions", "-p", vhost, "guest", r"^(gpu|gpu\.bulk|cpu)$", ".*", ".*")
    assert done.returncode == 0, done.stderr
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", rabbitmq_url)
    out = _specq("worker", "-Q", "gpu", env=env, cwd=tmp_path)
    assert "ACCESS_REFUSED" in out.stderr, out.stderr[-3000:]
    assert out.returncode != 0, out.stderr[-3000:]
