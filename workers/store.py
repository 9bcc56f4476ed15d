"""The result store: one table per pipeline, built from its declared schema.

SQLite by default, any SQLAlchemy URL otherwise (PostgreSQL in production). The
natural key of a row is (spectrum key, model sha256): writing the same spectrum with
the same model again overwrites, so retries and duplicate deliveries add no row.

A row written when no model could be loaded has ``model_sha256 = "unloaded"``
(:data:`workers.pipeline.UNLOADED_MODEL_SHA`). It holds the spectrum's place until a
model result arrives: writing a model's row for the spectrum deletes it, and it is not
written beside a model's row that already exists.
"""
from __future__ import annotations

import datetime as dt
import math
import threading
from importlib import import_module
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np
import sqlalchemy as sa

from workers.pipeline import UNLOADED_MODEL_SHA
from workers.schema import ResultSchema

_TYPES = {"float": sa.Float, "int": sa.BigInteger, "bool": sa.Boolean, "str": sa.Text}

# Identity and provenance columns every pipeline table has, before the schema's fields.
IDENTITY_COLUMNS: list[tuple[str, Any, str]] = [
    ("spectrum_key", sa.String(512), "path:hdu:row, the spectrum's canonical key"),
    ("path", sa.Text, "file path relative to the data root"),
    ("hdu", sa.Integer, "HDU of the spectrum in the file"),
    ("row", sa.Integer, "row of the spectrum in the HDU"),
    ("sdss_id", sa.BigInteger, "SDSS-V identifier"),
    ("catalogid", sa.BigInteger, "SDSS-V catalog identifier"),
    ("spectrum_pk", sa.BigInteger, "Astra spectrum primary key"),
    ("apogee_id", sa.Text, "APOGEE object identifier"),
]
PROVENANCE_COLUMNS: list[tuple[str, Any, str]] = [
    ("result_flags", sa.BigInteger, "bitmask of the pipeline's flags"),
    ("flag_warn", sa.Boolean, "a warning flag is set"),
    ("flag_bad", sa.Boolean, "the result should not be used"),
    ("error", sa.Text, "why the spectrum could not be processed"),
    ("model_sha256", sa.String(64), "sha256 of the weights' bytes"),
    ("demo_weights", sa.Boolean, "made with seeded random demo weights, not a trained model"),
    ("code_version", sa.String(64), "specq version"),
    ("task_id", sa.String(64), "Celery task id (empty for specq run)"),
    ("worker", sa.String(255), "the worker (Celery node name) that wrote the row"),
    ("created", sa.DateTime(timezone=True), "when the row was written (UTC)"),
    ("elapsed", sa.Float, "seconds spent on the spectrum's batch, per spectrum"),
    ("precision", sa.String(16), "reduced precision of the network forward (tf32, bf16); NULL: float32"),
]
# Columns added after the first tables were deployed: create() adds them to older tables.
# Nullable, so the rows already there read NULL, which still means what they meant.
ADDED_COLUMNS = ("precision", "requeued", "requeue_task_id")
OUTPUT_IDENTITY = ("path", "hdu", "row")
OUTPUT_TAIL = ("result_flags", "flag_warn", "flag_bad", "model_sha256")
_IN_CHUNK = 500  # keys per IN (...) list: far below every database's parameter limit


def schemas() -> dict[str, ResultSchema]:
    """Every registered pipeline's declared schema (light imports only)."""
    from workers.registry import schemas as registered

    return registered()


def table_name(pipeline: str) -> str:
    return f"{pipeline}_results"


def build_table(metadata: sa.MetaData, schema: ResultSchema) -> sa.Table:
    """The SQL table of one pipeline, from its schema."""
    cols = [sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)]
    cols += [sa.Column(n, t, comment=d) for n, t, d in IDENTITY_COLUMNS]
    cols += [sa.Column(f.name, _TYPES[f.dtype], comment=f"{f.description} [{f.unit}]" if f.unit else f.description)
             for f in schema.all_fields]
    cols += [sa.Column(n, t, comment=d) for n, t, d in PROVENANCE_COLUMNS]
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
            Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # Several worker processes share one SQLite file: wait for the lock, don't fail.
            self.engine = sa.create_engine(url, connect_args={"timeout": 60})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        elif url.startswith("postgresql"):
            # A database that vanishes must surface as an error the worker can wait out,
            # never as a connection that hangs forever: bounded connect, TCP keepalives.
            self.engine = sa.create_engine(url, pool_pre_ping=True, connect_args={
                "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
                "keepalives_interval": 5, "keepalives_count": 3})
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
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
        self._created = False
        self._lock = threading.Lock()

    def create(self) -> "ResultStore":
        """Create the tables if they do not exist (idempotent, safe across processes)."""
        with self._lock:
            if not self._created:
                self.metadata.create_all(self.engine, checkfirst=True)
                self._add_missing_columns()
                self._created = True
        return self

    def _add_missing_columns(self) -> None:
        """Add :data:`ADDED_COLUMNS` to tables an older specq created (safe across processes)."""
        quote = self.engine.dialect.identifier_preparer
        for table in [*self.tables.values(), self.dead_letters]:
            for name in ADDED_COLUMNS:
                if name not in table.c or name in _column_names(self.engine, table.name):
                    continue
                kind = table.c[name].type.compile(dialect=self.engine.dialect)
                ddl = f"ALTER TABLE {quote.format_table(table)} ADD COLUMN {quote.quote(name)} {kind}"
                try:
                    with self.engine.begin() as conn:
                        conn.execute(sa.text(ddl))
                except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                    # Another process may have added it first; any other failure still raises.
                    if name not in _column_names(self.engine, table.name):
                        raise

    # -- writing ---------------------------------------------------------------
    def _upsert(self, table: sa.Table, rows: list[dict], key: Sequence[str], conn: sa.Connection | None = None):
        """Insert or overwrite ``rows`` by ``key``, in ``conn``'s transaction or a new one."""
        if conn is None:
            with self.engine.begin() as conn:
                return self._upsert(table, rows, key, conn)
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = import_module(f"sqlalchemy.dialects.{dialect}").insert
            stmt = insert(table)
            update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("id", *key)}
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=update)
            conn.execute(stmt, rows)
        else:  # any other database: delete then insert, in the same transaction
            for r in rows:
                conn.execute(table.delete().where(sa.and_(*[table.c[k] == r[k] for k in key])))
            conn.execute(table.insert(), rows)

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

    def write(self, pipeline: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or overwrite result rows (dicts with identity, fields and provenance).

        Returns how many rows were written: a placeholder row of a spectrum that already
        has a model's result is left out (see the module notes).
        """
        self.create()
        table = self.tables[pipeline]
        names = [c.name for c in table.columns if c.name != "id"]
        now = dt.datetime.now(dt.timezone.utc)
        by_key: dict = {}  # one statement may not upsert the same key twice (PostgreSQL refuses)
        for r in rows:
            row = {n: _clean(r.get(n)) for n in names}
            row["created"] = row["created"] or now
            by_key[(row["spectrum_key"], row["model_sha256"])] = row
        clean = list(by_key.values())
        if not clean:
            return 0
        with self.engine.begin() as conn:  # placeholders and results change together or not at all
            clean = self._settle_placeholders(conn, table, clean)
            if clean:
                self._upsert(table, clean, ("spectrum_key", "model_sha256"), conn)
        return len(clean)

    def count_delivery(self, delivery_key: str) -> int:
        """Record one more delivery of a message attempt; returns how many there have been."""
        self.create()
        now = dt.datetime.now(dt.timezone.utc)
        t = self.deliveries
        with self.engine.begin() as conn:
            current = conn.execute(sa.select(t.c.count).where(t.c.delivery_key == delivery_key)).scalar()
            if current is None:
                try:
                    conn.execute(t.insert().values(delivery_key=delivery_key, count=1, updated=now))
                    return 1
                except sa.exc.IntegrityError:  # another process inserted it first
                    current = conn.execute(sa.select(t.c.count).where(t.c.delivery_key == delivery_key)).scalar()
            conn.execute(t.update().where(t.c.delivery_key == delivery_key).values(count=current + 1, updated=now))
            return current + 1

    def dead_letter(self, task_id: str, pipeline: str, refs: list, reason: str, deliveries: int) -> None:
        self.create()
        row = dict(task_id=task_id, pipeline=pipeline, n_refs=len(refs), refs=refs, reason=reason,
                   deliveries=deliveries, created=dt.datetime.now(dt.timezone.utc))
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

    def rows(self, pipeline: str) -> list[dict]:
        self.create()
        t = self.tables[pipeline]
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]

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

    def table(self, pipeline: str, columns: Sequence[str] | None = None):
        """Rows of a pipeline as an astropy `Table` with units (for export)."""
        return rows_to_table(self.schemas[pipeline], self.rows(pipeline), columns)


def _column_names(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (status, export) never block the writers
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def output_columns(schema: ResultSchema, all_columns: bool = False) -> list[str]:
    """Columns of ``specq run``/export: identity, the schema's fields, flags, model."""
    cols = [*OUTPUT_IDENTITY, *(f.name for f in schema.fields)]
    if all_columns:
        cols += [f.name for f in schema.extra_fields]
    return [*cols, *OUTPUT_TAIL]


def rows_to_table(schema: ResultSchema, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None):
    """An astropy `Table` of result rows: units and descriptions from the schema."""
    from astropy.table import MaskedColumn, Table
    import astropy.units as u

    columns = list(columns or output_columns(schema, all_columns=True))
    if "precision" not in columns and any(r.get("precision") for r in rows):
        columns.append("precision")  # reduced-precision rows say so in every output, as demo rows do
    fields = {f.name: f for f in schema.all_fields}
    table = Table()
    for name in columns:
        values = [r.get(name) for r in rows]
        f = fields.get(name)
        if f is not None and f.dtype == "float":
            arr = np.array([np.nan if v is None else v for v in values], dtype=float)
            table[name] = arr
            if f.unit:
                table[name].unit = u.Unit(f.unit)
            table[name].description = f.description
        elif name in ("hdu", "row", "result_flags"):
            missing = [v is None for v in values]
            arr = np.array([-1 if v is None else v for v in values], dtype=np.int64)
            table[name] = MaskedColumn(arr, mask=missing) if any(missing) else arr
        elif name in ("flag_warn", "flag_bad", "demo_weights"):
            table[name] = np.array([bool(v) for v in values], dtype=bool)
        else:
            table[name] = np.array(["" if v is None else str(v) for v in values], dtype=str)
    demo = any(r.get("demo_weights") for r in rows)
    table.meta["PIPELINE"] = schema.pipeline
    table.meta["DEMO"] = demo
    if demo:
        table.meta["COMMENT"] = ["DEMO WEIGHTS: seeded random weights, not a trained model; values are not science."]
    return table


def _fits_unit_problem(unit) -> bool:
    try:
        unit.to_string(format="fits")
        return False
    except ValueError:
        return True


def write_table(table, path: str | Path, overwrite: bool = True) -> Path:
    """Write a result table; the format follows the extension: .csv, .fits, .parquet."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        out = table.copy()
        if out.meta.get("DEMO"):
            out["demo_weights"] = True
        out.meta = {}
        out.write(path, format="ascii.csv", overwrite=overwrite)
    elif suffix in (".fits", ".fit"):
        out = table.copy()
        for col in out.itercols():
            # FITS has no logarithmic units (dex): keep the unit in the description instead.
            if col.unit is not None and _fits_unit_problem(col.unit):
                col.description = f"{col.description or ''} [{col.unit}]".strip()
                col.unit = None
        out.write(path, format="fits", overwrite=overwrite)
    elif suffix == ".parquet":
        out = table.copy()
        if out.meta.get("DEMO"):
            out["demo_weights"] = True
        out.write(path, format="parquet", overwrite=overwrite)
    else:
        raise ValueError(f"{path}: unknown output format {suffix!r}; use .csv, .fits or .parquet")
    return path

