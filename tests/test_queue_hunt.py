"""The queue side under failures: a message whose rows cannot be written is never dropped.

Fast tests call the task body directly with a real Celery task (its own ``retry``); the
integration test runs a real worker on the embedded broker against a PostgreSQL that
goes away.
"""
from __future__ import annotations

import signal
import time

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.exceptions import Reject

from conftest import producer_app, wait_for, worker_env
from proxy import TcpProxy
from tasks import runner
from workers import engine
from workers.settings import load_settings
from workers.store import ResultStore

MAX_RETRIES = 2


def _store_away(*args, **kwargs):
    raise sa.exc.OperationalError("select 1", {}, ConnectionRefusedError("connection refused"))


def _task(settings, retries: int):
    """A bound Celery task in the middle of attempt ``retries`` (its ``retry`` is Celery's own)."""
    app = Celery("hunt")
    app.specq_settings = settings

    @app.task(bind=True, name="hunt.task")
    def task(self):  # pragma: no cover - never run, only its request and retry are used
        return None

    task.push_request(id="task-1", retries=retries, hostname="test@host", called_directly=False, delivery_info={})
    return task


@pytest.fixture
def settings(tmp_path, monkeypatch):
    # The store's patience is tested elsewhere: here it gives up at once.
    monkeypatch.setattr(runner, "STORE_RETRY_S", 0.0)
    return load_settings(data_root=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                         max_retries=MAX_RETRIES)


REFS = [{"path": "a.fits", "hdu": 1, "row": 0}]


def test_a_store_away_when_the_last_attempt_starts_hands_the_message_back(settings, monkeypatch):
    """No retry left and the delivery cannot be counted: acknowledging would leave no row."""
    monkeypatch.setattr(ResultStore, "count_delivery", _store_away)
    with pytest.raises(Reject) as caught:
        runner.run_task(_task(settings, MAX_RETRIES), "bossnet", REFS, {})
    assert caught.value.requeue is True


def test_flagged_rows_the_store_cannot_take_on_the_last_attempt_hand_the_message_back(settings, monkeypatch):
    def unreadable(*args, **kwargs):
        raise OSError("the data mount went away")

    monkeypatch.setattr(engine, "get_pipeline", lambda name, settings: engine.unloaded_pipeline(name))
    monkeypatch.setattr(engine, "process", unreadable)
    monkeypatch.setattr(ResultStore, "write", _store_away)
    with pytest.raises(Reject) as caught:
        runner.run_task(_task(settings, MAX_RETRIES), "bossnet", REFS, {})
    assert caught.value.requeue is True


def test_a_model_that_cannot_load_with_the_store_away_hands_the_message_back(settings, monkeypatch):
    from workers.weights.formats import WeightsError

    def corrupt(name, settings):
        raise WeightsError("not a state dict")

    monkeypatch.setattr(engine, "get_pipeline", corrupt)
    monkeypatch.setattr(ResultStore, "write", _store_away)
    with pytest.raises(Reject) as caught:
        runner.run_task(_task(settings, 0), "bossnet", REFS, {})
    assert caught.value.requeue is True


@pytest.mark.integration
def test_a_store_outage_past_the_last_attempt_still_ends_in_a_row(tmp_path, monkeypatch, start_worker,
                                                                   postgres_schema_url):
    """A worker on the embedded broker with no retry to spend meets a PostgreSQL that is away
    longer than it waits: the message goes back to the queue, and the row comes once it is back."""
    from specq.testing.synthetic import make_dataset

    proxy = TcpProxy("127.0.0.1", 5432).start()
    proxied = postgres_schema_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    root = tmp_path / "data"
    truth = make_dataset(root, n_boss=1, n_apogee=0, seed=1, formats=("spec-lite",))
    env = worker_env(tmp_path, root, proxied, SPECQ_MAX_RETRIES=0)
    worker = start_worker(env, queues="gpu")
    app, settings = producer_app(env, monkeypatch)
    settings.database_url = postgres_schema_url  # the producer's ledger goes past the proxy
    from tasks.producer import submit

    store = ResultStore(postgres_schema_url)
    try:
        wait_for(lambda: "ready" in worker.log_text(), 120, what="the worker ready",
                 on_fail=lambda: worker.log_text()[-3000:])
        proxy.cut()
        sub = submit(sorted(set(truth["path"])), "bossnet", options={"draws": 2}, settings=settings)
        # The worker waits out the store (90 s), then has no retry left.
        wait_for(lambda: "the message goes back to its queue" in worker.log_text(), 200, 0.5,
                 what="the message handed back", on_fail=lambda: worker.log_text()[-4000:])
        proxy.resume()
        wait_for(lambda: store.count() >= sub.n_spectra, 240, 0.5, what="the row once the store is back",
                 on_fail=lambda: worker.log_text()[-4000:])
        assert store.count() == sub.n_spectra == 1
    finally:
        worker.stop(signal.SIGKILL)
        proxy.stop()
        store.engine.dispose()


@pytest.mark.parametrize("move", ["taken", "handed back"])
def test_reconcile_leaves_alone_a_message_that_moves_while_the_broker_is_read(tmp_path, monkeypatch, move):
    """The embedded broker's messages move between the queue and the in-flight folders while
    reconcile reads them (a worker takes one, or hands one back): still held, not sent again."""
    from tasks import brokers
    from tasks.app import configure
    from tasks.embedded import INFLIGHT, QUEUE
    from tasks.producer import submit
    from tasks.reconcile import reconcile
    from workers.refs import SpectrumRef

    env = worker_env(tmp_path, tmp_path / "data", f"sqlite:///{tmp_path / 'r.sqlite'}")
    _, settings = producer_app(env, monkeypatch)
    submit([SpectrumRef("e/spec-1.fits", 1, 0).to_json()], "bossnet", settings=settings)
    worker = configure(Celery("worker"), settings).connection_for_write()
    gpu = worker.default_channel  # a consumer of the same broker folder: a worker
    held = []
    if move == "handed back":
        held.append(gpu.basic_get("gpu", no_ack=False))
    read = brokers._file_task_id
    watched = QUEUE if move == "taken" else INFLIGHT

    def read_while_it_moves(path):
        # The first read of a message where it was listed: the worker moves it just before.
        if not held or (move == "handed back" and len(held) == 1):
            if path.parent.name == watched or path.parent.parent.name == watched:
                if move == "taken":
                    held.append(gpu.basic_get("gpu", no_ack=False))
                else:
                    held[0].reject(requeue=True)
                    held.append(None)
        return read(path)

    monkeypatch.setattr(brokers, "_file_task_id", read_while_it_moves)
    sent = []

    def send(pipeline, payload, options, settings=None, bulk=False):
        sent.append(payload)
        return "again"

    done = reconcile(ResultStore(settings.database), settings, 0, send=send)
    assert held and held[0] is not None, "the message moved during the read"
    assert sent == [] and done.still_held == 1, (sent, done.lines())
    worker.release()
