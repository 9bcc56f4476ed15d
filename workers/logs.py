"""Log lines as text or as JSON, each carrying the task and the spectrum it concerns.

``SPECQ_LOG_FORMAT=json`` (or ``specq --log-format json``) writes one JSON object a
line: ``ts``, ``level``, ``logger``, ``message``, and, when known, ``task_id``,
``pipeline`` and ``spectrum`` (a spectrum reference's key, ``path:hdu:row``). The task
comes from a context variable that the worker sets for the duration of a task
(:func:`task_context`); the spectrum from the context (:func:`spectrum_context`) or
from ``extra={"spectrum": key}`` on a call that concerns one spectrum. Text lines get
the same fields appended as ``[task=… spectrum=…]``.

Light on purpose (standard library only): producers, the CLI and workers all use it.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Iterator

LOG_FORMATS = ("text", "json")
CONTEXT_FIELDS = ("task_id", "pipeline", "spectrum")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s%(specq_context)s"

_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("specq_task_id", default=None)
_pipeline: contextvars.ContextVar[str | None] = contextvars.ContextVar("specq_pipeline", default=None)
_spectrum: contextvars.ContextVar[str | None] = contextvars.ContextVar("specq_spectrum", default=None)
_VARS = {"task_id": _task_id, "pipeline": _pipeline, "spectrum": _spectrum}
_active_format = "text"  # the format this process's log lines were last set to (its reader processes follow it)

# The attributes every LogRecord has: anything else on a record came through ``extra``.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                "specq_context"}


def set_task(task_id: str | None, pipeline: str | None = None) -> list[contextvars.Token]:
    """Make ``task_id`` (and ``pipeline``) part of every log line until :func:`reset`."""
    return [_task_id.set(task_id), _pipeline.set(pipeline)]


def reset(tokens: list[contextvars.Token]) -> None:
    """Undo :func:`set_task`."""
    for token in reversed(tokens):
        token.var.reset(token)


@contextlib.contextmanager
def task_context(task_id: str | None, pipeline: str | None = None) -> Iterator[None]:
    """Log lines inside carry ``task_id`` and ``pipeline``."""
    tokens = set_task(task_id, pipeline)
    try:
        yield
    finally:
        reset(tokens)


@contextlib.contextmanager
def spectrum_context(key: str | None) -> Iterator[None]:
    """Log lines inside carry the spectrum ``key``."""
    token = _spectrum.set(key)
    try:
        yield
    finally:
        _spectrum.reset(token)


def current() -> dict[str, str]:
    """The context fields that are set now."""
    return {name: var.get() for name, var in _VARS.items() if var.get() is not None}


class ContextFilter(logging.Filter):
    """Stamp every record with the current task and spectrum (an explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        known = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n, None) is not None]
        record.specq_context = f" [{' '.join(known)}]" if known else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, context and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and value is not None and not name.startswith("_"):
                out[name] = value
        for name, value in current().items():  # records made before a filter ran still get them
            out.setdefault(name, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def check_format(name: str | None) -> str:
    """``name`` lower-cased if it is a known format (None → "text"), else a ValueError."""
    fmt = (name or "text").lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {name!r}; choose from {', '.join(LOG_FORMATS)}")
    return fmt


def active_format() -> str:
    """The format this process logs in ("text" unless :func:`configure` or :func:`apply` said otherwise)."""
    return _active_format


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of format ``fmt`` ("text" or "json")."""
    return JsonFormatter() if check_format(fmt) == "json" else logging.Formatter(TEXT_FORMAT)


def apply(logger: logging.Logger, fmt: str) -> None:
    """Give ``logger``'s handlers the context filter and the formatter of ``fmt``.

    Used on the handlers Celery sets up in a worker: in text format Celery's own
    formatter stays (its task lines already name the task).
    """
    global _active_format

    fmt = _active_format = check_format(fmt)
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())


class StderrHandler(logging.StreamHandler):
    """A handler on ``sys.stderr`` that, once the stream it was given has been closed (a test's
    capture, closed after the command ran inside it), writes to ``sys.stderr`` as it is then.

    It keeps its stream otherwise: a Celery worker swaps ``sys.stderr`` for a proxy that logs
    what is written to it, and a handler following the swap would feed its lines back into
    logging, which drops them.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self.stream, "closed", False):
            with self.lock:
                self.stream = sys.stderr  # not setStream: it would flush the closed stream
        super().emit(record)


def configure(level: int = logging.WARNING, fmt: str = "text", stream=None) -> None:
    """The root logger of a command: one handler on stderr (or ``stream``) in format ``fmt``.

    Replaces the handler an earlier call added (a command run twice in one process, as
    tests do); handlers that others added (pytest's capture) stay.
    """
    global _active_format

    _active_format = check_format(fmt)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "specq", False):
            root.removeHandler(handler)
    handler = StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.specq = True
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
