"""The ledger of what was sent: every reference a producer publishes, until a row settles it.

A broker can lose a message without a word (a Redis without AOF that restarts, a queue
purged by hand). So a producer records each reference in the result store *before* it
publishes the message that carries it (:func:`record`), and the result store settles
the entry when it writes a row for that spectrum, result or failure (:func:`settle`,
called inside the row's own transaction). What stays in the ledger was sent and never
finished: ``specq status`` counts it, ``specq status --unfinished`` lists it, and
``specq reconcile`` sends it again.

One entry per (pipeline, spectrum key): sending the same spectrum again updates its
entry (task id, time, number of sends). A reference to a whole file or a whole HDU
(``hdu`` or ``row`` unknown) is settled by any row of its file, since the worker names
the spectra it finds there.

Celery-free: the table lives beside the result tables (:class:`workers.store.ResultStore`
builds it into its metadata), so SQLite and PostgreSQL work alike.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa

TABLE = "sent_refs"
_IN_CHUNK = 500  # keys per IN (...) list


def build_table(metadata: sa.MetaData) -> sa.Table:
    """The ledger's SQL table, in the result store's metadata."""
    return sa.Table(
        TABLE, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(32), nullable=False),
        sa.Column("spectrum_key", sa.String(512), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("hdu", sa.Integer),  # NULL: the whole file (the worker lists its spectra)
        sa.Column("whole", sa.Boolean, nullable=False),  # hdu or row unknown: any row of the file settles it
        sa.Column("ref", sa.JSON, nullable=False),  # the reference as it travels, to send it again
        sa.Column("options", sa.JSON),  # draws, seed… of the message
        sa.Column("model", sa.String(64)),  # the model the message asks for, when it names one
        sa.Column("task_id", sa.String(64), nullable=False),  # the last message that carried it
        sa.Column("sent", sa.DateTime(timezone=True), nullable=False),  # when that message was published
        sa.Column("sends", sa.Integer, nullable=False),
        sa.UniqueConstraint("pipeline", "spectrum_key", name=f"uq_{TABLE}_pipeline_key"),
        sa.Index(f"ix_{TABLE}_pipeline_path", "pipeline", "path"),  # every row write settles by path
        sa.Index(f"ix_{TABLE}_sent", "sent"),  # status and reconcile read the oldest first
    )


@dataclass(frozen=True)
class Unfinished:
    """A reference sent and not settled by a row."""

    pipeline: str
    spectrum_key: str
    ref: dict
    options: dict
    task_id: str
    sent: dt.datetime
    sends: int

    def age_s(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.timezone.utc)
        return (now - _utc(self.sent)).total_seconds()


def _key(ref: Mapping[str, Any]) -> str:
    hdu = "*" if ref.get("hdu") is None else ref["hdu"]
    row = "*" if ref.get("row") is None else ref["row"]
    return f"{ref['path']}:{hdu}:{row}"


def record(store, pipeline: str, refs: Sequence[Mapping[str, Any]], task_id: str,
           options: Mapping[str, Any] | None = None, now: dt.datetime | None = None) -> None:
    """Record that message ``task_id`` is about to carry ``refs`` (JSON references) to ``pipeline``.

    Called before the message is published: a message the broker never had still has
    its entries. Sending a spectrum again updates its entry and counts the send.
    """
    if not refs:
        return
    store.create()
    table = store.sent_refs
    now = now or dt.datetime.now(dt.timezone.utc)
    options = dict(options or {})
    rows = {}
    for ref in refs:
        if not isinstance(ref, Mapping) or not isinstance(ref.get("path"), str):
            continue  # malformed (a dead letter's): its row is keyed by the message, not by a spectrum
        key = _key(ref)
        rows[key] = {"pipeline": pipeline, "spectrum_key": key, "path": ref["path"], "hdu": ref.get("hdu"),
                     "whole": ref.get("hdu") is None or ref.get("row") is None, "ref": dict(ref),
                     "options": options, "model": options.get("model"), "task_id": task_id, "sent": now,
                     "sends": 1}
    if not rows:
        return
    dialect = store.engine.dialect.name
    with store.engine.begin() as conn:
        if dialect in ("sqlite", "postgresql"):
            insert = import_module(f"sqlalchemy.dialects.{dialect}").insert
            stmt = insert(table)
            stmt = stmt.on_conflict_do_update(
                index_elements=["pipeline", "spectrum_key"],
                set_={"ref": stmt.excluded.ref, "options": stmt.excluded.options, "model": stmt.excluded.model,
                      "task_id": stmt.excluded.task_id, "sent": stmt.excluded.sent, "sends": table.c.sends + 1})
            conn.execute(stmt, list(rows.values()))
            return
        for key, row in rows.items():  # any other database: read, then write, in one transaction
            match = sa.and_(table.c.pipeline == pipeline, table.c.spectrum_key == key)
            sends = conn.execute(sa.select(table.c.sends).where(match).with_for_update()).scalar()
            if sends is None:
                conn.execute(table.insert().values(**row))
            else:
                conn.execute(table.update().where(match).values(**{**row, "sends": sends + 1}))


def settle(conn: sa.Connection, table: sa.Table, pipeline: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Settle the entries of the spectra ``rows`` are written for, in the rows' transaction."""
    keys = sorted({r["spectrum_key"] for r in rows if r.get("spectrum_key")})
    paths = sorted({r["path"] for r in rows if r.get("path")})
    mine = table.c.pipeline == pipeline
    for i in range(0, len(keys), _IN_CHUNK):
        conn.execute(table.delete().where(mine, table.c.spectrum_key.in_(keys[i:i + _IN_CHUNK])))
    for i in range(0, len(paths), _IN_CHUNK):
        conn.execute(table.delete().where(mine, table.c.whole.is_(True), table.c.path.in_(paths[i:i + _IN_CHUNK])))


def settle_staged(table: sa.Table, pipeline: str, stage: sa.Table) -> list[sa.Delete]:
    """The statements that settle, as :func:`settle` does, the entries of the rows held in ``stage``.

    ``stage`` is a table of result rows (the result store's staging table on PostgreSQL),
    read in the database. The keys and paths are taken as one sorted array, as
    :func:`settle`'s lists are: two writers that settle the same entries lock them in the
    same order.
    """
    mine = table.c.pipeline == pipeline
    keys = sa.select(stage.c.spectrum_key).where(stage.c.spectrum_key != "").order_by(stage.c.spectrum_key)
    paths = sa.select(stage.c.path).where(stage.c.path != "").order_by(stage.c.path)
    return [table.delete().where(mine, table.c.spectrum_key == sa.any_(sa.func.array(keys.scalar_subquery()))),
            table.delete().where(mine, table.c.whole.is_(True),
                                 table.c.path == sa.any_(sa.func.array(paths.scalar_subquery())))]


def unfinished(store, older_than_s: float = 0.0, now: dt.datetime | None = None,
               limit: int | None = None) -> list[Unfinished]:
    """Entries sent at least ``older_than_s`` seconds ago and not settled, oldest first."""
    store.create()
    t = store.sent_refs
    now = now or dt.datetime.now(dt.timezone.utc)
    query = (sa.select(t).where(t.c.sent <= now - dt.timedelta(seconds=older_than_s))
             .order_by(t.c.sent, t.c.id))
    if limit is not None:
        query = query.limit(limit)
    with store.engine.connect() as conn:
        return [Unfinished(r.pipeline, r.spectrum_key, dict(r.ref), dict(r.options or {}), r.task_id,
                           _utc(r.sent), int(r.sends))
                for r in conn.execute(query)]


def summary(store, now: dt.datetime | None = None) -> dict[str, Any]:
    """``{"unfinished": n, "oldest_s": age of the oldest entry or None, "by_pipeline": {p: n}}``."""
    store.create()
    t = store.sent_refs
    now = now or dt.datetime.now(dt.timezone.utc)
    with store.engine.connect() as conn:
        counts = dict(conn.execute(sa.select(t.c.pipeline, sa.func.count()).group_by(t.c.pipeline)).all())
        oldest = conn.execute(sa.select(sa.func.min(t.c.sent))).scalar()
    return {"unfinished": int(sum(counts.values())), "by_pipeline": {p: int(n) for p, n in counts.items()},
            "oldest_s": None if oldest is None else (now - _utc(oldest)).total_seconds()}


def _utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive times: they were written in UTC."""
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment
