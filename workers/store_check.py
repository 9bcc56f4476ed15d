"""Is the result store usable? Checked when a worker starts, and said plainly when it is not.

A worker that cannot write its rows must not take messages. At start-up (Celery's
``worker_init`` signal, before the worker consumes anything or says "ready") the worker
opens the store and creates its tables:

* a cause that waiting will not fix (the database or role does not exist, the password
  is refused, the driver is not installed, the URL is malformed, the SQLite folder
  cannot be written) ends the worker at once with one line naming the cause, exit
  status :data:`EXIT_STORE_UNUSABLE` (78, ``EX_CONFIG``; systemd:
  ``RestartPreventExitStatus=78``);
* anything else (connection refused, a server starting up, a network hiccup) is waited
  out, with a line that names the cause at each try; SIGTERM or Ctrl-C stop the wait.

The module's top level imports only the standard library and Celery's signals: it is
named in the app's ``imports``, so it is loaded wherever the app's task modules are.
"""
from __future__ import annotations

import mmap
import re
import sys
import time

from celery import signals

#: Exit status of a worker whose result store cannot be used (sysexits' EX_CONFIG).
EXIT_STORE_UNUSABLE = 78
#: Longest wait between two start-up tries.
STARTUP_RETRY_CAP_S = 10.0

# Driver messages that name a configuration mistake, not an outage.
_PERMANENT = re.compile(
    r"does not exist|authentication failed|pg_hba\.conf|permission denied|unable to open database file"
    r"|invalid (dsn|connection option)|no password supplied", re.IGNORECASE)
_SECRET = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def describe_store_error(exc: BaseException, url: str | None = None) -> str:
    """The driver's own message, on one line, without passwords.

    Parameters
    ----------
    exc : BaseException
        What the store raised (SQLAlchemy errors carry the driver's error in ``orig``).
    url : str, optional
        The store's URL: its password, if any, is masked wherever it appears.
    """
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    text = _SECRET.sub(r"\1***", text)
    for password in _url_passwords(url):
        text = text.replace(password, "***")
    return f"{type(cause).__name__}: {text}"


def is_permanent_store_error(exc: BaseException) -> bool:
    """True when waiting cannot help: a missing database or role, bad credentials, a bad URL."""
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return bool(_PERMANENT.search(str(getattr(exc, "orig", None) or exc)))
    # Refused or timed-out connections come as OSError subclasses from some drivers.
    return not isinstance(exc, (ConnectionError, TimeoutError))


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***``."""
    for password in _url_passwords(url):
        url = url.replace(f":{password}@", ":***@")
    return url


def _url_passwords(url: str | None) -> set[str]:
    """The URL's password as written (percent-encoded) and as sent to the server."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        return set()
    return {password, unquote(password)} if password else set()


# One shared byte, set when the worker's main process is asked to stop. Mapped at import
# (in the main process, before the prefork pool forks), so the pool processes see it too:
# a stop signal reaches only the main process under systemd's KillMode=mixed.
_stopping = mmap.mmap(-1, 1)


@signals.worker_shutting_down.connect
def _mark_stopping(**_kwargs) -> None:
    _stopping[0] = 1


def shutdown_requested() -> bool:
    """True once this worker was asked to stop (SIGTERM, SIGINT, SIGQUIT), in any of its processes."""
    from celery.worker import state

    return _stopping[0] == 1 or any(flag is not None and flag is not False
                                    for flag in (state.should_stop, state.should_terminate))


def sleep_unless_stopping(seconds: float, step: float = 0.25) -> bool:
    """Sleep ``seconds``, in short steps; False as soon as the worker is asked to stop."""
    deadline = time.monotonic() + seconds
    while not shutdown_requested():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(step, left))
    return False


def wait_for_result_store(url: str, out=None) -> None:
    """Return once the store at ``url`` answers; exit the process if it never can.

    Parameters
    ----------
    url : str
        The store's SQLAlchemy URL.
    out : file, optional
        Where the lines go (default: standard error; Celery's logging is not set up yet).

    Raises
    ------
    SystemExit
        With :data:`EXIT_STORE_UNUSABLE`, for a cause that waiting cannot fix.
    """
    from workers.store import ResultStore

    out = out or sys.stderr
    shown = redact_url(url)
    attempt = 0
    while True:
        try:
            store = ResultStore(url)
            store.create()  # connects, and creates the tables a worker writes
            store.engine.dispose()
        except Exception as exc:  # sorted below: permanent → exit; otherwise wait and retry
            cause = describe_store_error(exc, url)
            if is_permanent_store_error(exc):
                print(f"specq worker: the result store {shown} cannot be used: {cause} "
                      f"(not starting; fix SPECQ_DATABASE_URL)", file=out, flush=True)
                raise SystemExit(EXIT_STORE_UNUSABLE) from None
            wait = min(STARTUP_RETRY_CAP_S, 1.0 * 2 ** attempt)
            print(f"specq worker: result store {shown} unreachable ({cause}); not taking messages, "
                  f"trying again in {wait:.0f} s", file=out, flush=True)
            time.sleep(wait)  # before Celery's signal handlers: SIGTERM ends the process at once
            attempt += 1
            continue
        if attempt:
            print(f"specq worker: result store {shown} reachable; starting", file=out, flush=True)
        return


@signals.worker_init.connect
def _check_result_store(sender=None, **_kwargs) -> None:
    """Before a worker consumes: the store must be usable (see the module notes)."""
    settings = getattr(getattr(sender, "app", None), "specq_settings", None)
    if settings is not None:
        wait_for_result_store(settings.database)
