"""The result store: one table per pipeline, built from its declared schema.

SQLite by default, any SQLAlchemy URL otherwise (PostgreSQL in production). The
natural key of a row is (spectrum key, model sha256): writing the same spectrum with
the same model again overwrites, so retries and duplicate deliveries add no row.
A failure never replaces a result: a row with an ``error`` (a spectrum that could not
be processed) is not written over a row without one; it is left out and logged.

A row written when no model could be loaded has ``model_sha256 = "unloaded"``
(:data:`workers.pipeline.UNLOADED_MODEL_SHA`). It holds the spectrum's place until a
model result arrives: writing a model's row for the spectrum deletes it, and it is not
written beside a model's row that already exists.

A result settles the failures of its whole file: a row for a file the worker could not
open or list (key ``path:*:*``, no HDU) says nothing more once a spectrum of that file
has a result from the same model, so writing that result deletes it (a file read while
half-written, or broken and then replaced, leaves no stale failure behind).

An older store's columns are renamed to today's names when it is opened
(:mod:`workers.store_migration`). The module is over 500 lines because one class keeps
every statement on the store's tables together: writes, reads and the summary.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from importlib import import_module
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import sqlalchemy as sa

from workers import ledger
from workers.pipeline import UNLOADED_MODEL_SHA
from workers.store_bulk import NUL_REPLACEMENT, StagedWrite, begin_write, clean_row, upsert_results
from workers.store_migration import rename_former_columns
from workers.schema import (LOCATOR_FIELDS, PROVENANCE_FIELDS, RECORD_FIELDS, SOURCE_FIELDS, SUMMARY_FIELDS,
                            Field, ResultSchema)

log = logging.getLogger("specq.store")
#: What stands for a row's own file in the error texts ``summary`` counts together.
FILE_IN_ERROR = "<file>"

_TYPES = {"float": sa.Float, "int": sa.BigInteger, "bool": sa.Boolean, "str": sa.Text,
          "time": lambda: sa.DateTime(timezone=True)}
# Columns the store keeps bounded or narrower than their kind's default (the key is indexed).
_SQL_TYPES = {"spectrum_key": lambda: sa.String(512), "hdu": sa.Integer, "row": sa.Integer,
              "model_sha256": lambda: sa.String(64), "code_version": lambda: sa.String(64),
              "task_id": lambda: sa.String(64), "worker": lambda: sa.String(255),
              "precision": lambda: sa.String(16)}
# Rows an export reads at a time: a few MB of Python values, and few round trips.
CHUNK_ROWS = 5000
_IN_CHUNK = 500  # keys per IN (...) list: far below every database's parameter limit
_CREATE_ATTEMPTS = 5  # processes creating the tables at once: each pass finds more of them made
# Seconds a PostgreSQL connection may take to be made (as tasks.app.REDIS_CONNECT_TIMEOUT_S for
# the broker): a server that is not PostgreSQL and never answers is an error, not a hang.
CONNECT_TIMEOUT_S = 10


def stored_fields(schema: ResultSchema) -> list[Field]:
    """Every column of a pipeline's table, in order: where, who, the results, what made them."""
    return [*LOCATOR_FIELDS, *schema.shared(SOURCE_FIELDS), *schema.all_fields, *SUMMARY_FIELDS, *RECORD_FIELDS,
            *(f for f in PROVENANCE_FIELDS if f not in LOCATOR_FIELDS)]


def schemas() -> dict[str, ResultSchema]:
    """Every registered pipeline's declared schema (light imports only)."""
    from workers.registry import schemas as registered

    return registered()


def table_name(pipeline: str) -> str:
    return f"{pipeline}_results"


def build_table(metadata: sa.MetaData, schema: ResultSchema) -> sa.Table:
    """The SQL table of one pipeline, from its schema and the shared declarations."""
    cols = [sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)]
    for f in stored_fields(schema):
        kind = _SQL_TYPES.get(f.name, _TYPES[f.dtype])
        cols.append(sa.Column(f.name, kind(), comment=f"{f.description} [{f.unit}]" if f.unit else f.description))
    name = table_name(schema.pipeline)
    return sa.Table(name, metadata, *cols,
                    sa.UniqueConstraint("spectrum_key", "model_sha256", name=f"uq_{name}_key_model"))


def _clean(value: Any) -> Any:
    """numpy scalars → Python; NaN/inf → NULL (PostgreSQL and SQLite store NULL for missing)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultStore:
    """Tables for every pipeline plus the dead-letter and delivery records.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:///results.sqlite`` or
        ``postgresql+psycopg://user@host/db``.
    """

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            folder = Path(url[len("sqlite:///"):]).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                from workers.settings import SettingsError

                raise SettingsError(f"the result database {url}: cannot make its folder {folder}: "
                                    f"{exc.strerror or exc} (SPECQ_DATABASE_URL; the default store lies in "
                                    f"SPECQ_STATE_DIR)") from None
            # Several worker processes share one SQLite file: wait for the lock, don't fail.
            self.engine = sa.create_engine(url, connect_args={"timeout": 60})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        elif url.startswith("postgresql"):
            # A database that vanishes must surface as an error the worker can wait out,
            # never as a connection that hangs forever: bounded connect, TCP keepalives.
            self.engine = sa.create_engine(url, pool_pre_ping=True, connect_args={
                "connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10,
                "keepalives_interval": 5, "keepalives_count": 3})
        else:
            try:
                self.engine = sa.create_engine(url, pool_pre_ping=True)
            except (ImportError, sa.exc.NoSuchModuleError) as exc:  # a database whose driver is not installed
                from workers.settings import SettingsError

                shown = sa.engine.make_url(url).render_as_string(hide_password=True)
                raise SettingsError(f"SPECQ_DATABASE_URL {shown}: cannot use this database here ({exc}); "
                                    "use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB") from None
        self.metadata = sa.MetaData()
        self.schemas = schemas()
        self.tables = {p: build_table(self.metadata, s) for p, s in self.schemas.items()}
        self.dead_letters = sa.Table(
            "dead_letters", self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("task_id", sa.String(64), unique=True),
            sa.Column("pipeline", sa.String(32)),
            sa.Column("n_refs", sa.Integer),
            sa.Column("refs", sa.JSON),
            sa.Column("reason", sa.Text),
            sa.Column("deliveries", sa.Integer),
            sa.Column("created", sa.DateTime(timezone=True)),
            # Set by `specq dead-letters requeue`: when, and the message that took the references.
            sa.Column("requeued", sa.DateTime(timezone=True)),
            sa.Column("requeue_task_id", sa.String(64)),
        )
        self.deliveries = sa.Table(
            "deliveries", self.metadata,
            sa.Column("delivery_key", sa.String(128), primary_key=True),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("updated", sa.DateTime(timezone=True)),
        )
        # The ledger of references sent and not yet settled by a row (workers.ledger).
        self.sent_refs = ledger.build_table(self.metadata)
        self._created = False
        self._lock = threading.Lock()
        self.failures_kept_out = 0  # failure rows not written over a stored result (see write)
        self._staged: dict[str, StagedWrite] = {}  # PostgreSQL: each table's write, built on first use

    def create(self) -> "ResultStore":
        """Create the tables if they do not exist (idempotent, safe across processes)."""
        with self._lock:
            if not self._created:
                # A store that cannot be reached fails here once, not once per attempt below.
                with self.engine.connect():
                    pass
                for attempt in range(_CREATE_ATTEMPTS):
                    try:
                        self.metadata.create_all(self.engine, checkfirst=True)
                        break
                    except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                        # Another process created a table between the check and the CREATE
                        # (a worker and `specq watch` starting together), or held SQLite's
                        # lock: check again; each pass finds more of the tables there.
                        if attempt == _CREATE_ATTEMPTS - 1:
                            raise
                        time.sleep(0.05 * (attempt + 1))
                stored = {p: stored_fields(schema) for p, schema in self.schemas.items()}
                rename_former_columns(self.engine, self.tables, stored)
                self._add_missing_columns()
                self._created = True
        return self

    def _add_missing_columns(self) -> None:
        """Add the declared columns an older specq's tables lack (safe across processes).

        Every column but ``id`` is nullable, so the rows already there read NULL, which
        still means what it meant (not known when the row was written).
        """
        quote = self.engine.dialect.identifier_preparer
        for table in [*self.tables.values(), self.dead_letters]:
            present = _column_names(self.engine, table.name)
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                ddl = f"ALTER TABLE {quote.format_table(table)} ADD COLUMN {quote.quote(column.name)} {kind}"
                try:
                    with self.engine.begin() as conn:
                        conn.execute(sa.text(ddl))
                except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                    # Another process may have added it first; any other failure still raises.
                    if column.name not in _column_names(self.engine, table.name):
                        raise

    # -- writing ---------------------------------------------------------------
    def _upsert(self, table: sa.Table, rows: list[dict], key: Sequence[str], conn: sa.Connection | None = None,
                keep_results: bool = False) -> set[tuple] | None:
        """Insert or overwrite ``rows`` by ``key``, in ``conn``'s transaction or a new one.

        Parameters
        ----------
        keep_results : bool
            A result table: a row with an ``error`` does not overwrite an existing row
            without one (the check is part of the statement, so a concurrent writer
            cannot slip a result in between).

        Returns
        -------
        set of tuple or None
            With ``keep_results``: the keys actually written; else None.
        """
        if conn is None:
            with self.engine.begin() as conn:
                return self._upsert(table, rows, key, conn, keep_results)
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = import_module(f"sqlalchemy.dialects.{dialect}").insert
            stmt = insert(table)
            update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("id", *key)}
            if not keep_results:
                conn.execute(stmt.on_conflict_do_update(index_elements=list(key), set_=update), rows)
                return None
            # Update only when the new row is a result or the stored one is a failure too.
            stmt = stmt.on_conflict_do_update(
                index_elements=list(key), set_=update,
                where=sa.or_(stmt.excluded.error.is_(None), table.c.error.is_not(None)))
            written = conn.execute(stmt.returning(*[table.c[k] for k in key]), rows)
            return {tuple(r) for r in written}
        # any other database: delete then insert, in the same transaction
        if keep_results:
            failures = [r for r in rows if r.get("error") is not None]
            results = self._existing_results(conn, table, key, failures)
            rows = [r for r in rows if r.get("error") is None or tuple(r[k] for k in key) not in results]
        for r in rows:
            conn.execute(table.delete().where(sa.and_(*[table.c[k] == r[k] for k in key])))
        if rows:
            conn.execute(table.insert(), rows)
        return {tuple(r[k] for k in key) for r in rows} if keep_results else None

    @staticmethod
    def _existing_results(conn: sa.Connection, table: sa.Table, key: Sequence[str], rows: list[dict]) -> set[tuple]:
        """The keys of ``rows`` that already have a row without an error in ``table``."""
        found: set[tuple] = set()
        for r in rows:
            match = sa.and_(*[table.c[k] == r[k] for k in key], table.c.error.is_(None))
            if conn.execute(sa.select(sa.literal(1)).select_from(table).where(match)).first():
                found.add(tuple(r[k] for k in key))
        return found

    @staticmethod
    def _settle_placeholders(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> list[dict]:
        """Keep one row per spectrum across a model-less placeholder and model results.

        Deletes the ``UNLOADED_MODEL_SHA`` rows of spectra that ``rows`` give a model's
        result, and returns ``rows`` without the placeholders of spectra that already
        have a model's result in the table.
        """
        placeholder = table.c.model_sha256 == UNLOADED_MODEL_SHA
        real = [r["spectrum_key"] for r in rows if r["model_sha256"] != UNLOADED_MODEL_SHA]
        waiting = [r["spectrum_key"] for r in rows if r["model_sha256"] == UNLOADED_MODEL_SHA]
        for i in range(0, len(real), _IN_CHUNK):
            conn.execute(table.delete().where(placeholder, table.c.spectrum_key.in_(real[i:i + _IN_CHUNK])))
        done: set[str] = set()
        for i in range(0, len(waiting), _IN_CHUNK):
            done.update(conn.execute(sa.select(table.c.spectrum_key).where(
                ~placeholder, table.c.spectrum_key.in_(waiting[i:i + _IN_CHUNK]))).scalars())
        if not done:
            return rows
        return [r for r in rows if not (r["model_sha256"] == UNLOADED_MODEL_SHA and r["spectrum_key"] in done)]

    @staticmethod
    def _settle_file_failures(conn: sa.Connection, table: sa.Table, results: list[dict]) -> int:
        """Delete the file-level failure rows that ``results`` (rows without an error) settle.

        A file-level row's key is ``path:*:*`` (see :attr:`workers.refs.SpectrumRef.key`);
        it is settled by a result for any spectrum of that path from the same model (or
        from any model, for a row written when no model could be loaded). Returns how many
        rows were deleted.
        """
        by_model: dict[str, set[str]] = {}
        for r in results:
            if r.get("hdu") is not None and r.get("path"):
                by_model.setdefault(r["model_sha256"], set()).add(f"{r['path']}:*:*")
        deleted = 0
        for model, keys in by_model.items():
            ordered = sorted(keys)
            for i in range(0, len(ordered), _IN_CHUNK):
                deleted += conn.execute(table.delete().where(
                    table.c.spectrum_key.in_(ordered[i:i + _IN_CHUNK]), table.c.error.is_not(None),
                    table.c.model_sha256.in_([model, UNLOADED_MODEL_SHA]))).rowcount
        return deleted

    def write(self, pipeline: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or overwrite result rows (dicts with identity, fields and provenance).

        Returns how many rows were written. Left out: a placeholder row of a spectrum
        that already has a model's result, and a failure row (one with an ``error``) of a
        spectrum and model that already have a result; the latter are logged and counted
        in :attr:`failures_kept_out` (see the module notes).
        """
        self.create()
        table = self.tables[pipeline]
        names = [c.name for c in table.columns if c.name != "id"]
        now = dt.datetime.now(dt.timezone.utc)
        by_key: dict = {}  # one statement may not upsert the same key twice (PostgreSQL refuses)
        for r in rows:
            row = clean_row(r, names, _clean)
            row["created"] = row["created"] or now
            row["error"] = row.get("error") or None  # "" is no error: the row is a result
            by_key[(row["spectrum_key"], row["model_sha256"])] = row
        clean = list(by_key.values())
        if not clean:
            return 0
        key = ("spectrum_key", "model_sha256")
        if self.engine.dialect.name == "postgresql":  # the same steps in the database, one transaction
            with self.engine.connect() as conn:
                kept_back, written = self._staged_write(pipeline).run(conn, clean)
            clean = [r for r in clean if (r["spectrum_key"], r["model_sha256"]) not in kept_back]
        else:
            with self.engine.begin() as conn:  # placeholders and results change together or not at all
                begin_write(conn)
                ledger.settle(conn, self.sent_refs, pipeline, clean)  # each spectrum written is finished
                clean = self._settle_placeholders(conn, table, clean)
                written = (upsert_results(conn, table, clean, key) if clean else set())
                if written is None:  # a database without a bulk path
                    written = self._upsert(table, clean, key, conn, keep_results=True)
                self._settle_file_failures(conn, table, [r for r in clean if r["error"] is None])
        kept_out = [r for r in clean if (r["spectrum_key"], r["model_sha256"]) not in written]
        if kept_out:
            self.failures_kept_out += len(kept_out)
            log.warning("%s: kept the stored result of %d spectra instead of a failure (%s%s): %s",
                        pipeline, len(kept_out), ", ".join(r["spectrum_key"] for r in kept_out[:3]),
                        ", ..." if len(kept_out) > 3 else "", kept_out[0]["error"])
        return len(clean) - len(kept_out)

    def _staged_write(self, pipeline: str) -> StagedWrite:
        """``pipeline``'s write on PostgreSQL, its statements compiled once."""
        staged = self._staged.get(pipeline)
        if staged is None:
            staged = self._staged[pipeline] = StagedWrite(self.tables[pipeline], self.sent_refs, pipeline,
                                                          ("spectrum_key", "model_sha256"))
        return staged

    def count_delivery(self, delivery_key: str) -> int:
        """Record one more delivery of a message attempt; returns how many there have been.

        One statement (insert, or add one, and return the count) on SQLite and PostgreSQL,
        so two workers receiving the same message at once count two deliveries.
        """
        self.create()
        now = dt.datetime.now(dt.timezone.utc)
        t = self.deliveries
        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            if dialect in ("sqlite", "postgresql"):
                insert = import_module(f"sqlalchemy.dialects.{dialect}").insert
                stmt = insert(t).values(delivery_key=delivery_key, count=1, updated=now)
                stmt = stmt.on_conflict_do_update(index_elements=[t.c.delivery_key],
                                                  set_={"count": t.c.count + 1, "updated": now})
                if self.engine.dialect.insert_returning:
                    return conn.execute(stmt.returning(t.c.count)).scalar_one()
                # SQLite before 3.35 has no RETURNING: the upsert took the database's write
                # lock until commit, so this read still sees our own count.
                conn.execute(stmt)
                return conn.execute(sa.select(t.c.count).where(t.c.delivery_key == delivery_key)).scalar_one()
            # Any other database: lock the row (if any) for the read-then-write.
            current = conn.execute(sa.select(t.c.count).where(t.c.delivery_key == delivery_key)
                                   .with_for_update()).scalar()
            if current is None:
                conn.execute(t.insert().values(delivery_key=delivery_key, count=1, updated=now))
                return 1
            conn.execute(t.update().where(t.c.delivery_key == delivery_key).values(count=current + 1, updated=now))
            return current + 1

    def dead_letter(self, task_id: str, pipeline: str, refs: list, reason: str, deliveries: int) -> None:
        self.create()
        row = dict(task_id=task_id, pipeline=pipeline, n_refs=len(refs), refs=refs,
                   reason=reason.replace("\x00", NUL_REPLACEMENT), deliveries=deliveries,
                   created=dt.datetime.now(dt.timezone.utc))
        self._upsert(self.dead_letters, [row], ("task_id",))

    # -- reading ---------------------------------------------------------------
    def count(self, pipeline: str | None = None, task_ids: Collection[str] | None = None) -> int:
        """Result rows of ``pipeline`` (default: all), optionally only those written by ``task_ids``."""
        self.create()
        pipes = [pipeline] if pipeline else list(self.tables)
        ids = None if task_ids is None else list(task_ids)
        total = 0
        with self.engine.connect() as conn:
            for p in pipes:
                table = self.tables[p]
                if ids is None:
                    total += conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                    continue
                for i in range(0, len(ids), _IN_CHUNK):
                    total += conn.execute(sa.select(sa.func.count()).select_from(table).where(
                        table.c.task_id.in_(ids[i:i + _IN_CHUNK]))).scalar()
        return total

    def demo_counts(self) -> dict[str, int]:
        """Rows made with demo weights (``demo_weights`` true), per pipeline."""
        self.create()
        with self.engine.connect() as conn:
            return {p: conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.demo_weights.is_(True))).scalar()
                    for p, t in self.tables.items()}

    def _where(self, table: sa.Table, since: dt.datetime | None = None, until: dt.datetime | None = None,
               bad: bool | None = None, model: str | None = None, published_only: bool = False) -> list:
        """SQL conditions of :meth:`rows`' filters."""
        conditions = []
        if since is not None:
            conditions.append(table.c.created >= _utc(since))
        if until is not None:
            conditions.append(table.c.created < _utc(until))
        if bad is not None:
            conditions.append(table.c.flag_bad.is_(True) if bad else sa.or_(table.c.flag_bad.is_(False),
                                                                             table.c.flag_bad.is_(None)))
        if model:
            conditions.append(table.c.model_sha256.startswith(model.lower(), autoescape=True))
        if published_only:
            conditions.append(sa.or_(table.c.demo_weights.is_(False), table.c.demo_weights.is_(None)))
        return conditions

    def rows(self, pipeline: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
             bad: bool | None = None, model: str | None = None, published_only: bool = False) -> list[dict]:
        """A pipeline's rows in write order, optionally filtered.

        Parameters
        ----------
        pipeline : str
        since, until : datetime, optional
            Rows written at or after ``since`` and before ``until`` (naive: UTC).
        bad : bool, optional
            Only rows with ``flag_bad`` (True) or without it (False).
        model : str, optional
            Only rows whose ``model_sha256`` starts with this (a prefix is enough).
        published_only : bool
            Leave out rows made with demo weights.
        """
        self.create()
        t = self.tables[pipeline]
        query = sa.select(t).where(*self._where(t, since, until, bad, model, published_only)).order_by(t.c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def chunks(self, pipeline: str, size: int = CHUNK_ROWS, **filters) -> Iterator[dict[str, tuple]]:
        """A pipeline's rows in write order, ``size`` rows at a time, each chunk column by column.

        The rows come from one query, read as they are needed (a server-side cursor on
        PostgreSQL), so memory holds one chunk, not the table.

        Parameters
        ----------
        pipeline : str
        size : int
            Rows per chunk.
        **filters
            Those of :meth:`rows`.

        Yields
        ------
        dict
            Each stored column's name → its values in the chunk's rows.
        """
        self.create()
        t = self.tables[pipeline]
        query = sa.select(t).where(*self._where(t, **filters)).order_by(t.c.id)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=size).execute(query)
            names = list(result.keys())
            for part in result.partitions(size):
                yield dict(zip(names, zip(*part)))

    def summary(self, now: dt.datetime | None = None, top_errors: int = 5) -> dict[str, dict[str, Any]]:
        """What the store holds, per pipeline, counted in the database.

        Returns
        -------
        dict
            ``{pipeline: {"rows", "models": [(sha256, demo, rows)], "flags": {name: rows},
            "flag_warn", "flag_bad", "last_hour", "last_day", "errors": [(text, rows)]}}``;
            ``errors`` holds the ``top_errors`` most common error texts, each row's own path
            in them written :data:`FILE_IN_ERROR`.
        """
        self.create()
        now = _utc(now or dt.datetime.now(dt.timezone.utc))
        out: dict[str, dict[str, Any]] = {}
        count = sa.func.count()
        with self.engine.connect() as conn:
            for p, t in self.tables.items():
                schema = self.schemas[p]
                total = conn.execute(sa.select(count).select_from(t)).scalar()
                models = conn.execute(sa.select(t.c.model_sha256, sa.func.max(sa.cast(t.c.demo_weights, sa.Integer)),
                                                count).group_by(t.c.model_sha256).order_by(count.desc())).all()
                # One pass: a sum per flag bit (bitwise AND works alike in SQLite and PostgreSQL).
                sums = [sa.func.sum(sa.case((t.c.result_flags.op("&")(f.value) != 0, 1), else_=0))
                        for f in schema.flags]
                sums += [sa.func.sum(sa.case((t.c.flag_warn.is_(True), 1), else_=0)),
                         sa.func.sum(sa.case((t.c.flag_bad.is_(True), 1), else_=0)),
                         sa.func.sum(sa.case((t.c.created >= now - dt.timedelta(hours=1), 1), else_=0)),
                         sa.func.sum(sa.case((t.c.created >= now - dt.timedelta(days=1), 1), else_=0))]
                values = [int(v or 0) for v in conn.execute(sa.select(*sums)).one()]
                # The same error of different files is one kind: each row's own path is left out.
                kind = sa.func.coalesce(sa.func.replace(t.c.error, t.c.path, FILE_IN_ERROR), t.c.error)
                errors = conn.execute(sa.select(kind, count).where(t.c.error.is_not(None), t.c.error != "")
                                      .group_by(kind).order_by(count.desc(), kind)
                                      .limit(top_errors)).all()
                n_flags = len(schema.flags)
                out[p] = {"rows": int(total),
                          "models": [(sha, bool(demo), int(n)) for sha, demo, n in models],
                          "flags": {f.name: values[i] for i, f in enumerate(schema.flags)},
                          "flag_warn": values[n_flags], "flag_bad": values[n_flags + 1],
                          "last_hour": values[n_flags + 2], "last_day": values[n_flags + 3],
                          "errors": [(text, int(n)) for text, n in errors]}
        return out

    def dead_letter_rows(self, ids: Collection[int] | None = None) -> list[dict]:
        """Dead letters (all, or those with the given ``id``), oldest first."""
        self.create()
        t = self.dead_letters
        query = sa.select(t).order_by(t.c.id)
        if ids is not None:
            query = query.where(t.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def mark_requeued(self, dead_letter_id: int, task_id: str) -> None:
        """Record that dead letter ``dead_letter_id`` was sent again as message ``task_id``."""
        self.create()
        t = self.dead_letters
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == dead_letter_id).values(
                requeued=dt.datetime.now(dt.timezone.utc), requeue_task_id=task_id))

    def recent_rate(self, minutes: float = 5.0) -> dict[str, float]:
        """Rows written per minute over the last ``minutes``, per pipeline."""
        self.create()
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)
        out = {}
        with self.engine.connect() as conn:
            for p, t in self.tables.items():
                n = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.created >= since)).scalar()
                out[p] = n / minutes
        return out

    def table(self, pipeline: str, all_columns: bool = False, chunk_rows: int = CHUNK_ROWS, **filters):
        """A pipeline's rows as an astropy `Table` in the exported layout (see :mod:`workers.export`).

        Made from the rows read ``chunk_rows`` at a time (:meth:`chunks`); ``filters``:
        those of :meth:`rows`.
        """
        from workers.export import chunks_table

        return chunks_table(self.schemas[pipeline], self.chunks(pipeline, chunk_rows, **filters), all_columns)


def _utc(moment: dt.datetime) -> dt.datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _column_names(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (status, export) never block the writers
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()

