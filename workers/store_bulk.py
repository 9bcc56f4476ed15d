"""The result store's bulk writes: a batch of result rows in one statement.

PostgreSQL (:class:`StagedWrite`): the rows are copied (``COPY``) into a staging table,
then one round trip runs every rule of a write against it and commits: the ledger's
settling, the model-less placeholders, one ``INSERT … SELECT … ON CONFLICT DO UPDATE``
into the table, and the file-level failures a result settles. The staging table is a
temporary table of the connection, created by its first write and emptied at every
commit, so a batch changes no catalog.
SQLite: the write lock is taken first (``BEGIN IMMEDIATE``), then one prepared upsert
runs for every row (``executemany``), all in one transaction.

Either way the rule of :class:`workers.store.ResultStore` holds inside the statement: a row
with an ``error`` does not overwrite a stored row without one, even with another writer
at work. What comes back is the set of keys actually written, as the store counts them.
A multi-row ``INSERT … VALUES`` of a few hundred rows with dozens of columns costs more to
build and to parse than to run; these paths send the values apart from the statements.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import math
import operator
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from workers import ledger
from workers.pipeline import UNLOADED_MODEL_SHA

__all__ = ["StagedWrite", "begin_write", "clean_row", "upsert_results"]

_PLAIN = frozenset({str, int, bool, type(None), dt.datetime})
# PostgreSQL text cannot hold NUL, and a FITS header read into an error text can: every store
# keeps such a row, with U+FFFD where the NUL was.
NUL_REPLACEMENT = "\ufffd"
_STAGES_MADE = "specq_staging_tables"  # a pooled connection's info: the staging tables it has made


def clean_row(row: Mapping[str, Any], names: Sequence[str], clean: Callable[[Any], Any]) -> dict[str, Any]:
    """``{name: clean(row.get(name))}``, with the common values (plain Python) on a short path.

    A NUL character in a text value becomes :data:`NUL_REPLACEMENT`.

    A row has dozens of columns and a batch hundreds of rows: the general ``clean``
    (numpy scalars, NaN → NULL) is kept for what needs it.
    """
    out = {}
    for name in names:
        value = row.get(name)
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                value = None
        elif kind not in _PLAIN:
            value = clean(value)
            kind = type(value)
        if kind is str and "\x00" in value:
            value = value.replace("\x00", NUL_REPLACEMENT)
        out[name] = value
    return out


def begin_write(conn: sa.Connection) -> None:
    """Start ``conn``'s write transaction: on SQLite, take the write lock now.

    So the results a failure must not overwrite are looked up under the lock that the
    write then holds (no other writer can add one in between). Other databases: nothing.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def upsert_results(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]],
                   key: Sequence[str]) -> set[tuple] | None:
    """Insert or overwrite ``rows`` by ``key`` on SQLite, keeping stored results from failures.

    Parameters
    ----------
    conn : Connection
        In a transaction begun with :func:`begin_write`.
    table : Table
        A result table (it has an ``error`` column).
    rows : list of dict
        Clean rows (plain Python values), one per key, every column but ``id``.
    key : sequence of str

    Returns
    -------
    set of tuple or None
        The keys written; None on any other database (PostgreSQL writes through
        :class:`StagedWrite`, the others through the caller).
    """
    if conn.dialect.name == "sqlite":
        return _executemany_upsert(conn, table, rows, key)
    return None


def _columns(table: sa.Table) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


class StagedWrite:
    """A result table's whole write on PostgreSQL: ``COPY`` into a staging table, then one round trip.

    The statements are those :meth:`workers.store.ResultStore.write` runs on SQLite, in the
    same order, each reading the batch from the staging table in the database:

    1. the ledger's entries of the spectra written are settled (:func:`workers.ledger.settle_staged`);
    2. the model-less placeholders of spectra given a model's result are deleted, and the
       batch's placeholders of spectra that already have one are taken out of the batch;
    3. the rows are upserted in key order, a failure never over a result;
    4. the file-level failures (key ``path:*:*``) that a result settles are deleted.

    Every list of keys is read as one sorted array, so writers that share spectra lock
    their rows in the same order (no deadlock between them). Built once per table: the
    statements are compiled with their few literals (pipeline, placeholder model). A write
    is its own transaction: ``BEGIN`` with the ``COPY``, then the statements and the
    ``COMMIT`` in one round trip (libpq's pipeline mode).

    Parameters
    ----------
    table : Table
        A result table.
    sent_refs : Table
        The ledger (:func:`workers.ledger.build_table`).
    pipeline : str
    key : sequence of str
        The columns that name a row: spectrum key, then model.
    """

    def __init__(self, table: sa.Table, sent_refs: sa.Table, pipeline: str, key: Sequence[str]):
        from sqlalchemy.dialects.postgresql import insert

        names = _columns(table)
        # Temporary: private to its connection. It lives as long as the connection and is
        # emptied at each commit, so it is created once and a batch writes no catalog row.
        stage = sa.Table(f"stage_{table.name}", sa.MetaData(), *[sa.Column(n, table.c[n].type) for n in names],
                         schema="pg_temp", prefixes=["TEMPORARY"], postgresql_on_commit="DELETE ROWS")
        dialect = postgresql.dialect()
        quote = dialect.identifier_preparer

        def sql(statement) -> str:
            return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

        def sorted_array(column, *where):
            return sa.any_(sa.func.array(sa.select(column).where(*where).order_by(column).scalar_subquery()))

        self.values = operator.itemgetter(*names)  # a clean row's values, in the staging table's order
        self.create = sql(sa.schema.CreateTable(stage, if_not_exists=True))
        self.copy = f"COPY {quote.format_table(stage)} ({', '.join(quote.quote(n) for n in names)}) FROM STDIN"
        placeholder = table.c.model_sha256 == UNLOADED_MODEL_SHA
        staged_placeholder = stage.c.model_sha256 == UNLOADED_MODEL_SHA
        self.settle = [sql(s) for s in ledger.settle_staged(sent_refs, pipeline, stage)]
        self.replace_placeholders = sql(table.delete().where(
            placeholder, table.c.spectrum_key == sorted_array(stage.c.spectrum_key, ~staged_placeholder)))
        self.keep_results = sql(stage.delete().where(staged_placeholder, sa.exists().where(
            ~placeholder, table.c.spectrum_key == stage.c.spectrum_key)).returning(stage.c.spectrum_key))
        upsert = insert(table).from_select(names, sa.select(*[stage.c[n] for n in names])
                                           .order_by(*[stage.c[k] for k in key]))
        upsert = upsert.on_conflict_do_update(
            index_elements=list(key), set_={n: upsert.excluded[n] for n in names if n not in key},
            where=sa.or_(upsert.excluded.error.is_(None), table.c.error.is_not(None)))
        # A batch without failures is written whole (the condition above holds for every row):
        # only a batch with failures needs the keys written back.
        self.upsert = sql(upsert)
        self.upsert_returning = sql(upsert.returning(*[table.c[k] for k in key]))
        self.key = operator.itemgetter(*key)
        file_key = stage.c.path + ":*:*"  # a file-level row's key (workers.refs.SpectrumRef.key)
        settles = (stage.c.error.is_(None), stage.c.hdu.is_not(None), stage.c.path != "")
        self.settle_files = sql(table.delete().where(
            table.c.spectrum_key == sorted_array(file_key, *settles), table.c.error.is_not(None),
            sa.exists().where(*settles, file_key == table.c.spectrum_key,
                              sa.or_(table.c.model_sha256 == stage.c.model_sha256, placeholder))))
        self.name = stage.name

    def run(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> tuple[set[tuple], set[tuple]]:
        """Write ``rows`` (clean, one per key) in a transaction of its own on ``conn``, and commit it.

        ``conn`` must not be in a transaction: the statements and the ``COMMIT`` travel
        together, so a write costs the ``COPY`` and one round trip. Nothing is kept when
        any step fails (the caller's connection rolls back as it is given back).

        Returns
        -------
        kept_back : set of tuple
            The keys of the placeholder rows left out: their spectra have a model's result.
        written : set of tuple
            The keys written.
        """
        driver = conn.connection.driver_connection
        made = conn.connection.info.setdefault(_STAGES_MADE, set())  # lives as long as the connection
        placeholders = any(r["model_sha256"] == UNLOADED_MODEL_SHA for r in rows)
        failures = any(r["error"] is not None for r in rows)
        statements = [*self.settle, self.replace_placeholders, *([self.keep_results] if placeholders else []),
                      self.upsert_returning if failures else self.upsert, self.settle_files]
        if self.name not in made:  # once per connection; in the write's transaction, so undone with it
            driver.execute(self.create)
        with driver.cursor() as cursor, cursor.copy(self.copy) as copy:
            for row in rows:
                copy.write_row(self.values(row))
        with _together(driver):  # each statement is prepared once per connection, then only executed
            cursors = [driver.execute(statement, prepare=True) for statement in statements]
            driver.commit()  # the commit empties the staging table (ON COMMIT DELETE ROWS)
        made.add(self.name)
        kept_back = ({(k, UNLOADED_MODEL_SHA) for (k,) in cursors[len(self.settle) + 1].fetchall()}
                     if placeholders else set())
        if failures:
            return kept_back, {tuple(r) for r in cursors[-2].fetchall()}
        return kept_back, {self.key(r) for r in rows} - kept_back


def _together(driver):
    """A block whose statements travel in one round trip (libpq's pipeline mode), where libpq has it."""
    import psycopg

    return driver.pipeline() if psycopg.Pipeline.is_supported() else contextlib.nullcontext()


def _executemany_upsert(conn: sa.Connection, table: sa.Table, rows: list[dict], key: Sequence[str]) -> set[tuple]:
    from sqlalchemy.dialects.sqlite import insert

    names = _columns(table)
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key), set_={n: stmt.excluded[n] for n in names if n not in key},
        where=sa.or_(stmt.excluded.error.is_(None), table.c.error.is_not(None)))
    compiled = stmt.compile(dialect=conn.dialect, column_keys=names)
    order = compiled.positiontup
    processors = {n: table.c[n].type._cached_bind_processor(conn.dialect) for n in names}
    convert = [(n, processors[n]) for n in order]
    # Under the write lock (begin_write): the stored results that failures must leave alone.
    kept = _stored_results(conn, table, [r for r in rows if r.get("error") is not None], key)
    conn.exec_driver_sql(compiled.string, [tuple(p(r[n]) if p else r[n] for n, p in convert) for r in rows])
    return {tuple(r[k] for k in key) for r in rows} - kept


def _stored_results(conn: sa.Connection, table: sa.Table, rows: list[dict], key: Sequence[str]) -> set[tuple]:
    """Keys of ``rows`` that have a stored row without an error."""
    found: set[tuple] = set()
    first = key[0]
    wanted = {tuple(r[k] for k in key) for r in rows}
    values = sorted({r[first] for r in rows})
    for i in range(0, len(values), 500):  # far below every database's parameter limit
        query = sa.select(*[table.c[k] for k in key]).where(table.c[first].in_(values[i:i + 500]),
                                                              table.c.error.is_(None))
        found.update(tuple(r) for r in conn.execute(query) if tuple(r) in wanted)
    return found
