"""One result row per spectrum, built in one place.

A pipeline's prediction for one spectrum is either columns (the schema's fields and the
``result_flags`` its conditions set) or an error (why the spectrum could not be processed).
:func:`values` turns either into the science part of a row, with the summary flags;
:func:`build` adds the spectrum's identity and the provenance stamp (model, demo weights,
code version, task, time per spectrum). The engine, the runner (invalid references,
messages that cannot run), ``specq run``, demo and bench all take their rows from here.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from workers.schema import SOURCE_FIELDS, ResultSchema


def values(schema: ResultSchema, columns: Mapping[str, Any] | None = None, *, error: str | None = None,
           extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The science part of a row: every schema field, ``result_flags``, ``flag_warn``, ``flag_bad``.

    Parameters
    ----------
    schema : ResultSchema
    columns : mapping, optional
        One spectrum's fields and ``result_flags`` (missing fields are NaN, or None for
        non-float fields). None for a spectrum that failed.
    error : str, optional
        Why the spectrum could not be processed: sets the schema's exception bit, and the
        fields are NaN whatever ``columns`` held.
    extra : mapping, optional
        Further keys kept as they are (e.g. ``precision``).

    Returns
    -------
    dict
        Plain Python values; ``error`` is present only when given.
    """
    row: dict[str, Any] = {}
    source = {} if error is not None or columns is None else columns
    for f in schema.all_fields:
        value = source.get(f.name)
        if f.dtype == "float":
            row[f.name] = math.nan if value is None else float(value)
        else:
            row[f.name] = value.item() if isinstance(value, np.generic) else value
    flags = int(source.get("result_flags", 0))
    if error is not None or columns is None:
        flags |= schema.flag(schema.exception_flag).value
    warn, bad = schema.summary(flags)
    row.update(result_flags=flags, flag_warn=bool(warn), flag_bad=bool(bad))
    if error is not None or columns is None:
        row["error"] = error or "no result"
    if extra:
        row.update(extra)
    return row


def identity(ref, spectrum=None) -> dict[str, Any]:
    """The identity columns of a row: key, path, HDU, row, and the source fields.

    Each of :data:`workers.schema.SOURCE_FIELDS` is taken from what the reference knew
    (``ref.ids``), overridden by the spectrum file's own ids and header/row values
    (``Spectrum.ids``, ``Spectrum.meta``), converted to the field's type; a value that
    does not convert is left unknown.

    Parameters
    ----------
    ref : workers.refs.SpectrumRef
    spectrum : workers.spectrum.Spectrum, optional
        What was read: the file's own values win over what the producer knew.
    """
    known: dict[str, Any] = {k: v for k, v in ref.ids.items() if v is not None}
    if spectrum is not None:
        for source in (spectrum.meta, spectrum.ids):
            known.update({k: v for k, v in source.items() if v is not None})
    row: dict[str, Any] = {"spectrum_key": ref.key, "path": ref.path, "hdu": ref.hdu, "row": ref.row}
    for f in SOURCE_FIELDS:
        value = known.get(f.name)
        if value is None and f.name in _ID_ALIASES:
            value = known.get(_ID_ALIASES[f.name])
        row[f.name] = _as_type(value, f.dtype)
    return row


# A reference and a reader call the APOGEE object name ``apogee_id`` (the message's word,
# :data:`workers.refs.ID_KEYS`); the result's column is the summary products' ``obj``.
_ID_ALIASES = {"obj": "apogee_id"}


_INT64_LIMIT = 2**63


def _as_type(value, dtype: str):
    """``value`` as a Python int, float or str for a field of ``dtype``; None if it is not one
    (an integer beyond 64 bits is none: the store and the files hold 64-bit integers)."""
    if value is None or value == "":
        return None
    try:
        if dtype == "int":
            number = int(value)
            return number if -_INT64_LIMIT <= number < _INT64_LIMIT else None
        if dtype == "float":
            number = float(value)
            return number if math.isfinite(number) else None
        return str(value).strip() or None
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        return None


def stamp(row: dict[str, Any], pipeline, task_id: str = "", elapsed: float | None = None,
          draws: int | None = None) -> dict[str, Any]:
    """Add the provenance of a row: model sha256, demo weights, code version, task, time per
    spectrum, and the MC draws behind its uncertainties (none for a spectrum that failed)."""
    from workers import __version__

    row.update(model_sha256=pipeline.model_sha256, demo_weights=bool(pipeline.demo), code_version=__version__,
               task_id=task_id, t_elapsed=elapsed, error=row.get("error"),
               draws=None if row.get("error") else draws)
    return row


def build(pipeline, ref, spectrum=None, *, result: Mapping[str, Any] | None = None, error: str | None = None,
          task_id: str = "", elapsed: float | None = None, key: str | None = None,
          path: str | None = None, draws: int | None = None) -> dict[str, Any]:
    """A complete, stamped row for one spectrum.

    Parameters
    ----------
    pipeline : workers.pipeline.Pipeline
        Supplies the schema and the provenance (model sha256, demo weights).
    ref : workers.refs.SpectrumRef or None
        The spectrum's reference; None for an invalid reference (then give ``key``).
    spectrum : Spectrum, optional
        What was read (its ids join the row).
    result : mapping, optional
        A row from :func:`values` (a prediction, or a failure the pipeline recorded).
    error : str, optional
        Why the spectrum has no result (used when ``result`` is None).
    key, path : str, optional
        The row's ``spectrum_key`` and ``path`` when there is no valid reference.
    draws : int, optional
        The MC draws the prediction used (recorded unless the spectrum failed).
    """
    if ref is not None:
        head = identity(ref, spectrum)
    else:
        head = {"spectrum_key": key, "path": path if path is not None else key, "hdu": None, "row": None,
                **{f.name: None for f in SOURCE_FIELDS}}
    body = dict(result) if result is not None else values(pipeline.schema, error=error or "no result")
    return stamp({**head, **body}, pipeline, task_id, elapsed, draws)
