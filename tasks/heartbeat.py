"""Worker heartbeats: who is alive and what each worker process is working on.

A solo worker busy with a long message cannot answer Celery's ``inspect ping`` (its one
thread is in the task), so ``specq status`` would call it dead. Instead every worker
process keeps a heartbeat record, refreshed by a thread every :data:`INTERVAL_S`
seconds and at the start and end of each task: hostname, pid, pool, and the tasks it
runs now (pipeline, task id, number of references, since when).

Where it is kept: in the broker's Redis under ``specq:worker:<hostname>:<pid>`` with a
time to live of :data:`TTL_S` (a killed worker's record expires by itself); with the
embedded broker, as ``<state>/workers/<hostname>-<pid>.json``, read while its
``updated`` time is less than :data:`TTL_S` old.

A worker is live while its heartbeat is at most :data:`STALE_S` old (two beats missed).
A record older than that is *stale*: the worker was killed or hangs. ``specq status``
shows it apart, with its age, until the record expires.

Standard library and redis only: ``specq status`` reads the records without torch.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("specq.heartbeat")

INTERVAL_S = 5.0
STALE_S = 2 * INTERVAL_S + 1.0  # two beats missed: not live any more
TTL_S = 12 * INTERVAL_S  # a stale record stays this long, shown as stale, then expires
KEY_PREFIX = "specq:worker:"


class Heartbeat:
    """This process's heartbeat: the tasks it runs, written out now and then.

    Parameters
    ----------
    settings : Settings
        Where to write (the broker's Redis, or the state folder when embedded).
    hostname : str
        The Celery node name (``celery@host``).
    pool : str
        The worker's pool (solo, prefork, threads…), shown by ``specq status``.
    """

    def __init__(self, settings, hostname: str, pool: str = ""):
        self.settings = settings
        self.hostname = hostname
        self.pool = pool
        self.pid = os.getpid()
        self.started = time.time()
        self.tasks: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None

    # -- where ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.hostname}:{self.pid}"

    def _file(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in f"{self.hostname}-{self.pid}")
        return Path(self.settings.state_dir) / "workers" / f"{safe}.json"

    def _redis(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.settings.broker, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    # -- what -----------------------------------------------------------------------
    def record(self) -> dict:
        with self._lock:
            tasks = list(self.tasks.values())
        return {"hostname": self.hostname, "pid": self.pid, "pool": self.pool, "started": self.started,
                "updated": time.time(), "tasks": tasks}

    def task_started(self, task_id: str, pipeline: str, n_refs: int) -> None:
        with self._lock:
            self.tasks[task_id] = {"task_id": task_id, "pipeline": pipeline, "refs": n_refs, "since": time.time()}
        self.beat()

    def task_finished(self, task_id: str) -> None:
        with self._lock:
            self.tasks.pop(task_id, None)
        self.beat()

    def beat(self) -> None:
        """Write the record now; trouble reaching the broker is logged, never raised."""
        record = json.dumps(self.record())
        try:
            if self.settings.embedded:
                path = self._file()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(record)
                tmp.replace(path)  # readers never see half a record
            else:
                self._redis().set(KEY_PREFIX + self.name, record, ex=int(TTL_S))
        except Exception as exc:  # a heartbeat must not take the worker down (broker blip, full disk)
            log.warning("heartbeat not written: %s: %s", type(exc).__name__, exc)

    # -- lifetime -------------------------------------------------------------------
    def start(self) -> "Heartbeat":
        self.beat()
        self._thread = threading.Thread(target=self._run, name="specq-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self.beat()

    def stop(self) -> None:
        """Stop beating and remove the record (the worker leaves cleanly)."""
        self._stop.set()
        try:
            if self.settings.embedded:
                self._file().unlink(missing_ok=True)
            else:
                self._redis().delete(KEY_PREFIX + self.name)
        except Exception as exc:  # the record then expires by itself
            log.warning("heartbeat not removed: %s: %s", type(exc).__name__, exc)


def read_heartbeats(settings, now: float | None = None) -> list[dict]:
    """Every worker process's heartbeat record not expired yet, sorted by hostname and pid.

    Each record carries ``age_s`` (seconds since its last beat) and ``stale`` (older
    than :data:`STALE_S`: the process is not counted live).
    """
    records: list[dict] = []
    now = time.time() if now is None else now
    if settings.embedded:
        folder = Path(settings.state_dir) / "workers"
        for path in folder.glob("*.json") if folder.exists() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed or replaced while read
            if now - float(record.get("updated", 0)) <= TTL_S:
                records.append(record)
    else:
        import redis

        client = redis.Redis.from_url(settings.broker, socket_timeout=3)
        keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
        for raw in client.mget(keys) if keys else []:
            if raw is None:
                continue  # expired between scan and get
            try:
                records.append(json.loads(raw))
            except ValueError:
                continue
    for record in records:
        record["age_s"] = max(0.0, now - float(record.get("updated", 0) or 0))
        record["stale"] = record["age_s"] > STALE_S
    return sorted(records, key=lambda r: (str(r.get("hostname")), int(r.get("pid") or 0)))
