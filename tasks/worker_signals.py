"""What a worker process does beside its tasks: metrics server, heartbeat, log context.

Connected to Celery's signals when the worker imports the task modules. Which process
serves: a solo or threads worker's one process (``worker_init``); with a prefork pool
each child (``worker_process_init``), on ``SPECQ_METRICS_PORT + index`` (see
:mod:`workers.metrics`), never the parent, which runs no task.

The handlers import what they need when they run: a producer that imports
``tasks.pipelines`` loads none of it.
"""
from __future__ import annotations

import logging

from celery import signals

log = logging.getLogger("specq.worker")

_state: dict = {"pool": "", "heartbeat": None}


def _pipeline_of(task) -> str | None:
    """The pipeline whose task ``task`` is, or None for a task that is not specq's."""
    from workers import registry

    name = getattr(task, "name", None)
    return next((p for p, spec in registry.pipelines().items() if spec.task_name == name), None)


def _settings():
    from tasks.app import app

    return app.specq_settings


def _start_process_services(hostname: str, index: int) -> None:
    """Metrics server (when a port is set) and heartbeat of the process that runs tasks."""
    from workers import metrics
    from workers.heartbeat import Heartbeat

    settings = _settings()
    if settings.metrics_port is not None:
        metrics.serve(int(settings.metrics_port) + index)
    if _state["heartbeat"] is None:
        _state["heartbeat"] = Heartbeat(settings, hostname, _state["pool"]).start()


def _stop_process_services() -> None:
    from workers import metrics

    metrics.WORKER_UP.set(0)
    heartbeat, _state["heartbeat"] = _state["heartbeat"], None
    if heartbeat is not None:
        heartbeat.stop()


@signals.worker_init.connect
def _on_worker_init(sender=None, **_):
    pool = getattr(sender, "pool_cls", "")  # "solo", "prefork"… or the class itself
    _state["pool"] = (pool if isinstance(pool, str) else getattr(pool, "__module__", "")).rsplit(".", 1)[-1]
    if _state["pool"] not in ("prefork", "processes"):  # prefork: the children serve (below)
        _start_process_services(sender.hostname, 0)


@signals.worker_process_init.connect
def _on_worker_process_init(sender=None, **_):
    from billiard.process import current_process

    _state["heartbeat"] = None  # a record inherited from the parent is not this child's
    _start_process_services(str(sender), int(getattr(current_process(), "index", 0) or 0))


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _on_shutdown(**_):
    _stop_process_services()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _on_logging(logger=None, **_):
    from workers import logs

    try:
        logs.apply(logger, _settings().log_format)
    except ValueError as exc:  # a typo in SPECQ_LOG_FORMAT: say so, keep logging as text
        logger.error("%s; logging as text", exc)


@signals.task_prerun.connect
def _on_task_start(task_id=None, task=None, args=None, **_):
    pipeline = _pipeline_of(task)
    if pipeline is None:
        return
    from workers import logs, metrics

    _state.setdefault("log_tokens", {})[task_id] = logs.set_task(task_id, pipeline)
    metrics.WORKER_BUSY.inc()
    request = task.request
    if not request.retries:  # a retry's wait includes its backoff: not the queue's doing
        sent = getattr(request, "specq_sent", None) or (getattr(request, "headers", None) or {}).get("specq_sent")
        metrics.observe_queue_wait(pipeline, sent)
    refs = args[0] if args else []
    if _state["heartbeat"] is not None:
        _state["heartbeat"].task_started(task_id, pipeline, len(refs) if isinstance(refs, list) else 1)


@signals.task_postrun.connect
def _on_task_end(task_id=None, task=None, **_):
    if _pipeline_of(task) is None:
        return
    from workers import logs, metrics

    metrics.WORKER_BUSY.dec()
    if _state["heartbeat"] is not None:
        _state["heartbeat"].task_finished(task_id)
    tokens = _state.get("log_tokens", {}).pop(task_id, None)
    if tokens:
        try:
            logs.reset(tokens)
        except ValueError:  # set in another context (threads pool edge case): clear instead
            logs.set_task(None, None)
