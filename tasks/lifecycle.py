"""A worker's lifecycle: everything it does beside its tasks, in the order it does it.

Connected to Celery's signals when the worker imports the task modules
(``tasks.pipelines`` imports this module). At ``worker_init``, before it consumes
anything or says "ready", the worker, in this order:

1. remembers its ``WorkController`` (for the second SIGTERM, below), turns the
   queues it was given into the lanes it serves, ordinary first (:func:`serve_lanes`),
   and, with the solo pool, takes one message at a time
   (:func:`take_one_message_at_a_time_when_solo`);
2. exits 2 when the broker refuses it (wrong credentials or virtual host: waiting would
   not help) (:func:`refuse_to_start_with_a_broker_that_refuses`); then checks its pipelines' weights, and exits 2 without them (:func:`refuse_to_start_without_weights`);
3. checks its result store, and waits for it or exits 78 (:func:`workers.store_check.wait_for_result_store`);
   then its data root: a folder not there yet is waited for (:func:`workers.remote.wait_for_data_root`);
4. warns in its log when the broker Redis may lose messages (no AOF, eviction:
   :func:`tasks.brokers.warn_at_start`);
5. starts its process services: the metrics server and the heartbeat. A solo or threads
   worker's one process serves; with a prefork pool each child does
   (``worker_process_init``, on ``SPECQ_METRICS_PORT + index``), never the parent, which
   runs no task.

At ``worker_shutting_down`` it marks itself stopping (:func:`workers.interrupt.mark_stopping`,
seen by every pool process), says in its log what becomes of the messages (:func:`say_what_stops`),
and makes a second SIGTERM stop it at once. A message a cold shutdown stops goes back to the
queue (:class:`tasks.runner.HandedBack`) with one log line and no traceback
(:class:`NoTracebackWhenHandedBack`). Around each task it keeps the log context, the busy
gauge and the heartbeat's task list.

The handlers import what they need when they run: a producer that imports
``tasks.pipelines`` loads none of it.
"""
from __future__ import annotations

import logging
import os

from celery import signals

# Imported here, in the main process, so that its shared stop flag is mapped before a
# prefork pool forks: every pool process then sees the main process's mark.
from workers import interrupt

log = logging.getLogger("specq.worker")

_state: dict = {"pool": "", "heartbeat": None, "heartbeat_pid": None, "worker": None, "lane_gauges": False}


def _pipeline_of(task) -> str | None:
    """The pipeline whose task ``task`` is, or None for a task that is not specq's."""
    from workers import registry

    name = getattr(task, "name", None)
    return next((p for p, spec in registry.pipelines().items() if spec.task_name == name), None)


def _settings():
    from tasks.app import get_app

    return get_app().specq_settings


def _start_process_services(hostname: str, index: int) -> None:
    """Metrics server (when a port is set) and heartbeat of the process that runs tasks."""
    from tasks.heartbeat import Heartbeat
    from workers import metrics

    settings = _settings()
    if _state["heartbeat"] is None:
        _state["heartbeat"] = Heartbeat(settings, hostname, _state["pool"]).start()
        _state["heartbeat_pid"] = os.getpid()
    if settings.metrics_port is not None:
        if metrics.serve(int(settings.metrics_port) + index) is not None and index == 0 and not _state["lane_gauges"]:
            from prometheus_client import REGISTRY

            from tasks.app import worker_queues
            from tasks.brokers import LaneGauges

            # The broker's lanes: by one process of each worker (the first child), once.
            REGISTRY.register(LaneGauges(settings, worker_queues(settings)))
            _state["lane_gauges"] = True


def _stop_process_services() -> None:
    from workers import metrics

    metrics.WORKER_UP.set(0)
    heartbeat, _state["heartbeat"] = _state["heartbeat"], None
    if heartbeat is not None:
        heartbeat.stop()


def publish_without_confirms(worker) -> None:
    """A worker's own connection publishes (events) without RabbitMQ's publisher confirms.

    Producers wait for each confirm (:func:`tasks.app.configure`); a worker waiting for
    every one inside its event loop, on a broker blocked by a disk or memory alarm, would
    stop serving its consumer connection too, and its messages would be handed out again.
    Its retries and the parts of an oversized message, which must not vanish unseen, go
    through a confirming connection of their own, with one bounded wait each
    (:func:`tasks.runner._confirming_connection`).
    """
    app = getattr(worker, "app", None)
    if app is not None and app.conf.broker_transport_options.get("confirm_publish"):
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "confirm_publish": False}


@signals.worker_init.connect
def _on_worker_init(sender=None, **_):
    _state["worker"] = sender
    pool = getattr(sender, "pool_cls", "")  # "solo", "prefork"… or the class itself
    _state["pool"] = (pool if isinstance(pool, str) else getattr(pool, "__module__", "")).rsplit(".", 1)[-1]
    serve_lanes(sender)
    take_one_message_at_a_time_when_solo(sender)
    publish_without_confirms(sender)
    refuse_to_start_with_a_broker_that_refuses(sender)
    refuse_to_start_without_weights(sender)
    settings = getattr(getattr(sender, "app", None), "specq_settings", None)
    if settings is not None:
        from workers.store_check import wait_for_result_store

        wait_for_result_store(settings.database)
        from workers.remote import wait_for_data_root

        wait_for_data_root(settings)
        from tasks.brokers import warn_at_start

        warn_at_start(settings, log)
    if _state["pool"] not in ("prefork", "processes"):  # prefork: the children serve (below)
        _start_process_services(sender.hostname, 0)


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(sig=None, how=None, **_):
    interrupt.mark_stopping()
    say_what_stops(sig, how)
    _second_sigterm_stops_at_once(sig, how)


def say_what_stops(sig: str | None, how: str | None) -> None:
    """One log line: what a warm or a cold shutdown does with the messages in hand and in the queue."""
    if how == "Warm":
        log.warning("warm shutdown (%s): the running message finishes and its rows are written, messages not "
                    "started stay in the queue; the same signal again stops at once", sig)
    elif how == "Cold":
        log.warning("cold shutdown (%s again): the running message stops and goes back to the queue with nothing "
                    "written for it, messages not started stay in the queue", sig)


class NoTracebackWhenHandedBack(logging.Filter):
    """Celery's line for a message handed back at shutdown, without its traceback.

    Celery logs every rejected message with the traceback of the ``Reject``: for
    :class:`tasks.runner.HandedBack` that is the worker's own doing, already said in one
    line, and a traceback would read as a crash.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            from tasks.runner import HandedBack

            if isinstance(record.exc_info[1], HandedBack):
                record.exc_info = record.exc_text = None
        return True


# Celery's task-trace logger: set here, in the main process, so that pool processes inherit it.
logging.getLogger("celery.app.trace").addFilter(NoTracebackWhenHandedBack())


@signals.worker_process_init.connect
def _on_worker_process_init(sender=None, **_):
    from billiard.process import current_process

    # A forked child's inherited record is not its own; a solo pool sends this signal in the
    # worker's own process, whose heartbeat runs already (two would race on one file).
    if _state["heartbeat_pid"] != os.getpid():
        _state["heartbeat"] = None
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


def serve_lanes(sender) -> None:
    """Consume the lanes of the worker's device queues (``SPECQ_LANES``), every ordinary one first.

    ``-Q gpu`` (or no ``-Q``) then serves ``gpu`` and ``gpu.bulk``, a worker with
    ``SPECQ_LANES=ordinary`` only ``gpu``; a lane queue named outright is served as named.
    """
    from tasks.lanes import served_queues

    app = getattr(sender, "app", None)
    settings = getattr(app, "specq_settings", None)
    if settings is None:
        return
    queues = app.amqp.queues
    served = served_queues(list(queues.consume_from), settings)
    queues.select(served)
    log.info("serving lanes: %s", ", ".join(served))


def take_one_message_at_a_time_when_solo(sender) -> None:
    """A solo worker runs one task at a time: it takes one message per lane, not one per CPU.

    Celery counts a worker's prefetch from its concurrency, which defaults to the host's
    CPUs even for the solo pool: RabbitMQ would then push that many messages of each lane
    to the worker, and a new spectrum would wait behind the bulk ones it holds.
    """
    if _state["pool"] == "solo":
        sender.concurrency = 1


def refuse_to_start_with_a_broker_that_refuses(sender) -> None:
    """One line on stderr and exit 2 when the broker refuses the worker's user, password or vhost.

    A broker that is not reachable yet is left to Celery, which keeps trying (a worker may
    start before its broker).
    """
    settings = getattr(getattr(sender, "app", None), "specq_settings", None)
    if settings is None or getattr(sender.app, "specq_broker_checked", False):
        return
    import sys

    from tasks.brokers import refused

    line = refused(settings)
    if line is not None:
        print(f"specq worker: error: {line}", file=sys.stderr)
        raise SystemExit(2)


def refuse_to_start_without_weights(sender) -> None:
    """A worker checks its pipelines' weights before it says ready (``celery -A tasks worker`` too).

    No weights installed (and demo weights not asked for), or a partial or changed copy:
    one line on stderr and exit status 2, instead of a flagged row for every spectrum it
    would take. Reads and hashes the files only: torch stays out of the parent process.
    """
    from tasks.app import get_app, worker_queues
    from tasks.lanes import split
    from workers import registry
    from workers.engine import weights_candidates
    from workers.weights.verify import main_check

    worker_app = getattr(sender, "app", None) or get_app()
    settings = getattr(worker_app, "specq_settings", None) or get_app().specq_settings
    if getattr(worker_app, "specq_weights_checked", False):
        return  # `specq worker` checked already, before handing over to Celery
    consumed = worker_app.amqp.queues.consume_from
    queues = {split(name)[0] for name in consumed} if consumed else set(worker_queues(settings))
    pipelines = [p for p in registry.names() if settings.queue_for(p) in queues]
    status = main_check(pipelines, settings, {p: weights_candidates(p) for p in pipelines})
    if status:
        raise SystemExit(status)


def _second_sigterm_stops_at_once(sig: str | None, how: str | None) -> None:
    """After a first SIGTERM, make the next one stop the worker at once, as a second Ctrl-C does.

    Celery's SIGTERM is a warm shutdown (the running message finishes) every time it
    comes, so a worker in a long message could not be stopped short of SIGKILL. Like
    Celery's own first SIGINT, the first SIGTERM installs the cold-shutdown handler for
    the next one: the running message then goes back to the queue unfinished, and
    nothing is written for it (see workers.interrupt).
    """
    if sig != "SIGTERM" or how != "Warm" or _state["worker"] is None:
        return
    from celery.apps.worker import install_worker_term_hard_handler

    install_worker_term_hard_handler(_state["worker"], sig="SIGTERM")


def run_worker(app, argv: list[str]) -> int:
    """Run a worker (``app.worker_main(argv)``) and return its exit status.

    ``worker_main`` drops it: a worker Celery stops on an unrecoverable error would exit 0,
    and a supervisor that restarts on failure (systemd) would leave it stopped. A worker
    asked to stop (Ctrl-C, SIGTERM) exits 0, whatever code Celery gives the signal.
    """
    codes: list[int] = []

    def exit_status(sender=None, **_) -> None:
        code = getattr(sender, "exitcode", None)
        if code and not interrupt.shutdown_requested():
            codes.append(code if isinstance(code, int) else 1)

    signals.worker_shutdown.connect(exit_status, weak=False)
    try:
        app.worker_main(argv)
    finally:
        signals.worker_shutdown.disconnect(exit_status)
    return codes[-1] if codes else 0
