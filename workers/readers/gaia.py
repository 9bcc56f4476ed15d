"""Gaia DR3 tables of RVS mean spectra and of XP continuous spectra: one spectrum per row, one row per ``source_id``.

As the Gaia archive serves them, these are ECSV files (plain or gzipped); FITS (HDU 1 a
binary table) and Parquet files with the same columns are read too. The columns decide
the product, never the name:

- **RVS** (``gaiaRVS``): ``source_id``, ``flux`` and ``flux_error``, 2,401 pixels each
  (846–870 nm in 0.01 nm steps).
- **XP** (``gaiaXP``): ``source_id``, ``bp_coefficients``, ``rp_coefficients``, their
  ``*_coefficient_errors`` and ``*_coefficient_correlations`` (the lower triangle of each
  band's correlation matrix, row by row).

A spectrum's identity is its ``source_id``, carried as ``gaia_dr3_source_id``. Its address
is HDU 1 (the table, whatever the file's kind) and the table row.

The :class:`~workers.spectrum.Spectrum` of an RVS row has the flux and its error on the
RVS wavelength grid; that of an XP row has the 110 coefficients (BP then RP) as ``flux``,
their errors as ``error``, the coefficient index as ``wavelength``, and each band's
correlations in ``meta`` (``bp_coefficient_correlations``, ``rp_coefficient_correlations``).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from workers.readers.errors import TransientReadError
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import Spectrum, SpectrumError

RVS = "gaiaRVS"
XP = "gaiaXP"
INSTRUMENTS = {RVS: "gaia_rvs", XP: "gaia_xp"}
TABLE_HDU = 1
ID_COLUMN = "source_id"
RVS_COLUMNS = ("flux", "flux_error")
XP_COLUMNS = ("bp_coefficients", "rp_coefficients", "bp_coefficient_errors", "rp_coefficient_errors",
              "bp_coefficient_correlations", "rp_coefficient_correlations")
RVS_WAVELENGTH = 8460.0 + 0.1 * np.arange(2401)  # Å, the DR3 RVS mean-spectrum grid
TABLE_SUFFIXES = (".ecsv", ".ecsv.gz", ".parquet")


def _kind_of(columns) -> str | None:
    lower = {c.lower() for c in columns}
    if ID_COLUMN not in lower:
        return None
    if all(c in lower for c in XP_COLUMNS):
        return XP
    if all(c in lower for c in RVS_COLUMNS):
        return RVS
    return None


# -- FITS tables, through the format table --------------------------------------------------

def _fits_kind(handle: FitsFile) -> str | None:
    if handle.hdu_count() <= TABLE_HDU or not handle.is_table(TABLE_HDU):
        return None
    return _kind_of(handle.columns(TABLE_HDU))


def evidence(handle: FitsFile, kind: str) -> str | None:
    """Why the content is a Gaia ``kind`` table (HDU 1's columns), or None."""
    if _fits_kind(handle) != kind:
        return None
    return f"HDU 1 is a table with source_id and the Gaia {'XP' if kind == XP else 'RVS'} spectrum columns"


def list_slots(handle: FitsFile, instrument: str, *, kind: str) -> list[SpectrumSlot]:
    """One slot per row for the ``kind``'s pipelines; nothing for others."""
    if instrument != INSTRUMENTS[kind]:
        return []
    ids = handle.read_column(TABLE_HDU, handle.find_column(TABLE_HDU, ID_COLUMN))
    return _slots(ids)


def read(handle: FitsFile, hdu: int, row: int, rel_path: str, *, kind: str) -> Spectrum:
    """Row ``row`` of HDU 1."""
    if hdu != TABLE_HDU:
        raise SpectrumError(f"{handle.path}: a Gaia table's spectra are addressed by HDU 1, not HDU {hdu}")
    names = (ID_COLUMN, *(XP_COLUMNS if kind == XP else RVS_COLUMNS))
    columns = {name: handle.find_column(TABLE_HDU, name) for name in names}
    values = handle.read_row(TABLE_HDU, row, list(columns.values()))
    return spectrum_from_row(kind, {name: values[col] for name, col in columns.items()}, rel_path, row, handle.path)


# -- ECSV and Parquet tables -------------------------------------------------------------------

def is_table_file(path: str | os.PathLike) -> bool:
    """True for the names read as ECSV or Parquet tables rather than FITS."""
    return str(path).lower().endswith(TABLE_SUFFIXES)


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int):
    """The table (read once per file version: each of its rows is a spectrum)."""
    from astropy.table import Table

    fmt = "parquet" if path.lower().endswith(".parquet") else "ascii.ecsv"
    try:
        table = Table.read(path, format=fmt)
    except OSError as exc:
        raise TransientReadError(f"{path}: cannot be read ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - astropy's parsers raise many kinds for a malformed table
        raise SpectrumError(f"{path}: not a readable {'Parquet' if fmt == 'parquet' else 'ECSV'} table "
                            f"({type(exc).__name__}: {exc})") from exc
    kind = _kind_of(table.colnames)
    if kind is None:
        raise SpectrumError(f"{path}: a table, but not a Gaia RVS (source_id, flux, flux_error) or XP "
                            f"(source_id, bp_/rp_coefficients, errors, correlations) table; columns: "
                            f"{', '.join(table.colnames[:12])}")
    return kind, table


def open_table(path: str | os.PathLike):
    """``(kind, Table)`` of an ECSV/Parquet Gaia table.

    Raises
    ------
    TransientReadError
        The file is missing or unreadable.
    SpectrumError
        Not a table, or not a Gaia RVS/XP one.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TransientReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return _load(str(path), st.st_mtime_ns, st.st_size)


def table_slots(path: str | os.PathLike, instrument: str) -> list[SpectrumSlot]:
    kind, table = open_table(path)
    return _slots(np.ma.asarray(table[ID_COLUMN])) if instrument == INSTRUMENTS[kind] else []


def table_read(path: str | os.PathLike, hdu: int, row: int, rel_path: str) -> Spectrum:
    kind, table = open_table(path)
    if hdu != TABLE_HDU or not 0 <= row < len(table):
        raise SpectrumError(f"{path}: HDU {hdu} row {row} is not a row of the table (HDU 1, {len(table)} rows)")
    names = (ID_COLUMN, *(XP_COLUMNS if kind == XP else RVS_COLUMNS))
    return spectrum_from_row(kind, {n: table[n][row] for n in names}, rel_path, row, Path(path))


# -- shared ----------------------------------------------------------------------------------

def _slots(ids) -> list[SpectrumSlot]:
    # A row without a usable source_id is still a slot: reading it flags that row alone.
    slots = []
    for i, value in enumerate(np.ma.asarray(ids)):
        source_id = _source_id(value)
        slots.append(SpectrumSlot(hdu=TABLE_HDU, row=i, is_visit=False,
                                  ids={} if source_id is None else {"gaia_dr3_source_id": source_id}))
    return slots


_INT64_MAX = 2**63 - 1
_FLOAT_EXACT = 2**53  # the largest float below which every integer is exact


def _source_id(value) -> int | None:
    """A row's ``source_id`` as an int; None when it is masked, not a whole number, or not
    a positive 64-bit integer (Gaia DR3's are positive and need more digits than a float holds)."""
    if value is np.ma.masked or np.ma.is_masked(value):
        return None
    if isinstance(value, np.ndarray | np.generic):  # a table cell: its Python value, exact for int64
        if value.size != 1:
            return None
        value = value.reshape(-1)[0].item()
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("ascii", "replace")
    try:
        if isinstance(value, (str, np.str_)):
            number = int(value.strip())
        elif isinstance(value, (bool, np.bool_)):
            return None
        elif isinstance(value, (int, np.integer)):
            number = int(value)
        else:
            real = float(value)
            # NaN and ±inf raise here; beyond 2**53 a float no longer tells neighbouring ids apart
            number = int(real) if real == int(real) and abs(real) <= _FLOAT_EXACT else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and 0 < number <= _INT64_MAX else None


def _array(value, path, row, name) -> np.ndarray:
    array = np.ma.filled(np.ma.asarray(value, dtype=np.float64), np.nan).ravel()
    if array.size == 0:
        raise SpectrumError(f"{path}, HDU 1 row {row}: {name} is empty")
    return array


def spectrum_from_row(kind: str, values: dict[str, Any], rel_path: str, row: int, path) -> Spectrum:
    """The :class:`~workers.spectrum.Spectrum` of one table row (see the module docstring)."""
    source_id = _source_id(values[ID_COLUMN])
    if source_id is None:
        shown = values[ID_COLUMN]
        if isinstance(shown, np.ndarray | np.generic) and shown.size == 1:
            shown = shown.item()  # 1.5 and nan, not array(1.5) and np.float64(nan)
        raise SpectrumError(f"{path}, HDU 1 row {row}: source_id {shown!r} is not a Gaia DR3 "
                            f"source_id (a positive 64-bit integer)")
    ids = {"gaia_dr3_source_id": source_id}
    meta: dict[str, Any] = {"format": kind, "gaia_dr3_source_id": source_id}
    if kind == RVS:
        flux, error = (_array(values[c], path, row, c) for c in RVS_COLUMNS)
        if not len(flux) == len(error) == len(RVS_WAVELENGTH):
            raise SpectrumError(f"{path}, HDU 1 row {row}: an RVS spectrum has {len(RVS_WAVELENGTH)} pixels, "
                                f"not {len(flux)} flux and {len(error)} flux_error values")
        return Spectrum(path=rel_path, hdu=TABLE_HDU, row=row, instrument=INSTRUMENTS[kind],
                        wavelength=RVS_WAVELENGTH.copy(), flux=flux.astype(np.float32),
                        error=error.astype(np.float32), ids=ids, meta=meta)
    arrays = {c: _array(values[c], path, row, c) for c in XP_COLUMNS}
    for band in ("bp", "rp"):
        n = len(arrays[f"{band}_coefficients"])
        if len(arrays[f"{band}_coefficient_errors"]) != n or len(arrays[f"{band}_coefficient_correlations"]) != n * (n - 1) // 2:
            raise SpectrumError(f"{path}, HDU 1 row {row}: {band.upper()} has {n} coefficients but "
                                f"{len(arrays[f'{band}_coefficient_errors'])} errors and "
                                f"{len(arrays[f'{band}_coefficient_correlations'])} correlations")
        meta[f"{band}_coefficient_correlations"] = arrays[f"{band}_coefficient_correlations"].astype(np.float32)
    flux = np.concatenate([arrays["bp_coefficients"], arrays["rp_coefficients"]]).astype(np.float32)
    error = np.concatenate([arrays["bp_coefficient_errors"], arrays["rp_coefficient_errors"]]).astype(np.float32)
    return Spectrum(path=rel_path, hdu=TABLE_HDU, row=row, instrument=INSTRUMENTS[kind],
                    wavelength=np.arange(len(flux), dtype=np.float64), flux=flux, error=error, ids=ids, meta=meta)
