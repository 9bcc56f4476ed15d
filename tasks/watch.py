"""``specq watch``: enqueue new spectrum files as they land, each file once.

A file is sent only when it is complete: closed after writing or renamed into place
(inotify, on local disks), or — the fallback that works on network file systems —
when its size and modification time have not changed for ``settle`` seconds across
two scans. What was sent is recorded in a SQLite file in the state folder, so a
restarted watcher sends nothing twice (and if it crashed between sending and
recording, the duplicate delivery overwrites the same rows).
"""
from __future__ import annotations

import fnmatch
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from workers.refs import SPECTRUM_PATTERNS
from workers.settings import Settings

log = logging.getLogger("specq.watch")

PATTERNS = SPECTRUM_PATTERNS


class SentRecord:
    """The files a watcher has sent, persisted across restarts."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("create table if not exists sent (path text primary key, size integer, "
                         "mtime_ns integer, seen real, sent real, n_spectra integer, tasks text)")
        self._db.commit()

    def __contains__(self, rel_path: str) -> bool:
        with self._lock:
            return self._db.execute("select 1 from sent where path = ?", (rel_path,)).fetchone() is not None

    def add(self, rel_path: str, size: int, mtime_ns: int, seen: float, n_spectra: int, tasks: str) -> None:
        with self._lock:
            self._db.execute("insert or replace into sent values (?, ?, ?, ?, ?, ?, ?)",
                             (rel_path, size, mtime_ns, seen, time.time(), n_spectra, tasks))
            self._db.commit()

    def rows(self) -> list[tuple]:
        with self._lock:
            return self._db.execute("select path, size, seen, sent, n_spectra from sent order by sent").fetchall()

    def close(self) -> None:
        self._db.close()


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


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # when this (size, mtime) was first seen
    first_seen: float


class Watcher:
    """Poll (and, where inotify works, listen to) folders; submit complete new files.

    Parameters
    ----------
    folders : sequence of path-like
        Folders under the data root, watched recursively.
    pipelines : str
        Pipelines to send each file to (``"bossnet,astronn_dist"``).
    settings : Settings
    poll_interval : float
        Seconds between full scans (the network-file-system fallback).
    settle : float
        Seconds a file's size and mtime must stay unchanged to count as complete.
    events : bool
        Use inotify events (close-after-write, rename) to send without waiting for a scan.
    submit : callable, optional
        ``submit(paths, pipelines, settings=…)`` (default `tasks.producer.submit`).
    """

    def __init__(self, folders: Sequence, pipelines: str, settings: Settings, *, poll_interval: float = 2.0,
                 settle: float = 2.0, events: bool = True, patterns: Sequence[str] = PATTERNS,
                 submit: Callable | None = None, options: dict | None = None):
        from functools import partial

        from tasks.producer import submit as submit_now

        # A file that cannot be opened yet (a copy in progress) is looked at again later.
        default_submit = partial(submit_now, wait_unreadable=True)

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
        self.patterns = patterns
        self.submit = submit or default_submit
        self.options = options or {}
        self.record = SentRecord(Path(settings.state_dir) / "watch.sqlite")
        self.stats = WatchStats()
        self.pending: dict[str, _Seen] = {}
        self.closed: "queue.Queue[str]" = queue.Queue()
        self._observer = self._start_events() if events else None

    # -- inotify -------------------------------------------------------------------
    def _start_events(self):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.info("watchdog not installed: polling only")
            return None
        closed = self.closed

        class Handler(FileSystemEventHandler):
            def on_closed(self, event):  # written and closed: complete
                if not event.is_directory:
                    closed.put(event.src_path)

            def on_moved(self, event):  # renamed into place: complete
                if not event.is_directory:
                    closed.put(event.dest_path)

        observer = Observer()
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
        return not name.startswith(".") and any(fnmatch.fnmatch(name, p) for p in self.patterns)

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
        return real.relative_to(self.root).as_posix()

    def _observe(self, path: Path, now: float, closed: bool = False) -> tuple[str, _Seen] | None:
        """Update what is known of ``path``; return it when it is complete and new."""
        rel = self._rel(path)
        if rel is None or rel in self.record:
            self.pending.pop(rel or "", None)
            return None
        try:
            st = path.stat()
        except FileNotFoundError:
            self.pending.pop(rel, None)
            return None
        seen = self.pending.get(rel)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            seen = _Seen(st.st_size, st.st_mtime_ns, now, seen.first_seen if seen else now)
            self.pending[rel] = seen
        stable = now - seen.since >= self.settle
        if st.st_size > 0 and (closed or stable):
            return rel, seen
        return None

    def _send(self, ready: list[tuple[str, _Seen]]) -> int:
        if not ready:
            return 0
        paths = [self.root / rel for rel, _ in ready]
        try:
            sub = self.submit(paths, self.pipelines, settings=self.settings, options=self.options)
        except Exception as exc:  # broker down, unreadable file…: keep watching, the files stay unsent
            log.error("could not send %d file(s), will retry: %s: %s", len(paths), type(exc).__name__, exc)
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
            self.record.add(rel, seen.size, seen.mtime_ns, seen.first_seen, by_file.get(rel, 0), tasks)
            self.pending.pop(rel, None)
            self.stats.files += 1
            self.stats.spectra += by_file.get(rel, 0)
            log.info("sent %s (%d spectra; %d message(s) for this scan)", rel, by_file.get(rel, 0), len(task_ids),
                     extra={"path": rel, "spectra": by_file.get(rel, 0)})
        for note in sub.skipped:
            log.info("skipped %s", note)
        return len(ready) - sum(rel in sub.unreadable for rel, _ in ready)

    def scan(self, now: float | None = None) -> int:
        """One full scan: send every complete new file. Returns how many were sent."""
        now = time.time() if now is None else now
        ready = [r for p in self._candidates() if (r := self._observe(p, now))]
        return self._send(ready)

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
                    path = self.closed.get(timeout=timeout)
                except queue.Empty:
                    continue
                ready = []
                for p in [path, *self._drain()]:
                    if self._matches(os.path.basename(p)) and (r := self._observe(Path(p), time.time(), closed=True)):
                        ready.append(r)
                self._send(list(dict(ready).items()))
        finally:
            self.close()
            log.info("%s", self.stats.summary(), extra=self.stats.as_dict())

    def _drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.closed.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self.record.close()
