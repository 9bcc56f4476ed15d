"""Tell a process that is being stopped from a spectrum that failed.

An exception raised while the worker shuts down says nothing about the spectra in hand:
it must never become their flagged rows, and their message must go back to the queue.
Celery's cold shutdown (the second Ctrl-C) cancels the running task from a signal
handler, so whatever that handler raises surfaces inside the task, wherever the main
thread happened to be (with the solo pool: ``NotImplementedError: ... does not implement
kill_job``). Such an error is recognised by the worker's own shutdown flag.
"""
from __future__ import annotations

import sys

# Raised by Celery and billiard when a worker stops or loses a task's process.
_SHUTDOWN_NAMES = frozenset({"WorkerShutdown", "WorkerTerminate", "WorkerLostError", "Terminated"})


def is_shutdown(exc: BaseException) -> bool:
    """True when ``exc`` comes from stopping the process, not from the work itself.

    Parameters
    ----------
    exc : BaseException
        An exception caught while processing spectra.

    Returns
    -------
    bool
        True for KeyboardInterrupt and SystemExit (Celery's WorkerShutdown and
        WorkerTerminate are SystemExit), a lost or terminated worker, and any exception
        raised while a Celery worker in this process is terminating (cold shutdown).
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return True
    if any(kind.__name__ in _SHUTDOWN_NAMES for kind in type(exc).__mro__):
        return True
    return worker_terminating()


def worker_terminating() -> bool:
    """True once a Celery worker in this process has begun its cold (immediate) shutdown."""
    state = sys.modules.get("celery.worker.state")  # no worker in this process → not imported
    return state is not None and state.should_terminate not in (None, False)
