"""``specq watch``: enqueue new spectrum files as they land, each version of a file once.

A file becomes a *candidate* when it is closed after writing or renamed into place
(inotify, on local disks), or — the fallback that works on network file systems — when
its size and modification time have not changed for ``settle`` seconds. A candidate is
sent only when it is also structurally whole (:func:`workers.readers.completeness.why_incomplete`):
a close is not the end of a file. One that is not whole yet is looked at again at every
scan and at its next event, and one still incomplete after ``incomplete_after`` seconds
is reported in the log and in ``specq status``; it is never sent half-written, and never
given up on.

Temporary names of transfer tools (dot-files such as rsync's ``.name.XXXXXX``, ``*.tmp``,
``*.part``) are ignored until renamed into place. A file whose size, modification time
or inode changes after it was sent is sent again: the store keeps one row per spectrum.

What was sent (with the size, mtime and inode it had) and what waits to be whole are
kept in a SQLite file in the state folder, so a restarted watcher sends nothing twice,
sends what arrived while it was down, and keeps counting how long a file has been
incomplete. If it crashed between sending and recording, the duplicate delivery
overwrites the same rows. One watcher holds a record at a time (a lock file beside it):
two would each send every file. A file the producer refuses (a path too long for the
store's key, a folder unmounted while it was examined) is reported once a version, tried
again every :data:`REFUSED_RETRY_S` while it stays, and holds back no other file.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from workers.readers.completeness import why_incomplete
from workers.readers.formats import FILE_PATTERNS
from workers.refs import RefError, check_text
from workers.settings import Settings, SettingsError, is_url

log = logging.getLogger("specq.watch")

# Names transfer tools write to before renaming into place (dot-files are ignored too).
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload", "~")
INCOMPLETE_AFTER_S = 900.0  # a file not whole after this long is reported
# A file the producer refused is tried again this often while it stays unchanged: a refusal
# may pass (its folder briefly unmounted, a stale NFS handle), and costs one look when it does not.
REFUSED_RETRY_S = 300.0
RECORD_NAME = "watch.sqlite"


class Version(NamedTuple):
    """What identifies one version of a file: a change in any of them is a new file to send."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Version":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class SentRecord:
    """The files a watcher has sent, and those waiting to be whole; persisted across restarts."""

    def __init__(self, path: Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"cannot make the folder {path.parent} for the watch record: "
                                f"{exc.strerror or exc} (SPECQ_STATE_DIR)") from None
        self.path = path
        self._owner = self._claim(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("create table if not exists sent (path text primary key, size integer, "
                         "mtime_ns integer, seen real, sent real, n_spectra integer, tasks text)")
        if "inode" not in {row[1] for row in self._db.execute("pragma table_info(sent)")}:
            self._db.execute("alter table sent add column inode integer")  # a record older than inodes
        self._db.execute("create table if not exists incomplete (path text primary key, first_seen real, "
                         "checked real, reason text, reported real)")
        self._db.commit()

    @staticmethod
    def _claim(path: Path):
        """The open lock file that makes this watcher the only one of record ``path`` (None without flock).

        Two watchers on one record would each send every file before either records it.
        """
        try:
            import fcntl
        except ImportError:  # no flock here: nothing to hold
            return None
        lock_path = path.with_name(path.name + ".lock")
        try:
            owner = open(lock_path, "a+")
        except OSError as exc:
            raise SettingsError(f"cannot open {lock_path}: {exc.strerror or exc} (SPECQ_STATE_DIR)") from None
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner.seek(0)
            pid = owner.read().strip() or "?"
            owner.close()
            raise SettingsError(f"another specq watch (process {pid}) uses the record {path}; "
                                "give one watch every folder, or each its own SPECQ_STATE_DIR") from None
        except OSError as exc:  # a file system without locks: watch, unguarded
            log.warning("cannot lock %s (%s): a second watch on this record would not be refused", lock_path,
                        exc.strerror or exc)
            owner.close()
            return None
        owner.truncate(0)
        owner.write(str(os.getpid()))
        owner.flush()
        return owner

    def __contains__(self, rel_path: str) -> bool:
        return self.version(rel_path) is not None

    def version(self, rel_path: str) -> Version | None:
        """The version of ``rel_path`` last sent, or None."""
        with self._lock:
            row = self._db.execute("select size, mtime_ns, inode from sent where path = ?", (rel_path,)).fetchone()
        return None if row is None else Version(row[0], row[1], row[2] if row[2] is not None else -1)

    def add(self, rel_path: str, version: Version, seen: float, n_spectra: int, tasks: str) -> None:
        with self._lock:
            self._db.execute("insert or replace into sent (path, size, mtime_ns, inode, seen, sent, n_spectra, tasks) "
                             "values (?, ?, ?, ?, ?, ?, ?, ?)",
                             (rel_path, version.size, version.mtime_ns, version.inode, seen, time.time(), n_spectra,
                              tasks))
            self._db.execute("delete from incomplete where path = ?", (rel_path,))
            self._db.commit()

    def rows(self) -> list[tuple]:
        with self._lock:
            return self._db.execute("select path, size, seen, sent, n_spectra from sent order by sent").fetchall()

    def incomplete(self, rel_path: str, now: float, reason: str) -> tuple[float, float | None]:
        """Note that ``rel_path`` is not whole yet; returns (first seen so, reported at or None)."""
        with self._lock:
            self._db.execute("insert into incomplete (path, first_seen, checked, reason) values (?, ?, ?, ?) "
                             "on conflict(path) do update set checked = excluded.checked, reason = excluded.reason",
                             (rel_path, now, now, reason))
            self._db.commit()
            first, reported = self._db.execute("select first_seen, reported from incomplete where path = ?",
                                               (rel_path,)).fetchone()
        return first, reported

    def mark_reported(self, rel_path: str, now: float) -> None:
        with self._lock:
            self._db.execute("update incomplete set reported = ? where path = ?", (now, rel_path))
            self._db.commit()

    def incomplete_paths(self) -> list[str]:
        """The files waiting to be whole, as recorded (by this watcher or an earlier run)."""
        with self._lock:
            return [row[0] for row in self._db.execute("select path from incomplete")]

    def forget_incomplete(self, rel_path: str) -> None:
        with self._lock:
            self._db.execute("delete from incomplete where path = ?", (rel_path,))
            self._db.commit()

    def close(self) -> None:
        self._db.close()
        if self._owner is not None:
            self._owner.close()  # the lock goes with it
            self._owner = None


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and a first Ctrl-C set ``stop``; a second Ctrl-C stops at once (call from the main thread).

    The watcher then stops after the scan under way, which records what it sent: an
    interrupt between sending and recording would send those files again after a restart.
    """
    def interrupted(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, interrupted)


def long_incomplete(settings: Settings) -> list[dict]:
    """Files a watcher has reported as incomplete for long (for ``specq status``), oldest first."""
    path = Path(settings.state_dir) / RECORD_NAME
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("select path, first_seen, reason from incomplete where reported is not null "
                          "order by first_seen").fetchall()
    except sqlite3.OperationalError:  # a record from before incomplete files were kept
        return []
    finally:
        db.close()
    now = time.time()
    return [{"path": p, "age_s": now - first, "reason": reason} for p, first, reason in rows]


@dataclass
class WatchStats:
    """What a watcher sent since it started (its summary when it stops)."""

    files: int = 0
    spectra: int = 0
    messages: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def as_dict(self) -> dict:
        return {"files": self.files, "spectra": self.spectra, "messages": self.messages,
                "elapsed_s": round(self.elapsed, 1)}

    def summary(self) -> str:
        return (f"watch stopped after {self.elapsed:.1f} s: {self.files} file(s) sent, "
                f"{self.spectra} spectra in {self.messages} message(s)")


def _same(sent: Version | None, now: Version) -> bool:
    """Whether the version sent is the one there now (a record without inodes compares the rest)."""
    if sent is None:
        return False
    return sent == now or (sent.inode == -1 and sent[:2] == now[:2])


@dataclass
class _Seen:
    version: Version
    since: float  # when this version was first seen
    first_seen: float


class Watcher:
    """Poll (and, where file events work, listen to) folders; submit whole new files.

    Parameters
    ----------
    folders : sequence of path-like
        Folders under the data root, watched recursively.
    pipelines : str
        Pipelines to send each file to (``"bossnet,astronn_dist"``).
    settings : Settings
    poll_interval : float
        Seconds between full scans (the network-file-system fallback, and the second
        look at files not whole yet).
    settle : float
        Seconds a file's size and mtime must stay unchanged to make it a candidate.
    events : bool or "poll"
        True: inotify events (close-after-write, rename) make a candidate without
        waiting for a scan. ``"poll"``: watchdog's polling observer, as on network file
        systems, where a rename is reported as a delete and a create. False: scans only.
    incomplete_after : float
        Seconds after which a file still not whole is reported (log and ``specq status``).
    submit : callable, optional
        ``submit(paths, pipelines, settings=…, options=…)`` (default `tasks.producer.submit`,
        which leaves a file it cannot open yet for a later look).
    """

    def __init__(self, folders: Sequence, pipelines: str, settings: Settings, *, poll_interval: float = 2.0,
                 settle: float = 2.0, events: bool | str = True, patterns: Sequence[str] = FILE_PATTERNS,
                 submit: Callable | None = None, options: dict | None = None,
                 incomplete_after: float = INCOMPLETE_AFTER_S):
        from functools import partial

        from tasks.producer import submit as submit_now

        # A file that cannot be opened yet (a copy in progress) is looked at again later.
        default_submit = partial(submit_now, wait_unreadable=True)

        if is_url(settings.data_root):
            raise ValueError("watch sends files as they land in a folder, and the data root is a URL: "
                             "name the spectra with specq enqueue instead (docs/remote-data.md)")
        root = Path(settings.data_root).resolve()
        self.folders = [Path(f).expanduser().resolve() for f in folders]
        for f in self.folders:
            if not f.is_dir():
                raise NotADirectoryError(f"{f}: not a folder")
            if f != root and root not in f.parents:
                raise ValueError(f"{f} is not under the data root {root} (set SPECQ_DATA_ROOT)")
        self.root = root
        self.pipelines = pipelines
        self.settings = settings
        self.poll_interval = poll_interval
        self.settle = settle
        self.incomplete_after = incomplete_after
        self.patterns = patterns
        self.submit = submit or default_submit
        self.options = options or {}
        self.record = SentRecord(Path(settings.state_dir) / RECORD_NAME)
        self.stats = WatchStats()
        self.pending: dict[str, _Seen] = {}
        self._not_text: set[str] = set()  # names that are not UTF-8, reported
        # Files the producer refused: the version refused, and when to try it again.
        self._refused: dict[str, tuple[Version, float]] = {}
        self._left_incomplete = set(self.record.incomplete_paths())  # by an earlier run: checked at the first scan
        self.events: "queue.Queue[tuple[str, str]]" = queue.Queue()  # (kind, path)
        self._observer = self._start_events(events) if events else None

    # -- file events ------------------------------------------------------------------
    def _start_events(self, kind: bool | str):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
            from watchdog.observers.polling import PollingObserver
        except ImportError:
            log.info("watchdog not installed: polling only")
            return None
        events = self.events

        class Handler(FileSystemEventHandler):
            def on_closed(self, event):  # written and closed: a candidate
                if not event.is_directory:
                    events.put(("closed", event.src_path))

            def on_moved(self, event):  # renamed into place: a candidate; the old name is gone
                if not event.is_directory:
                    events.put(("deleted", event.src_path))
                    events.put(("closed", event.dest_path))

            def on_created(self, event):  # polling reports a rename as delete + create
                if not event.is_directory:
                    events.put(("created", event.src_path))

            def on_deleted(self, event):
                if not event.is_directory:
                    events.put(("deleted", event.src_path))

        observer = PollingObserver(timeout=self.poll_interval) if kind == "poll" else Observer()
        try:
            for f in self.folders:
                observer.schedule(Handler(), str(f), recursive=True)
            observer.start()
        except OSError as exc:  # e.g. inotify limits, or a file system without events
            log.warning("file events unavailable (%s): polling only", exc)
            return None
        return observer

    # -- scanning ------------------------------------------------------------------
    def _matches(self, name: str) -> bool:
        """A spectrum file's name, not a transfer's temporary one."""
        if name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES):
            return False
        return any(fnmatch.fnmatch(name, p) for p in self.patterns)

    def _candidates(self):
        for folder in self.folders:
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if self._matches(name):
                        yield Path(dirpath) / name

    def _rel(self, path: Path) -> str | None:
        real = path.resolve()
        if real != self.root and self.root not in real.parents:
            log.warning("%s resolves outside the data root; ignored", path)
            return None
        rel = real.relative_to(self.root).as_posix()
        try:
            check_text(rel)
        except RefError as exc:  # no message, record or row can name it: said once, then left alone
            if rel not in self._not_text:
                self._not_text.add(rel)
                log.error("%s; not sent", exc)
            return None
        return rel

    def _forget(self, path: Path) -> None:
        """A file gone (deleted, or renamed away): nothing of it waits any more."""
        rel = self._rel(path)
        if rel is not None:
            self._forget_rel(rel)

    def _forget_rel(self, rel: str, recorded: bool = False) -> None:
        """``recorded``: the record may list it as incomplete though this watcher never saw it."""
        self._refused.pop(rel, None)
        if self.pending.pop(rel, None) is not None or recorded:
            self.record.forget_incomplete(rel)

    def _observe(self, path: Path, now: float, closed: bool = False) -> tuple[str, _Seen] | None:
        """Update what is known of ``path``; return it when it is whole and not sent in this version."""
        rel = self._rel(path)
        if rel is None:
            return None
        try:
            version = Version.of(path.stat())
        except FileNotFoundError:
            self._forget(path)
            return None
        if _same(self.record.version(rel), version):  # sent, and unchanged since
            self.pending.pop(rel, None)
            return None
        refused = self._refused.get(rel)
        if refused is not None and refused[0] == version and now < refused[1]:  # refused, unchanged, not due
            return None
        seen = self.pending.get(rel)
        if seen is None or seen.version[:2] != version[:2]:
            # New, or still changing: the settle clock (re)starts.
            seen = _Seen(version, now, seen.first_seen if seen else now)
            self.pending[rel] = seen
        elif seen.version != version:  # replaced by a file of the same size and mtime
            seen.version = version
        unchanged_for = now - seen.since
        if not (closed or unchanged_for >= self.settle):
            return None
        reason = why_incomplete(path)
        if reason is not None:
            self._still_incomplete(rel, now, reason)
            return None
        return rel, seen

    def _still_incomplete(self, rel: str, now: float, reason: str) -> None:
        """A candidate not whole yet: look again later; say so once it has been so for long."""
        first, reported = self.record.incomplete(rel, now, reason)
        log.debug("%s: not whole yet (%s): looking again later", rel, reason)
        if reported is None and now - first >= self.incomplete_after:
            log.warning("%s: still incomplete after %.0f s (%s): not sent; looking again at every scan", rel,
                        now - first, reason, extra={"path": rel})
            self.record.mark_reported(rel, now)

    def _send(self, ready: list[tuple[str, _Seen]], now: float) -> int:
        if not ready:
            return 0
        from tasks.producer import InputError

        paths = [self.root / rel for rel, _ in ready]
        try:
            sub = self.submit(paths, self.pipelines, settings=self.settings, options=self.options)
        except InputError as exc:
            # The producer sends nothing when it refuses one file: halves, until the refused
            # ones are alone, so that they hold back no other file.
            if len(ready) > 1:
                return self._send(ready[:len(ready) // 2], now) + self._send(ready[len(ready) // 2:], now)
            rel, seen = ready[0]
            before = self._refused.get(rel)
            self._refused[rel] = (seen.version, now + REFUSED_RETRY_S)
            self.pending.pop(rel, None)
            self.record.forget_incomplete(rel)  # whole, and refused: not waited for
            if before is None or before[0] != seen.version:  # said once a version
                log.error("%s: not sent: %s (trying again every %.0f s while it stays)", rel, exc, REFUSED_RETRY_S,
                          extra={"path": rel})
            else:
                log.debug("%s: still not sent: %s", rel, exc)
            return 0
        except Exception as exc:  # broker down, database down…: keep watching, the files stay unsent
            log.error("could not send %d file(s); trying again at the next scan: %s: %s", len(paths),
                      type(exc).__name__, exc)
            return 0
        by_file: dict[str, int] = {}
        for refs in sub.refs.values():
            for r in refs:
                by_file[r.path] = by_file.get(r.path, 0) + 1
        task_ids = [i for ids in sub.task_ids.values() for i in ids]
        tasks = ",".join(task_ids)
        self.stats.messages += len(task_ids)
        for rel, seen in ready:
            if rel in sub.unreadable:
                continue  # retried at the next scan
            again = rel in self.record
            self.record.add(rel, seen.version, seen.first_seen, by_file.get(rel, 0), tasks)
            self.pending.pop(rel, None)
            self.stats.files += 1
            self.stats.spectra += by_file.get(rel, 0)
            log.info("sent %s%s (%d spectra; %d message(s) for this scan)", rel, " again: it changed" if again else "",
                     by_file.get(rel, 0), len(task_ids), extra={"path": rel, "spectra": by_file.get(rel, 0)})
        for note in sub.skipped:  # a file sent whole for a worker to flag has its note too: not "skipped"
            log.info("note: %s", note)
        return len(ready) - sum(rel in sub.unreadable for rel, _ in ready)

    def scan(self, now: float | None = None) -> int:
        """One full scan: send every whole file not sent in its present version. Returns how many."""
        now = time.time() if now is None else now
        ready = [r for p in self._candidates() if (r := self._observe(p, now))]
        # Deleted or renamed away (polling may report neither), while watching or while stopped.
        # What an earlier run left incomplete is looked at once; those still there are pending now.
        left, self._left_incomplete = self._left_incomplete, set()
        for rel in {*self.pending, *self._refused, *left}:
            if not (self.root / rel).exists():
                self._forget_rel(rel, recorded=rel in left)
        return self._send(ready, now)

    def handle(self, events: Sequence[tuple[str, str]], now: float | None = None) -> int:
        """Act on file events: send the candidates that are whole; returns how many were sent."""
        now = time.time() if now is None else now
        ready: dict[str, _Seen] = {}
        for kind, name in events:
            path = Path(name)
            if not self._matches(path.name):
                continue
            if kind == "deleted":
                self._forget(path)
            elif (r := self._observe(path, now, closed=kind == "closed")):
                ready[r[0]] = r[1]
        return self._send(list(ready.items()), now)

    def run(self, stop: threading.Event | None = None, max_seconds: float | None = None) -> None:
        """Scan and listen until ``stop`` is set (or ``max_seconds`` pass)."""
        stop = stop or threading.Event()
        self.stats.started = time.monotonic()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        next_scan = 0.0
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if time.monotonic() >= next_scan:
                    self.scan()
                    next_scan = time.monotonic() + self.poll_interval
                timeout = max(0.0, min(next_scan - time.monotonic(), 0.5))
                try:
                    event = self.events.get(timeout=timeout)
                except queue.Empty:
                    continue
                self.handle([event, *self._drain()])
        finally:
            self.close()
            log.info("%s", self.stats.summary(), extra=self.stats.as_dict())

    def _drain(self) -> list[tuple[str, str]]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self.record.close()
