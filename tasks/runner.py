"""The body of a Celery task inside a worker: references → engine → result store.

Errors that concern one spectrum become flagged rows (the engine). What concerns the
whole message is sorted here: transient trouble (file not there yet, I/O, database or
broker connection lost, device memory) is retried with exponential backoff and jitter,
a bounded number of times; after the last attempt the spectra are written as flagged
rows, so every reference still ends as exactly one row. A message that keeps killing
its worker is dead-lettered after ``max_redeliveries``.

On the last attempt the engine narrows transient trouble down to the spectra it
concerns: a file still unreadable, or a spectrum that alone does not fit in device
memory, becomes its own flagged row and the message's other spectra are processed.

A model that cannot be loaded is sorted the same way (:func:`load_pipeline`): weights
that are corrupt or do not fit the network (`WeightsError`), and any other error that
retrying would only repeat, are permanent and flagged at once; I/O, connection and
device-memory errors are retried, then flagged. Those rows come from the pipeline's
schema alone, with ``model_sha256 = "unloaded"``.

An exception of the worker being stopped (:func:`workers.interrupt.is_shutdown`: a
cold shutdown, SystemExit, KeyboardInterrupt, a lost worker) is never sorted as any of
these: nothing is written and the message goes back to the queue (:func:`requeue_on_shutdown`).
"""
from __future__ import annotations

import logging
import random
import time
from functools import lru_cache, wraps

from celery.exceptions import Reject

from tasks.visibility import check_fit, warn_if_near_visibility_timeout
from workers.refs import RefError, SpectrumRef
from workers import engine, metrics, remote
from workers import row as result_row
from workers.interrupt import is_shutdown
from workers.store import ResultStore
from workers.weights.formats import WeightsError
from workers.pipeline import MESSAGE_OPTIONS

log = logging.getLogger("specq.worker")

BACKOFF_CAP_S = 120.0
STORE_RETRY_S = 90.0  # how long a finished batch waits for the database before the task retries


class HandedBack(Reject):
    """The message goes back to the queue unfinished, and nothing is written for it: the worker
    stops, or the result store cannot take the message's rows (:func:`requeue_when_no_row_can_be_written`).

    Celery logs a rejected message with a traceback; for this one the worker's own log
    line says what happened, and the traceback is left out (:mod:`tasks.lifecycle`).
    """

    def __init__(self, why: str):
        self.why = why
        super().__init__(f"{why}: message back to the queue, nothing written", requeue=True)

    def __reduce__(self):
        # A prefork pool's child sends it to the parent pickled: rebuild it from ``why``
        # (the base class would pass its own two arguments back to this one-argument init).
        return (type(self), (self.why,))


@lru_cache(maxsize=4)
def get_store(url: str) -> ResultStore:
    return ResultStore(url)


def backoff(attempt: int, base: float = 2.0) -> float:
    """Exponential backoff (``base``·2^attempt s, capped) with ±50 % jitter."""
    return min(BACKOFF_CAP_S, base * 2 ** attempt) * random.uniform(0.5, 1.5)


def is_transient(exc: BaseException) -> bool:
    """Worth a retry: one of :func:`transient_errors`, or out of device memory."""
    return isinstance(exc, transient_errors()) or engine.is_out_of_memory(exc)


def transient_errors() -> tuple[type[BaseException], ...]:
    """Exception types worth a retry: they say nothing about the spectrum itself."""
    import sqlalchemy.exc

    from tasks.app import broker_errors
    from workers.readers import TransientReadError

    return (TransientReadError, OSError, sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError) + broker_errors()


def with_database_patience(call, patience_s: float | None = None):
    """Run ``call()``, waiting out a database that is briefly unreachable.

    Work already done (a computed batch) is not thrown away for a database restart:
    the call is retried in-process with backoff for up to ``patience_s`` seconds,
    and only then does the error reach the queue's retry. Each try logs the driver's
    own message. A worker asked to stop while it waits stops waiting at once and hands
    the message back to the queue (:class:`HandedBack`, a ``Reject`` with requeue): it is
    redelivered whole, and nothing of it was written.
    """
    import sqlalchemy.exc

    from workers.interrupt import sleep_unless_stopping
    from workers.store_check import describe_store_error

    deadline = time.monotonic() + (STORE_RETRY_S if patience_s is None else patience_s)
    attempt = 0
    while True:
        try:
            return call()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            if time.monotonic() > deadline:
                raise
            wait = min(10.0, backoff(attempt, 1.0))
            log.warning("result store unreachable (%s); retrying in %.1f s", describe_store_error(exc), wait)
            if not sleep_unless_stopping(wait):
                log.warning("worker stopping while the result store is unreachable: "
                            "the message goes back to the queue")
                raise HandedBack("worker stopping while the result store is unreachable") from exc
            attempt += 1


def write_rows(store: ResultStore, pipeline: str, rows: list[dict], worker: str = "") -> None:
    """Write rows (stamped with the worker's name), waiting out a brief database outage."""
    for row in rows:
        row["worker"] = worker
    with metrics.stage(pipeline, "write"):
        with_database_patience(lambda: store.write(pipeline, rows))
    metrics.count_rows(pipeline, rows)


def parse_refs(refs_json: list, pipeline, task_id: str) -> tuple[list[SpectrumRef], list[dict]]:
    """Valid references, and flagged rows for the malformed ones (they still get a row)."""
    refs, bad_rows = [], []
    for i, item in enumerate(refs_json if isinstance(refs_json, list) else [refs_json]):
        try:
            refs.append(SpectrumRef.from_json(item))
        except (RefError, ValueError, TypeError) as exc:
            key = item.get("path") if isinstance(item, dict) and isinstance(item.get("path"), str) else ""
            bad_rows.append(result_row.build(pipeline, None, error=f"invalid reference: {exc}", task_id=task_id,
                                             key=f"invalid:{task_id}:#{i}:{key}"[:500], path=str(key)[:500]))
    return refs, bad_rows


def failed_rows(pipeline, refs: list[SpectrumRef], reason: str, task_id: str) -> list[dict]:
    """One flagged row per reference, for a message that cannot be processed at all."""
    return [result_row.build(pipeline, ref, error=reason, task_id=task_id) for ref in refs]


def message_options(pipeline, options: dict, task_id: str):
    """The message's draws, seed and precision as checked `Options` (the pipeline's defaults where absent).

    A malformed option is replaced by its default, said in the log, and the others are kept
    (a seed stays reproducible beside draws the pipeline refuses): the spectra still get
    their rows.
    """
    given = {key: options.get(key) for key in MESSAGE_OPTIONS}
    try:
        return pipeline.options(**given)
    except (TypeError, ValueError):
        pass
    kept = {}
    for key, value in given.items():
        try:
            pipeline.options(**{key: value})
        except (TypeError, ValueError) as exc:
            log.warning("%s %s: ignoring malformed option %s=%r (%s)", pipeline.name, task_id, key, value, exc)
            continue
        kept[key] = value
    return pipeline.options(**kept)


def load_pipeline(task, pipeline_name: str, settings, retries: int) -> tuple[object, str | None]:
    """The warm pipeline, or a model-less stand-in and the reason it could not be loaded.

    Parameters
    ----------
    task : celery.Task
        The bound task (for ``retry``).
    pipeline_name : str
    settings : Settings
    retries : int
        How many times this message has been retried already.

    Returns
    -------
    pipeline : Pipeline
        The loaded pipeline, or :func:`workers.engine.unloaded_pipeline` when loading failed.
    reason : str or None
        None when loaded; else the error text for the spectra's flagged rows.

    Raises
    ------
    celery.exceptions.Retry
        A transient load error (see :func:`is_transient`: OSError on a network
        filesystem, a lost connection, device memory taken by another process) with
        retries left.

    Notes
    -----
    Everything else is permanent and flagged at once, without a retry: `WeightsError`
    (weights missing, corrupt, not a state dict, tensors of the wrong shape), ValueError
    and TypeError (bad configuration), ImportError (a broken installation), and any
    unforeseen error, since loading the same files with the same code fails the same way.
    A corrupt file that is in fact a half-copied one is then flagged too; resubmitting
    after the copy completes replaces those rows (see `ResultStore.write`).
    """
    try:
        return engine.get_pipeline(pipeline_name, settings), None
    except Exception as exc:  # sorted below: nothing may leave the message without rows
        if is_shutdown(exc):
            raise
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, WeightsError) or not is_transient(exc):
            log.error("%s %s: cannot load the model (permanent, not retried): %s", pipeline_name,
                      task.request.id, error)
            return engine.unloaded_pipeline(pipeline_name), f"model not loaded: {error}"
        if retries < settings.max_retries:
            log.warning("%s %s: transient error loading the model, retry %d: %s", pipeline_name,
                        task.request.id, retries + 1, error)
            try:
                raise _retry(task, settings, retries, exc)
            except Reject as unsent:  # the store answers (the delivery was counted): flagged rows now
                return (engine.unloaded_pipeline(pipeline_name),
                        f"model not loaded, {not_retried(unsent)}: {error}")
        log.error("%s %s: cannot load the model after %d retries: %s", pipeline_name, task.request.id,
                  settings.max_retries, error)
        return (engine.unloaded_pipeline(pipeline_name),
                f"gave up after {settings.max_retries} retries: model not loaded: {error}")


def fault_injection(refs_json: list) -> None:
    """Test hook: ``SPECQ_FAULT_KILL=substring`` kills this process (SIGKILL) on a message
    naming a matching path — how the tests make a message that keeps killing its worker."""
    import os
    import signal

    needle = os.environ.get("SPECQ_FAULT_KILL")
    if needle and any(needle in str(r.get("path", "")) for r in refs_json if isinstance(r, dict)):
        log.error("SPECQ_FAULT_KILL matched: killing this worker process")
        os.kill(os.getpid(), signal.SIGKILL)


def stop_reason(exc: BaseException) -> str:
    """What stopped a message, in words, for an exception :func:`is_shutdown` recognises."""
    from workers.interrupt import worker_terminating

    if worker_terminating():  # the error itself is whatever Celery's cancel raised (solo: kill_job)
        return "cold shutdown (a second Ctrl-C or SIGTERM)"
    return f"worker stopping ({type(exc).__name__})"


def requeue_on_shutdown(body):
    """Wrap a task body: an exception of the worker being stopped returns the message to the queue.

    Celery acknowledges a message whose task raised an ordinary exception, so the
    error a cold shutdown raises inside the task (see :mod:`workers.interrupt`) would
    lose the message: it becomes :class:`HandedBack` (a ``Reject`` with requeue) instead.
    SystemExit and KeyboardInterrupt are not ordinary exceptions: they pass through, and
    Celery leaves the message unacknowledged (redelivered, on Redis after the visibility
    timeout) or requeues it (a lost worker, ``task_reject_on_worker_lost``).
    """
    @wraps(body)
    def wrapper(task, pipeline_name: str, refs_json: list, options: dict) -> dict:
        try:
            return body(task, pipeline_name, refs_json, options)
        except Exception as exc:
            if isinstance(exc, Reject) or not is_shutdown(exc):
                raise
            why = stop_reason(exc)
            log.warning("%s %s: %s: message back to the queue, nothing written; the next worker runs it whole",
                        pipeline_name, task.request.id, why)
            log.debug("%s %s: stopped inside the task by %s: %s", pipeline_name, task.request.id,
                      type(exc).__name__, exc)
            raise HandedBack(why) from None
    return wrapper


def requeue_when_no_row_can_be_written(body):
    """Wrap a task body: a result store still unreachable when the rows must be written sends
    the message back to its queue instead of letting Celery acknowledge it with no row.

    Each write has waited out the store already (:func:`with_database_patience`), and before
    the last attempt such an error is retried like any transient one. What still escapes
    the body is a store error with no retry left (the last attempt, or the dead letter, or
    a model that cannot be loaded): an ordinary exception, which Celery would acknowledge,
    and the message's spectra would end with no row. Handed back, the message comes again
    with the same attempt number, paced by the store's patience, and its rows are written
    once the store answers.
    """
    @wraps(body)
    def wrapper(task, pipeline_name: str, refs_json: list, options: dict) -> dict:
        import sqlalchemy.exc

        try:
            return body(task, pipeline_name, refs_json, options)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            from workers.store_check import describe_store_error

            log.error("%s %s: the result store cannot take the rows (%s): the message goes back to its queue",
                      pipeline_name, task.request.id, describe_store_error(exc))
            raise HandedBack("the result store is unreachable") from exc
    return wrapper


@requeue_on_shutdown
@requeue_when_no_row_can_be_written
def run_task(task, pipeline_name: str, refs_json: list, options: dict) -> dict:
    """Process one message: returns a small JSON summary for the result backend."""
    settings = task.app.specq_settings
    request = task.request
    task_id = request.id or ""
    store = get_store(settings.database)
    retries = request.retries or 0
    last_attempt = retries >= settings.max_retries
    worker = request.hostname or ""
    if isinstance(refs_json, list) and len(refs_json) > settings.max_message_refs:
        return split_message(task, pipeline_name, refs_json, options, settings)
    try:
        deliveries = with_database_patience(lambda: store.count_delivery(f"{task_id}:{retries}"))
    except transient_errors() as exc:
        raise _retry_or_requeue(task, settings, retries, exc)
    pipeline, load_error = load_pipeline(task, pipeline_name, settings, retries)
    refs, rows = parse_refs(refs_json, pipeline, task_id)
    if load_error is not None:
        rows += failed_rows(pipeline, refs, load_error, task_id)
        write_rows(store, pipeline_name, rows, worker)
        return {**_summary(pipeline_name, pipeline, rows), "error": load_error}

    run_options = message_options(pipeline, options if isinstance(options, dict) else {}, task_id)
    check_fit(pipeline, settings, run_options.draws)  # once per model: does a full message fit the broker's limit?

    if deliveries > 1 + settings.max_redeliveries:
        reason = (f"message delivered {deliveries} times without finishing (it kills its worker?): "
                  f"dead-lettered after {settings.max_redeliveries} redeliveries")
        log.error("%s %s: %s", pipeline_name, task_id, reason)
        with_database_patience(lambda: store.dead_letter(task_id, pipeline_name, refs_json, reason, deliveries))
        rows += failed_rows(pipeline, refs, reason, task_id)
        write_rows(store, pipeline_name, rows, worker)
        return {"pipeline": pipeline_name, "rows": len(rows), "dead_letter": True}

    fault_injection(refs_json)
    started = time.monotonic()
    try:
        rows += engine.process(pipeline, refs, remote.data_root(settings), task_id=task_id,
                               backend=settings.fits_backend, last_attempt=last_attempt, options=run_options,
                               **engine.reading(settings))
        write_rows(store, pipeline_name, rows, worker)
    except Reject:  # the worker stops while the store is unreachable: back to the queue
        raise
    except Exception as exc:  # sorted below: transient → retry or give up; else one flagged row each
        if is_shutdown(exc):
            raise
        if not is_transient(exc):
            log.exception("%s %s: unexpected error", pipeline_name, task_id)
            reason = f"unexpected error: {type(exc).__name__}: {exc}"
        elif not last_attempt:
            log.warning("%s %s: transient %s, retry %d: %s", pipeline_name, task_id, type(exc).__name__,
                        retries + 1, exc)
            try:
                raise _retry(task, settings, retries, exc)
            except Reject as unsent:  # the broker refused the retry (a full queue): the rows are written now
                log.error("%s %s: the retry could not be sent, the spectra are flagged: %r", pipeline_name,
                          task_id, unsent.reason)
                reason = f"{not_retried(unsent)}: {type(exc).__name__}: {exc}"
        else:
            reason = f"gave up after {settings.max_retries} retries: {type(exc).__name__}: {exc}"
        # Every spectrum still gets its one row: the invalid references' rows, then a
        # flagged row for each valid one.
        rows = [r for r in rows if r["spectrum_key"].startswith("invalid:")]
        rows += failed_rows(pipeline, refs, reason, task_id)
        write_rows(store, pipeline_name, rows, worker)
    warn_if_near_visibility_timeout(pipeline_name, task_id, len(refs), time.monotonic() - started, settings)
    return _summary(pipeline_name, pipeline, rows)


def split_message(task, pipeline_name: str, refs_json: list, options: dict, settings) -> dict:
    """Send an oversized message's references on as messages of the usual size.

    A message of more than ``max_message_refs`` references (sent by hand: the producer
    never makes one) could outlast the visibility timeout and be handed out again and
    again; cut up, every spectrum still gets its row. Retried if the broker is away. On
    RabbitMQ the parts are confirmed: a part the broker refuses (a queue at its max-length
    with reject-publish) and the parts after it become flagged rows, not a silent loss.
    """
    from tasks.brokers import nacked

    size = settings.chunk_size_for(pipeline_name)
    log.warning("%s %s: %d references, more than SPECQ_MAX_MESSAGE_REFS=%d: sent on as %d messages of %d",
                pipeline_name, task.request.id, len(refs_json), settings.max_message_refs,
                -(-len(refs_json) // size), size)
    # Into the lane the message came from: a bulk message's parts stay bulk.
    queue = (task.request.delivery_info or {}).get("routing_key") or settings.queue_for(pipeline_name)
    ids = []
    retries = task.request.retries or 0
    sent_refs = 0
    try:
        with _confirming_connection(task.app, settings) as connection:
            for start in range(0, len(refs_json), size):
                sent = task.app.send_task(task.name, args=[refs_json[start:start + size]],
                                          kwargs={"options": options}, queue=queue, serializer="json",
                                          **_confirmed(connection))
                ids.append(sent.id)
                sent_refs = start + size
    except transient_errors() as exc:  # a repeat sends some again: rows are keyed, duplicates overwrite
        if nacked(exc):
            reason = ("not sent on as smaller messages: the broker refused a part (a queue at its max-length); "
                      "enqueue these spectra again once there is room")
            return _unsent(task, pipeline_name, refs_json[sent_refs:], settings, reason)
        if retries < settings.max_retries:
            try:
                raise _retry(task, settings, retries, exc)
            except Reject:  # the retry could not be sent either: the spectra get flagged rows instead
                log.error("%s %s: neither the parts nor a retry could be sent: %s", pipeline_name,
                          task.request.id, exc)
        return _unsent(task, pipeline_name, refs_json[sent_refs:], settings,
                       f"not sent on as smaller messages: {type(exc).__name__}: {exc}")
    return {"pipeline": pipeline_name, "rows": 0, "split_into": ids}


def _confirmed(connection) -> dict:
    """Publish options for a confirming connection (none for None): it, one wait for the
    confirm, and no publish retries (kombu would send a refused or unconfirmed message
    again, 30 s each)."""
    from tasks.brokers import CONFIRM_TIMEOUT_S

    return {} if connection is None else {"connection": connection, "confirm_timeout": CONFIRM_TIMEOUT_S,
                                          "retry": False}


def not_retried(unsent: Reject) -> str:
    """Why a message was not retried, for its flagged rows: Celery's `Reject` of a retry it could not send."""
    from tasks.brokers import nacked

    if nacked(unsent.reason):
        return "not retried: the broker refused the retry (a queue at its max-length)"
    return f"not retried: the retry could not be sent ({type(unsent.reason).__name__}: {unsent.reason})"


def _confirming_connection(app, settings):
    """A connection whose publishes RabbitMQ confirms, for RabbitMQ brokers (else none: the
    app's own). A worker's own publishes go without confirms (see
    :func:`tasks.lifecycle.publish_without_confirms`)."""
    import contextlib

    from tasks.brokers import kind

    if not kind(settings).startswith("rabbitmq"):
        return contextlib.nullcontext(None)
    return app.connection_for_write(transport_options={**app.conf.broker_transport_options, "confirm_publish": True})


def _unsent(task, pipeline_name: str, refs_json: list, settings, reason: str) -> dict:
    """A flagged row for each spectrum of an oversized message's parts that were not sent on.

    Parts sent in an earlier attempt are processed as usual: their results replace these
    rows (a failure never overwrites a result, whichever is written first).
    """
    task_id = task.request.id or ""
    log.error("%s %s: %d references %s", pipeline_name, task_id, len(refs_json), reason)
    pipeline, load_error = load_pipeline(task, pipeline_name, settings, settings.max_retries)
    refs, rows = parse_refs(refs_json, pipeline, task_id)
    rows += failed_rows(pipeline, refs, reason if load_error is None else f"{reason}; {load_error}", task_id)
    write_rows(get_store(settings.database), pipeline_name, rows, task.request.hostname or "")
    return {**_summary(pipeline_name, pipeline, rows), "error": reason}


def _retry_or_requeue(task, settings, retries: int, exc: BaseException):
    """:func:`_retry` where the store could not count the delivery (no row can be written):
    a retry the broker refuses sends the message itself back to its queue, never away
    unanswered. It comes back at once; the store's patience paces the attempts."""
    try:
        return _retry(task, settings, retries, exc)
    except Reject as unsent:
        log.error("%s: the retry could not be sent, the message goes back to its queue: %s", task.request.id, unsent)
        raise Reject(unsent, requeue=True) from exc


def _retry(task, settings, retries: int, exc: BaseException):
    """Celery's retry of ``task`` for ``exc``, after the backoff of attempt ``retries`` (raise it).

    On RabbitMQ the retry is published with a confirm: one the broker refuses (a queue at
    its max-length with reject-publish) is Celery's `Reject` here, not a retry that never
    comes.
    """
    with _confirming_connection(task.app, settings) as connection:
        return task.retry(exc=exc, countdown=backoff(retries, settings.retry_backoff), max_retries=settings.max_retries,
                          **_confirmed(connection))


def _summary(pipeline_name: str, pipeline, rows: list[dict]) -> dict:
    """The small JSON summary a task returns."""
    flagged = sum(1 for r in rows if r.get("flag_bad"))
    return {"pipeline": pipeline_name, "rows": len(rows), "flag_bad": flagged,
            "model_sha256": pipeline.model_sha256, "demo_weights": bool(pipeline.demo)}
