"""The embedded broker: kombu's filesystem transport, made to survive a killed worker.

kombu's own filesystem transport deletes a message file the moment a worker takes it,
so a worker killed mid-message loses that message. Here a consumer moves the file it
takes into its own in-flight folder instead, and deletes it only when the message is
acknowledged; a rejected message (``requeue``) and, at a clean shutdown, every
unacknowledged one is moved back to the queue.

A consumer holds an exclusive ``flock`` on its in-flight folder's lock file for as long
as it lives. The kernel drops that lock when the process ends, however it ends
(``kill -9`` included), so a lock that can be taken marks a consumer that is gone. Every
consumer looks for such folders when it first polls (a worker starting up) and then
every :data:`SWEEP_INTERVAL_S` seconds, and moves their messages back to the queue
under their original names (so they are next in line).

Layout under the broker folder (:func:`transport_options`, :func:`queue_report`)::

    queue/<ns>_<uuid>.<queue>.msg      waiting messages, oldest first
    inflight/<session>.lock            locked by a live consumer
    inflight/<session>/<ns>_<uuid>.<queue>.msg   its unacknowledged messages
    control/                           kombu's exchange bindings
    unreadable/                        files in queue/ that were no message

A consumer asks its queues in lane order at every fetch (:class:`LaneOrder`): ordinary
lanes before bulk ones (see :mod:`tasks.lanes`), instead of kombu's turns.

All processes of one machine (producers, workers, ``specq status``) share the folder;
no server runs. The in-flight messages of a worker that is alive but stuck are not
taken back (there is no visibility timeout): only those of a process that is gone.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from pathlib import Path
from queue import Empty

from kombu.transport import filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger("specq.broker")

#: How often a polling consumer looks for the in-flight messages of a consumer that is gone.
SWEEP_INTERVAL_S = 5.0
#: How long an idle consumer waits before it lists the queue again. kombu's 1 s default
#: would hold each new message up to a second; a listing costs a few microseconds.
POLL_INTERVAL_S = 0.05
# The broker folder's subfolders.
QUEUE, INFLIGHT, PROCESSED, CONTROL, UNREADABLE = "queue", "inflight", "processed", "control", "unreadable"

# Lock files this process holds; a forked child closes its copies so that the lock
# lives exactly as long as the process that took it (flock is shared across fork).
_held_lock_fds: set[int] = set()
_broker_states: dict[str, virtual.BrokerState] = {}


def _close_inherited_locks() -> None:
    for fd in list(_held_lock_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_lock_fds.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _write_flushed(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _flush_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the file system allows it.

    The message is in the queue by then: a file system that cannot flush a folder (EINVAL
    on some) or fails to is said in the log, never an error that would send the message twice.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("the broker folder %s was not flushed to disk: %s", folder, exc)


def transport_options(folder: Path) -> dict:
    """kombu's filesystem transport options for the embedded broker in ``folder``.

    Nothing is created here: the folders are made when a channel first opens.
    """
    return {"data_folder_in": str(folder / QUEUE), "data_folder_out": str(folder / QUEUE),
            "processed_folder": str(folder / PROCESSED), "control_folder": str(folder / CONTROL),
            "inflight_folder": str(folder / INFLIGHT), "store_processed": False,
            "polling_interval": POLL_INTERVAL_S}


def queue_report(folder: Path, queue: str, now: float | None = None) -> dict:
    """What the transport's count does not tell of ``queue`` in the broker in ``folder``.

    Returns
    -------
    dict
        ``oldest_s``: the oldest waiting message's age in seconds (None when none waits);
        ``in_flight``: messages taken by a worker and not yet acknowledged.
    """
    now = time.time() if now is None else now
    waiting, inflight = folder / QUEUE, folder / INFLIGHT
    ages = [p.stat().st_mtime for p in waiting.glob(f"*.{queue}.msg")] if waiting.is_dir() else []
    return {"oldest_s": now - min(ages) if ages else None,
            "in_flight": sum(1 for _ in inflight.glob(f"*/*.{queue}.msg")) if inflight.is_dir() else 0}


def restore_orphans(inflight: Path, queue_folder: Path) -> int:
    """Move the in-flight messages of consumers that are gone back to the queue.

    Parameters
    ----------
    inflight : Path
        The folder of the consumers' lock files and in-flight folders.
    queue_folder : Path
        Where waiting messages are.

    Returns
    -------
    int
        How many messages went back to the queue.
    """
    restored = 0
    if not inflight.is_dir():
        return 0
    for lock_path in sorted(inflight.glob("*.lock")):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # another sweeper finished with it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its consumer is alive
            folder = lock_path.with_suffix("")
            names = sorted(os.listdir(folder)) if folder.is_dir() else []
            for name in names:
                try:
                    os.rename(folder / name, queue_folder / name)
                    restored += 1
                except FileNotFoundError:
                    pass
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # keep the lock file: the next sweep tries again
                log.warning("embedded broker: cannot clear %s (%s)", folder, exc)
                continue
            # The lock file goes last: while it exists, a sweep still finds the folder.
            lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return restored


class LaneOrder:
    """Ask a channel's queues in lane order at every fetch: every ordinary queue before any bulk one.

    Stands in for kombu's ``FairCycle``, which takes the queues in turns, so that a bulk
    backlog would get every other fetch while new spectra wait.
    """

    def __init__(self, fun, resources, predicate=Empty):
        self.fun, self.resources, self.predicate = fun, resources, predicate

    def get(self, callback, **kwargs):
        from tasks.lanes import BULK_SUFFIX

        for queue in sorted(self.resources, key=lambda name: name.endswith(BULK_SUFFIX)):
            try:
                return self.fun(queue, callback, **kwargs)
            except self.predicate:
                continue
        raise self.predicate()

    def close(self):
        """Nothing to release (kombu's cycle interface)."""


class QoS(virtual.QoS):
    """Acknowledging or dropping a message deletes its in-flight file."""

    def ack(self, delivery_tag):
        self.channel._forget(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        if not requeue:
            self.channel._forget(delivery_tag)
        super().reject(delivery_tag, requeue=requeue)  # requeue: Channel._restore moves it back


class Channel(filesystem.Channel):
    """A filesystem channel that keeps each taken message until it is acknowledged."""

    QoS = QoS

    def __init__(self, *args, **kwargs):
        self._inflight: dict[str, Path] = {}  # delivery tag → its file in our in-flight folder
        self._no_ack_queues: set[str] = set()  # e.g. remote-control queues: nothing to keep
        self._session: tuple[Path, int, int] | None = None  # (folder, lock fd, owner pid)
        self._last_sweep = float("-inf")
        super().__init__(*args, **kwargs)
        for folder in (self.data_folder_in, self.data_folder_out, self.control_folder, self.inflight_folder):
            Path(folder).mkdir(parents=True, exist_ok=True)

    @property
    def inflight_folder(self) -> Path:
        option = self.transport_options.get("inflight_folder")
        return Path(option) if option else Path(self.data_folder_in).parent / INFLIGHT

    # -- our in-flight folder ----------------------------------------------------
    def _session_folder(self) -> Path:
        if self._session is None:
            root = self.inflight_folder
            root.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex}"
            # Locked under a temporary name, then renamed: a sweeper never sees it unlocked.
            temporary = root / f".{name}.lock.tmp"
            fd = os.open(temporary, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _held_lock_fds.add(fd)
            os.rename(temporary, root / f"{name}.lock")
            (root / name).mkdir()
            self._session = (root / name, fd, os.getpid())
        return self._session[0]

    def _release_session(self, queue_folder: Path | None) -> None:
        """At a clean close: anything still in flight goes back to ``queue_folder``."""
        if self._session is None:
            return
        folder, fd, pid = self._session
        self._session = None
        if pid != os.getpid():  # a forked copy of the channel: the folder is its parent's
            return
        for name in sorted(os.listdir(folder)):
            os.rename(folder / name, queue_folder / name)
        folder.rmdir()
        folder.with_name(f"{folder.name}.lock").unlink(missing_ok=True)
        _held_lock_fds.discard(fd)
        os.close(fd)

    def _forget(self, delivery_tag) -> None:
        path = self._inflight.pop(delivery_tag, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        restored = restore_orphans(self.inflight_folder, Path(self.data_folder_in))
        if restored:
            log.warning("embedded broker: %d message(s) of a worker that stopped without acknowledging "
                        "them are back in the queue", restored)

    # -- kombu's channel interface ---------------------------------------------
    def _reset_cycle(self):
        self._cycle = LaneOrder(self._get_and_deliver, self._active_queues, Empty)

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_get(self, queue, no_ack=False, **kwargs):
        try:
            message = self.Message(self._get(queue, keep=not no_ack), channel=self)
        except Empty:
            return None
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _put(self, queue, payload, **kwargs):
        """Write the message under a hidden name, then rename: a reader never sees half a file.

        Sent means on disk: the file is flushed before its rename and the folder after it,
        so a power loss or a crash of the machine keeps every message a producer was told
        was sent (~0.5 ms a message on an SSD).
        """
        name = f"{time.time_ns():020d}_{uuid.uuid4()}.{queue}.msg"  # oldest first when sorted
        folder = Path(self.data_folder_out)
        temporary = folder / f".{name}.tmp"
        try:
            _write_flushed(temporary, str_to_bytes(dumps(payload)))
            os.replace(temporary, folder / name)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise filesystem.ChannelError(f"cannot add {name!r} to {folder}") from exc
        _flush_folder(folder)

    def _get(self, queue, timeout=None, keep: bool | None = None):
        """Take the oldest message of ``queue`` into our in-flight folder."""
        self._maybe_sweep()
        if keep is None:
            keep = queue not in self._no_ack_queues
        queue_folder = Path(self.data_folder_in)
        wanted = f"{queue}.msg"
        for name in sorted(n for n in os.listdir(queue_folder) if n.partition(".")[2] == wanted):
            taken = self._session_folder() / name
            try:
                os.rename(queue_folder / name, taken)  # atomic: one consumer wins
            except FileNotFoundError:
                continue  # another consumer took it first
            try:
                payload = loads(bytes_to_str(taken.read_bytes()))
                tag = payload["properties"]["delivery_tag"]
            except (OSError, ValueError, TypeError, KeyError) as exc:
                self._set_aside(taken, exc)
                continue
            if keep:
                self._inflight[tag] = taken
                os.utime(taken)  # its age in flight counts from now (`specq status`: held messages)
            else:
                taken.unlink(missing_ok=True)
            return payload
        raise Empty()

    def _set_aside(self, path: Path, exc: Exception) -> None:
        """A file that is no message is moved out of the way and named in the log, not lost."""
        rejected = Path(self.data_folder_in).parent / UNREADABLE
        rejected.mkdir(exist_ok=True)
        os.replace(path, rejected / path.name)
        log.error("embedded broker: %s is not a readable message (%s: %s); moved to %s",
                  path.name, type(exc).__name__, exc, rejected)

    def _restore(self, message):
        """Back to the queue: our in-flight file is moved back, under its own name."""
        path = self._inflight.pop(message.delivery_tag, None)
        if path is not None:
            try:
                os.rename(path, Path(self.data_folder_in) / path.name)
                return
            except FileNotFoundError:
                pass
        super()._restore(message)

    def close(self):
        queue_folder = Path(self.data_folder_in) if self._session is not None else None
        super().close()  # restores the unacknowledged messages it knows
        self._release_session(queue_folder)


class Transport(filesystem.Transport):
    """The embedded broker's transport (``broker_transport = "tasks.embedded:Transport"``)."""

    Channel = Channel

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        # kombu keeps one table of declared bindings for every filesystem broker of the
        # process; a process that uses two broker folders (tests, the demo) needs one each,
        # or a binding declared in the first is never written to the second.
        folder = str(client.transport_options.get("control_folder", ""))
        self.state = _broker_states.setdefault(folder, virtual.BrokerState())
