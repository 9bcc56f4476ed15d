"""Older result stores brought to today's column names, losing nothing.

A field's column takes the field's one name (:class:`workers.schema.Field`); a store made
when the column had another name (``Field.formerly``) is renamed in place when it is
opened (:meth:`workers.store.ResultStore.create`), on SQLite and PostgreSQL alike.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import sqlalchemy as sa

from workers.schema import Field

log = logging.getLogger("specq.store")


def _column_names(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def rename_former_columns(engine: sa.Engine, tables: Mapping[str, sa.Table],
                          fields: Mapping[str, Sequence[Field]]) -> None:
    """Give an older store's columns their fields' names (:attr:`Field.formerly`), losing nothing.

    A column under a former name is renamed in place (its values, and the rows' other
    columns, untouched). Where both names exist (another process added the new column
    before renaming), the old column's values fill the new one's empty cells and the old
    column goes. Safe across processes: a rename another process made first is no error.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    tables : mapping
        Each pipeline's table.
    fields : mapping
        Each pipeline's stored fields (:func:`workers.store.stored_fields`).
    """
    quote = engine.dialect.identifier_preparer
    for pipeline, table in tables.items():
        present = _column_names(engine, table.name)
        for f in fields[pipeline]:
            for old in f.formerly:
                if old not in present:
                    continue
                name, new = quote.format_table(table), quote.quote(f.name)
                if f.name in present:
                    steps = [f"UPDATE {name} SET {new} = {quote.quote(old)} WHERE {new} IS NULL",
                             f"ALTER TABLE {name} DROP COLUMN {quote.quote(old)}"]
                else:
                    steps = [f"ALTER TABLE {name} RENAME COLUMN {quote.quote(old)} TO {new}"]
                try:
                    with engine.begin() as conn:
                        for step in steps:
                            conn.execute(sa.text(step))
                except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                    if old in _column_names(engine, table.name):  # not another process's rename
                        raise
                log.info("%s: column %s is now %s", table.name, old, f.name)
                present = _column_names(engine, table.name)
