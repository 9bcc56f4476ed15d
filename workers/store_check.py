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

The worker's lifecycle (:mod:`tasks.lifecycle`) calls :func:`wait_for_result_store` at
``worker_init``; this module knows nothing of Celery.
"""
from __future__ import annotations

import re
import sys
import time

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
