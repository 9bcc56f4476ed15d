"""Tell a process that is being stopped from a spectrum that failed.

An exception raised while the worker shuts down says nothing about the spectra in hand:
it must never become their flagged rows, and their message must go back to the queue.
Celery's cold shutdown (the second Ctrl-C) cancels the running task from a signal
handler, so whatever that handler raises surfaces inside the task, wherever the main
thread happened to be (with the solo pool: ``NotImplementedError: ... does not implement
kill_job``). Such an error is recognised by the worker's own shutdown flag.
"""
from __future__ import annotations

import mmap
import sys
import time

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


# One shared byte, set when the worker's main process is asked to stop. Mapped at import
# (in the main process, before the prefork pool forks), so the pool processes see it too:
# a stop signal reaches only the main process under systemd's KillMode=mixed.
_stopping = mmap.mmap(-1, 1)


def mark_stopping() -> None:
    """Record that this worker was asked to stop (called by the worker's lifecycle)."""
    _stopping[0] = 1


def shutdown_requested() -> bool:
    """True once this worker was asked to stop (SIGTERM, SIGINT, SIGQUIT), in any of its processes."""
    state = sys.modules.get("celery.worker.state")
    return _stopping[0] == 1 or (state is not None and any(
        flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate)))


def sleep_unless_stopping(seconds: float, step: float = 0.25) -> bool:
    """Sleep ``seconds``, in short steps; False as soon as the worker is asked to stop."""
    deadline = time.monotonic() + seconds
    while not shutdown_requested():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(step, left))
    return False
