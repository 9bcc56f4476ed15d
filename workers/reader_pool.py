"""Parallel readers: a worker's files read by N reader processes (or threads) ahead of the device.

The engine hands :meth:`ReaderPool.read` one call per spectrum reference and gets the
results back as they complete, with at most ``window`` calls in flight, so that one slow
file holds up only itself while the others are read (and computed on). Readers are
processes by default: the FITS readers are Python, and threads would take turns on the
GIL (``specq bench --feed`` measures both).

A reader that dies (killed, out of memory, a crash in a library) or does not finish a
file within ``timeout`` seconds never stops the worker. Its pool is replaced; the calls
it was working on are tried again one at a time, so that a file that kills its reader
again is found; that file, and a file whose reader hangs, is handed to ``lost`` — the
engine turns it into a retry of the message, or on the last attempt a flagged row.

Pools live as long as their process and are shared by its tasks (:func:`reader_pool`):
reader processes start once (from a clean ``forkserver``, never a fork of a process
that holds a model and threads), not once per message.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

from workers import logs

log = logging.getLogger("specq.readers")

READER_KINDS = ("process", "thread")
DEFAULT_TIMEOUT_S = 300.0
_POLL_S = 0.5  # how often in-flight reads are checked against their deadline


class ReaderLost(Exception):
    """A reader died on a file, or did not finish it in time (not the file's fault, as far as is known)."""


def default_readers() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this OS
        return max(1, os.cpu_count() or 1)


class ReaderPool:
    """``count`` readers of one kind, with a per-file ``timeout``.

    Parameters
    ----------
    count : int
    kind : {"process", "thread"}
    timeout : float
        Seconds a reader may spend on one call before it is counted as hung.
    """

    def __init__(self, count: int, kind: str = "process", timeout: float = DEFAULT_TIMEOUT_S):
        if kind not in READER_KINDS:
            raise ValueError(f"reader kind must be one of {READER_KINDS}, not {kind!r}")
        if count < 1:
            raise ValueError(f"readers must be at least 1, not {count}")
        self.count, self.kind, self.timeout = count, kind, timeout
        self._executor: ProcessPoolExecutor | ThreadPoolExecutor | None = None
        # A submit may start a reader process; the lock and the flag keep a read-ahead thread
        # from starting one while (or after) the exiting process stops them: such a reader
        # would outlive its parent's semaphores and print a traceback on the user's terminal.
        self._lock = threading.RLock()
        self._stopped = False

    # -- the executor --------------------------------------------------------------------
    def _pool(self):
        if self._executor is None:
            if self.kind == "process":
                # The readers see this process's SPECQ_* settings as they are now, not as they
                # were when the (shared, long-lived) fork server started.
                settings = {k: v for k, v in os.environ.items() if k.startswith("SPECQ_")}
                logging_now = (logs.active_format(), logging.getLogger().getEffectiveLevel())
                self._executor = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("forkserver"),
                                                     initializer=_start_reader,
                                                     initargs=(settings, os.getpid(), *logging_now))
                _widen_result_pipe(self._executor)
            else:
                self._executor = ThreadPoolExecutor(self.count, thread_name_prefix="specq-read")
        return self._executor

    def _submit(self, call, item) -> Future:
        with self._lock, _ctrl_c_after_start():
            if self._stopped:
                raise ReaderLost("the readers were stopped: the process is exiting")
            return self._pool().submit(call, item)

    def _replace(self, stop: bool = False) -> None:
        """Drop the current readers (a hung one is killed, a thread is left to finish alone);
        with ``stop``, start no more."""
        with self._lock:
            self._stopped = self._stopped or stop
            executor, self._executor = self._executor, None
            if executor is None:
                return
            processes = []
            if isinstance(executor, ProcessPoolExecutor):
                # The executor offers no way to stop one busy process: end them all.
                processes = list((getattr(executor, "_processes", None) or {}).values())
                for process in processes:
                    if process.is_alive():
                        process.kill()
            executor.shutdown(wait=False, cancel_futures=True)
        if stop:
            for process in processes:
                process.join(5)

    def close(self) -> None:
        """Stop the readers."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    # -- reading -------------------------------------------------------------------------
    def read(self, call: Callable[[Any], Any], items: Sequence[Any], window: int,
             lost: Callable[[Any, ReaderLost], Any]) -> Iterator[tuple[int, Any]]:
        """``(index, call(items[index]))`` for every item, as the readers finish them.

        Parameters
        ----------
        call : callable
            Picklable (a module-level function or a ``functools.partial`` of one) for
            process readers.
        items : sequence
        window : int
            At most this many calls in flight (queued or running).
        lost : callable
            ``lost(item, error)`` → the result for an item whose reader died or hung;
            it may raise instead (the exception ends the iteration).

        Raises
        ------
        Exception
            Whatever ``call`` raised for an item (the first one met).
        """
        window = max(1, window)
        started: dict[Future, float] = {}
        in_flight: dict[Future, int] = {}
        next_item = 0
        while next_item < len(items) or in_flight:
            while next_item < len(items) and len(in_flight) < window:
                in_flight[self._submit(call, items[next_item])] = next_item
                next_item += 1
            done, _ = wait(list(in_flight), timeout=_POLL_S, return_when=FIRST_COMPLETED)
            broken: list[int] = []
            for future in done:
                index = in_flight.pop(future)
                started.pop(future, None)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken.append(index)
                    continue
                yield index, result
            if broken:
                # Every call in flight fails with the pool: which one killed it is not known.
                broken += [in_flight.pop(f) for f in list(in_flight)]
                started.clear()
                self._replace()
                yield from self._one_at_a_time(call, items, sorted(broken), lost)
                continue
            hung = self._hung(in_flight, started)
            if hung is not None:
                index = in_flight.pop(hung)
                others = sorted(in_flight.pop(f) for f in list(in_flight))
                started.clear()
                log.error("a reader spent more than %.0f s on %r: readers replaced", self.timeout, items[index])
                self._replace()
                yield index, lost(items[index], ReaderLost(f"the reader did not finish within {self.timeout:g} s"))
                for other in others:  # the calls that shared the pool go back in line
                    in_flight[self._submit(call, items[other])] = other

    def _hung(self, in_flight: dict[Future, int], started: dict[Future, float]) -> Future | None:
        """The first running call past its deadline (running since first seen running)."""
        now = time.monotonic()
        for future in in_flight:
            if future.running():
                since = started.setdefault(future, now)
                if now - since > self.timeout:
                    return future
        return None

    def _one_at_a_time(self, call, items, indices: list[int], lost) -> Iterator[tuple[int, Any]]:
        """Each call alone in the readers: the one that kills its reader again is the file's doing."""
        for index in indices:
            future = self._submit(call, items[index])
            try:
                yield index, future.result(timeout=self.timeout)
            except BrokenProcessPool:
                self._replace()
                log.error("a reader process died reading %r", items[index])
                yield index, lost(items[index], ReaderLost("the reader process died reading it"))
            except TimeoutError:
                self._replace()
                log.error("a reader spent more than %.0f s on %r: readers replaced", self.timeout, items[index])
                yield index, lost(items[index], ReaderLost(f"the reader did not finish within {self.timeout:g} s"))


@contextlib.contextmanager
def _ctrl_c_after_start():
    """Hold a Ctrl-C back until the block ends (on the main thread; elsewhere none arrives).

    A submit may start a reader process; a KeyboardInterrupt in the middle would leave the
    half-started reader untracked, to fail in its start once this process exits.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


def _start_reader(settings: dict[str, str], owner: int, log_format: str = "text",
                  log_level: int = logging.WARNING) -> None:
    """A reader process's start: the worker's SPECQ_* settings, its log format and level
    (a line a reader logs looks like the worker's), and a watch on the worker."""
    for key in [k for k in os.environ if k.startswith("SPECQ_") and k not in settings]:
        del os.environ[key]
    os.environ.update(settings)
    logs.configure(log_level, log_format)
    # The worker stops its readers when it stops. A signal meant for the worker that also
    # reaches its readers (Ctrl-C in a terminal, a service manager signalling the whole group)
    # must not kill them under the message the worker is finishing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(owner, _started(owner)), name="specq-owner-watch",
                     daemon=True).start()
    # A reader pickles each group of spectra it read into one message of megabytes: from
    # memory glibc hands back at once, every message would be new pages, zeroed on first
    # touch (measured: ten times the cost of the pickling itself).
    from workers.memory import keep_freed_memory

    keep_freed_memory()


# Linux's fcntl to resize a pipe (F_SETPIPE_SZ), and the size asked for the readers' results:
# the most an unprivileged process may ask by default (/proc/sys/fs/pipe-max-size).
_SET_PIPE_SIZE = 1031
_RESULT_PIPE_BYTES = 1 << 20


def _widen_result_pipe(executor: ProcessPoolExecutor) -> bool:
    """Give the pipe the readers send their spectra through 1 MiB instead of 64 KiB (Linux).

    A reader's group of spectra is pickled into one message (~0.7 MB for eight apStar
    spectra). Through a 64 KiB pipe the reader waits for the worker to drain it a dozen
    times a message, and both are woken as often; through 1 MiB, a few times. Where the
    size cannot be set (another OS, a lower system limit, an executor laid out otherwise)
    the pipe stays as it is: only the speed differs.

    Returns
    -------
    bool
        Whether the pipe was resized.
    """
    reader = getattr(getattr(executor, "_result_queue", None), "_reader", None)
    if reader is None or not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fcntl.fcntl(reader.fileno(), _SET_PIPE_SIZE, _RESULT_PIPE_BYTES)
    except (OSError, ValueError):
        return False
    return True


_OWNER_POLL_S = 1.0


def _stat(pid: int) -> list[str] | None:
    """The fields of Linux's ``/proc/PID/stat`` after the command name (None where unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """The process's start time, which tells it from a later process given the same pid."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    if not fields:
        return True  # no /proc here: the signal's answer is all there is
    return fields[0] != "Z" and (started is None or len(fields) <= 19 or fields[19] == started)


def _exit_with(owner: int, started: str | None) -> None:
    """Exit when the worker that owns this reader is gone (killed with -9, out of memory):
    nothing else would tell a reader waiting for its next file, and the fork server stays
    up while any of its readers do."""
    while _alive(owner, started):
        time.sleep(_OWNER_POLL_S)
    os._exit(0)


_pools: dict[tuple[int, str, float], ReaderPool] = {}


def reader_pool(count: int, kind: str = "process", timeout: float = DEFAULT_TIMEOUT_S) -> ReaderPool:
    """This process's pool of ``count`` readers of ``kind`` (made on first use, kept).

    A daemonic process (the child of a Celery prefork pool) may start no processes of its
    own: its readers are threads.
    """
    if kind == "process" and multiprocessing.current_process().daemon:
        if not any(pool.kind == "thread" for pool in _pools.values()):
            log.info("this process is a daemon (a prefork pool's child): it reads with threads, not processes")
        kind = "thread"
    key = (count, kind, float(timeout))
    if key not in _pools:
        _pools[key] = ReaderPool(count, kind, timeout)
    return _pools[key]


@atexit.register
def _close_pools() -> None:
    for pool in list(_pools.values()):
        pool._replace(stop=True)
    _pools.clear()
