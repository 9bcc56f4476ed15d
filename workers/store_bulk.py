"""The result store's bulk writes: a batch of result rows in one statement.

PostgreSQL: the rows are copied (``COPY``) into a staging table that lives for the
transaction, then one ``INSERT … SELECT … ON CONFLICT DO UPDATE`` moves them into the
table. SQLite: the write lock is taken first (``BEGIN IMMEDIATE``), then one prepared
upsert runs for every row (``executemany``), all in one transaction.

Either way the rule of :class:`workers.store.ResultStore` holds inside the statement: a row
with an ``error`` does not overwrite a stored row without one, even with another writer
at work. What comes back is the set of keys actually written, as the store counts them.
A multi-row ``INSERT … VALUES`` of a few hundred rows with dozens of columns costs more to
build and to parse than to run; these paths send the values apart from one short statement.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa

__all__ = ["begin_write", "clean_row", "upsert_results"]

_PLAIN = frozenset({str, int, bool, type(None), dt.datetime})


def clean_row(row: Mapping[str, Any], names: Sequence[str], clean: Callable[[Any], Any]) -> dict[str, Any]:
    """``{name: clean(row.get(name))}``, with the common values (plain Python) on a short path.

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
    """Insert or overwrite ``rows`` by ``key``, keeping stored results from failures.

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
        The keys written; None on a database without a bulk path (the caller writes).
    """
    if conn.dialect.name == "postgresql":
        return _copy_and_upsert(conn, table, rows, key)
    if conn.dialect.name == "sqlite":
        return _executemany_upsert(conn, table, rows, key)
    return None


def _columns(table: sa.Table) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


def _copy_and_upsert(conn: sa.Connection, table: sa.Table, rows: list[dict], key: Sequence[str]) -> set[tuple]:
    names = _columns(table)
    quote = conn.dialect.identifier_preparer
    target = quote.format_table(table)
    stage = quote.quote(f"stage_{table.name}")
    columns = ", ".join(quote.quote(n) for n in names)
    keys = ", ".join(quote.quote(k) for k in key)
    update = ", ".join(f"{quote.quote(n)} = EXCLUDED.{quote.quote(n)}" for n in names if n not in key)
    cursor = conn.connection.driver_connection.cursor()
    try:
        # Only the columns and their types (no constraints, no id), dropped at commit: a
        # table whose columns change meets a staging table of its current shape.
        cursor.execute(f"CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {columns} FROM {target} WITH NO DATA")
        with cursor.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[n] for n in names])
        cursor.execute(
            # In key order: writers that share spectra lock their rows in the same order
            # (no deadlock between them).
            f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage} ORDER BY {keys} "
            f"ON CONFLICT ({keys}) DO UPDATE SET {update} "
            f"WHERE EXCLUDED.error IS NULL OR {target}.error IS NOT NULL "
            f"RETURNING {keys}")
        written = {tuple(r) for r in cursor.fetchall()}
        cursor.execute(f"DROP TABLE {stage}")  # a later batch of this transaction makes its own
        return written
    finally:
        cursor.close()


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
