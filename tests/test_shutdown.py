"""A worker being stopped is not a bad spectrum: no split, no flagged row, the message requeued.

Fast unit tests of the engine and the task body (the tiny pipeline and fake task of
test_giveup); tests/test_interrupts.py does the same with real signals and processes.
"""
from __future__ import annotations

import celery.worker.state
import pytest
from celery.exceptions import Reject, WorkerTerminate

from test_giveup import REFS, FakeTask, TinyPipeline, _rows, settings  # noqa: F401 (settings: a fixture)
from workers.refs import SpectrumRef
from tasks import runner
from workers import engine
from workers.interrupt import is_shutdown

KILL_JOB = "TaskPool does not implement kill_job"


@pytest.fixture
def cold_shutdown(monkeypatch):
    """The worker's flag as Celery's cold-shutdown signal handler sets it."""
    monkeypatch.setattr(celery.worker.state, "should_terminate", 1)


def _spectra(settings, n):
    jobs = [j for ref in REFS + [{"path": "c.fits", "hdu": 1, "row": 0}]
            for j in engine.read_jobs(SpectrumRef.from_json(ref), settings.data_root, "boss")]
    return [j.spectrum for j in jobs][:n]


def test_shutdown_exceptions_are_told_from_spectrum_errors(monkeypatch):
    from billiard.exceptions import WorkerLostError

    for exc in (KeyboardInterrupt(), SystemExit(1), WorkerTerminate(1), WorkerLostError("lost")):
        assert is_shutdown(exc), exc
    assert not is_shutdown(NotImplementedError(KILL_JOB)) and not is_shutdown(ValueError("bad flux"))
    monkeypatch.setattr(celery.worker.state, "should_terminate", 1)
    assert is_shutdown(NotImplementedError(KILL_JOB)) and is_shutdown(ValueError("anything"))


def test_predict_isolating_does_not_split_a_batch_on_shutdown(settings, cold_shutdown):
    pipeline = TinyPipeline(oom_on={"a.fits"}, oom=lambda: NotImplementedError(KILL_JOB))
    with pytest.raises(NotImplementedError):
        engine.predict_isolating(pipeline, _spectra(settings, 3))
    assert pipeline.calls == [3]  # one try, no halves, no flagged row


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_predict_isolating_lets_interrupts_through(settings, kind):
    pipeline = TinyPipeline(oom_on={"b.fits"}, oom=kind)
    with pytest.raises(kind):
        engine.predict_isolating(pipeline, _spectra(settings, 3))
    assert pipeline.calls == [3]


def test_the_same_error_outside_a_shutdown_still_flags_only_its_spectrum(settings):
    pipeline = TinyPipeline(oom_on={"a.fits"}, oom=lambda: NotImplementedError("a real bug"))
    rows = engine.predict_isolating(pipeline, _spectra(settings, 3))
    assert [r["result_flags"] & 1 for r in rows] == [1, 0, 0] and "a real bug" in rows[0]["error"]


def test_run_task_requeues_and_writes_nothing_on_a_cold_shutdown(settings, monkeypatch, cold_shutdown):
    pipeline = TinyPipeline(oom_on={"a.fits"}, oom=lambda: NotImplementedError(KILL_JOB))
    monkeypatch.setattr(engine, "get_pipeline", lambda *a, **k: pipeline)
    task = FakeTask(settings)
    with pytest.raises(Reject) as caught:
        runner.run_task(task, "bossnet", REFS, {})
    assert caught.value.requeue and not task.retried
    assert _rows(settings) == {}


def test_run_task_does_not_flag_the_spectra_when_loading_is_interrupted(settings, monkeypatch, cold_shutdown):
    def interrupted_load(*args, **kwargs):
        raise NotImplementedError(KILL_JOB)

    monkeypatch.setattr(engine, "get_pipeline", interrupted_load)
    with pytest.raises(Reject):
        runner.run_task(FakeTask(settings), "bossnet", REFS, {})
    assert _rows(settings) == {}


def test_run_task_lets_a_keyboard_interrupt_through_without_rows(settings, monkeypatch):
    pipeline = TinyPipeline(oom_on={"b.fits"}, oom=KeyboardInterrupt)
    monkeypatch.setattr(engine, "get_pipeline", lambda *a, **k: pipeline)
    with pytest.raises(KeyboardInterrupt):
        runner.run_task(FakeTask(settings), "bossnet", REFS, {})
    assert _rows(settings) == {}


def test_a_message_handed_back_is_logged_without_a_traceback():
    import logging
    import sys

    from tasks.lifecycle import NoTracebackWhenHandedBack

    def record(exc):
        try:
            raise exc
        except Exception:
            return logging.LogRecord("celery.app.trace", logging.WARNING, __file__, 1, "rejected", None,
                                     sys.exc_info())

    handed_back, other = record(runner.HandedBack("cold shutdown")), record(Reject("something else"))
    assert NoTracebackWhenHandedBack().filter(handed_back) and NoTracebackWhenHandedBack().filter(other)
    assert handed_back.exc_info is None and "Traceback" not in logging.Formatter().format(handed_back)
    assert other.exc_info is not None and "Traceback" in logging.Formatter().format(other)
    assert runner.HandedBack("x").requeue
    # A prefork child hands it to the parent pickled.
    import pickle

    again = pickle.loads(pickle.dumps(runner.HandedBack("cold shutdown")))
    assert isinstance(again, runner.HandedBack) and again.requeue
    assert str(again.reason) == "cold shutdown: message back to the queue, nothing written"


def test_a_solo_pool_keeps_the_one_heartbeat_its_worker_started(monkeypatch):
    """A solo pool sends worker_process_init in the worker's own process: its heartbeat runs
    already, and a second one would race the first on the same file. A forked child starts its own."""
    from tasks import heartbeat, lifecycle

    started = []

    class Counted:
        def __init__(self, *args):
            started.append(self)

        def start(self):
            return self

        def stop(self):
            pass

    monkeypatch.setattr(heartbeat, "Heartbeat", Counted)
    monkeypatch.setattr(lifecycle, "_state", {**lifecycle._state, "pool": "solo", "heartbeat": None,
                                              "heartbeat_pid": None})
    monkeypatch.delenv("SPECQ_METRICS_PORT", raising=False)
    lifecycle._start_process_services("celery@host", 0)  # what worker_init does for a solo pool
    lifecycle._on_worker_process_init(sender="celery@host")  # then the solo pool, same process
    assert len(started) == 1 and lifecycle._state["heartbeat"] is started[0]
    lifecycle._state["heartbeat_pid"] = -1  # as a forked child sees its parent's record
    lifecycle._on_worker_process_init(sender="celery@host")
    assert len(started) == 2 and lifecycle._state["heartbeat"] is started[1]
