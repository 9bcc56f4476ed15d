"""Worker heartbeats: who is alive and what each worker process is working on.

A solo worker busy with a long message cannot answer Celery's ``inspect ping`` (its one
thread is in the task), so ``specq status`` would call it dead. Instead every worker
process keeps a heartbeat record, refreshed by a thread every :data:`INTERVAL_S`
seconds and at the start and end of each task: hostname, pid, pool, and the tasks it
runs now (pipeline, task id, number of references, since when).

Where it is kept (:func:`records_for`), so that every process that reads the queue can
read it too:

* Redis broker: under ``specq:worker:<hostname>:<pid>`` with a time to live of
  :data:`TTL_S` (a killed worker's record expires by itself);
* embedded broker: ``<state>/workers/<hostname>-<pid>.json``;
* any other broker (RabbitMQ): a row of table ``worker_heartbeats`` in the result store,
  which every worker of a deployment reaches, whatever the broker and on whatever host.

The last two count a record live while its ``updated`` time is less than :data:`TTL_S`
old; a worker that leaves cleanly removes its record. ``specq status`` reads them without torch.

A worker is live while its heartbeat is at most :data:`STALE_S` old (two beats missed).
A record older than that is *stale*: the worker was killed or hangs. ``specq status``
shows it apart, with its age, until the record expires.
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
        self._records = records_for(settings)

    @property
    def name(self) -> str:
        return f"{self.hostname}:{self.pid}"

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
        try:
            self._records.write(self.name, self.record())
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
            self._records.remove(self.name)
        except Exception as exc:  # the record then expires by itself
            log.warning("heartbeat not removed: %s: %s", type(exc).__name__, exc)


def read_heartbeats(settings, now: float | None = None) -> list[dict]:
    """Every worker process's heartbeat record not expired yet, sorted by hostname and pid.

    Each record carries ``age_s`` (seconds since its last beat) and ``stale`` (older
    than :data:`STALE_S`: the process is not counted live).
    """
    records = records_for(settings).read()
    now = time.time() if now is None else now
    for record in records:
        record["age_s"] = max(0.0, now - float(record.get("updated", 0) or 0))
        record["stale"] = record["age_s"] > STALE_S
    return sorted(records, key=lambda r: (str(r.get("hostname")), int(r.get("pid") or 0)))


def records_for(settings):
    """Where the heartbeats of this deployment are kept (see the module docstring)."""
    from tasks.brokers import kind

    if settings.embedded:
        return FolderRecords(Path(settings.state_dir) / "workers")
    if kind(settings) == "redis":
        return RedisRecords(settings.broker)
    return DatabaseRecords(settings.database)


def _live(record: dict, now: float) -> bool:
    return now - float(record.get("updated", 0)) <= TTL_S


class FolderRecords:
    """One JSON file per worker process in a folder (the embedded broker's machine)."""

    def __init__(self, folder: Path):
        self.folder = folder
        # The heartbeat thread and the task hooks write the same record: one write at a time.
        self._writing = threading.Lock()

    def _file(self, name: str) -> Path:
        return self.folder / ("".join(c if c.isalnum() or c in "-_.@" else "_" for c in name.replace(":", "-"))
                              + ".json")

    def write(self, name: str, record: dict) -> None:
        path = self._file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # never another process's half-written file
        with self._writing:
            tmp.write_text(json.dumps(record))
            tmp.replace(path)  # readers never see half a record

    def remove(self, name: str) -> None:
        with self._writing:  # a write under way does not bring the record back
            self._file(name).unlink(missing_ok=True)

    def read(self) -> list[dict]:
        records, now = [], time.time()
        for path in self.folder.glob("*.json") if self.folder.exists() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed or replaced while read
            if _live(record, now):
                records.append(record)
        return records


class RedisRecords:
    """One key per worker process in the broker's Redis, expiring by itself."""

    def __init__(self, url: str):
        self.url = url
        self._client = None

    def _redis(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    def write(self, name: str, record: dict) -> None:
        self._redis().set(KEY_PREFIX + name, json.dumps(record), ex=int(TTL_S))

    def remove(self, name: str) -> None:
        self._redis().delete(KEY_PREFIX + name)

    def read(self) -> list[dict]:
        client = self._redis()
        keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
        records = []
        for raw in client.mget(keys) if keys else []:
            if raw is None:
                continue  # expired between scan and get
            try:
                records.append(json.loads(raw))
            except ValueError:
                continue
        return records


class DatabaseRecords:
    """One row per worker process in the result store's ``worker_heartbeats`` table.

    Every worker writes its rows to the result store already, from any host: a broker
    that keeps no small records of its own (RabbitMQ) needs nothing more.
    """

    def __init__(self, url: str):
        import sqlalchemy as sa

        from workers.store import ResultStore

        self.engine = ResultStore(url).engine  # the store's connection settings (SQLite lock wait, PostgreSQL timeouts)
        self.table = sa.Table("worker_heartbeats", sa.MetaData(),
                              sa.Column("name", sa.String(300), primary_key=True),
                              sa.Column("updated", sa.Float, nullable=False),
                              sa.Column("record", sa.Text, nullable=False))
        self._created = False

    def _create(self) -> None:
        import sqlalchemy as sa

        if not self._created:
            try:
                self.table.create(self.engine, checkfirst=True)
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                self.table.create(self.engine, checkfirst=True)  # another process created it meanwhile
            self._created = True

    def write(self, name: str, record: dict) -> None:
        self._create()
        row = {"updated": float(record["updated"]), "record": json.dumps(record)}
        with self.engine.begin() as conn:
            if not conn.execute(self.table.update().where(self.table.c.name == name).values(**row)).rowcount:
                # A new process: clear the rows of processes long gone (killed, never removed) first.
                conn.execute(self.table.delete().where(self.table.c.updated < row["updated"] - 100 * TTL_S))
                conn.execute(self.table.insert().values(name=name, **row))

    def remove(self, name: str) -> None:
        self._create()
        with self.engine.begin() as conn:
            conn.execute(self.table.delete().where(self.table.c.name == name))

    def read(self) -> list[dict]:
        import sqlalchemy as sa

        self._create()
        now = time.time()
        with self.engine.connect() as conn:
            raws = conn.execute(sa.select(self.table.c.record).where(self.table.c.updated >= now - TTL_S)).scalars()
            return [json.loads(raw) for raw in raws]
