"""Milky Way Mapper files: mwmVisit and mwmStar (``mwmVisit.yaml``, ``mwmStar.yaml``).

HDU 0 describes the source (``SDSS_ID``, ``CAT_ID``, ``APOGEEID``, ``K_MAG``, ``PLX`` …).
HDUs 1–4 (``BOSS/APO``, ``BOSS/LCO``, ``APOGEE/APO``, ``APOGEE/LCO``) are tables with one
spectrum per row — visits in mwmVisit, combined spectra in mwmStar, zero rows where
there is none — with array columns ``flux``, ``ivar``, ``pixel_flags``. The log10-Å
wavelength grid is in each table's header: ``CRVAL``, ``CDELT``, ``NPIXELS``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from workers.readers.common import (check_hdu, check_row, header_float, header_int, header_str,
                                    log_lambda_grid, python_scalar, require_columns)
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import Spectrum, SpectrumError

STAR = "mwmStar"
VISIT = "mwmVisit"

# HDU index -> (EXTNAME, instrument), fixed by the data model.
HDUS = {1: ("BOSS/APO", "boss"), 2: ("BOSS/LCO", "boss"),
        3: ("APOGEE/APO", "apogee"), 4: ("APOGEE/LCO", "apogee")}
EXTNAMES = {name for name, _ in HDUS.values()}
# Rows (spectra) one MWM table may list: a star's visits number hundreds at most. A header's
# NAXIS2 is otherwise bounded only by the data, and 1-byte rows of zeros gzip to nothing: a
# 3 kB file would list 3 million spectra (a gigabyte of slots, each then read and flagged).
MAX_ROWS = 100_000
_NAME = re.compile(r"(?P<kind>mwmStar|mwmVisit)-(?P<v_astra>[^-]+)-(?P<sdss_id>\d+)\.fits", re.IGNORECASE)

# Columns only one of the two products has (any data release).
_STAR_ONLY = {"min_mjd", "max_mjd", "n_entries"}
_VISIT_ONLY = {"mjd", "fieldid", "visit_pk", "drp_spectrum_pk_id", "date_obs"}

# The primary-header photometry handed on in ``Spectrum.meta``.
_META_FLOATS = (("k_mag", ("K_MAG",)), ("e_k_mag", ("E_K_MAG",)), ("j_mag", ("J_MAG",)),
                ("h_mag", ("H_MAG",)), ("ebv", ("EBV", "SFD_EBV", "E_BV")),
                ("plx", ("PLX",)), ("e_plx", ("E_PLX",)), ("ra", ("RA",)), ("dec", ("DEC",)))


def looks_like(handle: FitsFile) -> bool:
    """Any of HDUs 1–4 is named like an MWM spectrum table."""
    count = handle.hdu_count()
    return any(handle.extname(i).upper() in EXTNAMES for i in range(1, min(count, 5)))


def content_kind(handle: FitsFile) -> tuple[str, str] | None:
    """``(mwmStar or mwmVisit, why)`` from the columns of an MWM file's tables; None when they don't tell.

    The first table whose columns belong to only one of the two products decides.
    """
    if not looks_like(handle):
        return None
    for index in range(1, min(handle.hdu_count(), 5)):
        if not handle.is_table(index):
            continue
        columns = handle.lower_columns(index)
        star, visit = columns & _STAR_ONLY, columns & _VISIT_ONLY
        if star and not visit:
            return STAR, f"{handle.describe(index)} has the mwmStar column(s) {', '.join(sorted(star))}"
        if visit and not star:
            return VISIT, f"{handle.describe(index)} has the mwmVisit column(s) {', '.join(sorted(visit))}"
    return None


def evidence(handle: FitsFile, fmt: str) -> str | None:
    """Why the content is an ``fmt`` (mwmStar or mwmVisit) file, or None."""
    # Both products ask, one after the other: the headers are looked through once.
    kept = handle.kept("mwm content kind")
    if kept is None:
        kept = (content_kind(handle),)
        handle.keep("mwm content kind", kept)
    found = kept[0]
    return found[1] if found is not None and found[0] == fmt else None


def _instrument(handle: FitsFile, index: int) -> str | None:
    """Which instrument HDU ``index`` holds: its EXTNAME/INSTRMNT, else the data model's order."""
    name = handle.extname(index).upper()
    for extname, instrument in HDUS.values():
        if name == extname:
            return instrument
    declared = header_str(handle.header(index), "INSTRMNT")
    if declared and declared.lower() in ("boss", "apogee"):
        return declared.lower()
    return HDUS[index][1] if index in HDUS else None


def _source_ids(handle: FitsFile) -> dict[str, Any]:
    primary = handle.header(0)
    ids: dict[str, Any] = {}
    sdss_id = header_int(primary, "SDSS_ID")
    if sdss_id is None:
        match = _NAME.fullmatch(handle.name)
        sdss_id = int(match["sdss_id"]) if match else None
    if sdss_id is not None and sdss_id > 0:
        ids["sdss_id"] = sdss_id
    catalogid = header_int(primary, "CAT_ID", "CATALOGID", "CAT_ID31")
    if catalogid is not None and catalogid > 0:
        ids["catalogid"] = catalogid
    apogee_id = header_str(primary, "APOGEEID", "APOGEE_ID")
    if apogee_id:
        ids["apogee_id"] = apogee_id
    return ids


# Row values handed on in ``Spectrum.meta`` (the row's source columns of the data model).
_ROW_META = ("snr", "mjd", "min_mjd", "max_mjd", "telescope")
_ROW_ID_COLUMNS = (("spectrum_pk", ("spectrum_pk_id", "spectrum_pk")), ("catalogid", ("catalogid",)),
                   ("sdss_id", ("sdss_id",)), ("apogee_id", ("obj",)))


def _row_ids(source: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Merge the source ids with one row's: the row's own catalogid/pk win, blanks don't."""
    ids = dict(source)
    for role, value in values.items():
        value = python_scalar(value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if value > 0:
                ids[role] = int(value)
        elif isinstance(value, str) and value:
            ids[role] = value
    return ids


def list_slots(handle: FitsFile, instrument: str, *, fmt: str) -> list[SpectrumSlot]:
    """Rows of the instrument's HDUs, visits marked as such (a pipeline that takes none refuses them)."""
    source = _source_ids(handle)
    slots: list[SpectrumSlot] = []
    for index in range(1, min(handle.hdu_count(), 5)):
        if not handle.is_table(index) or _instrument(handle, index) != instrument:
            continue
        count = handle.nrows(index)
        if count == 0:
            continue
        if count > MAX_ROWS:
            raise SpectrumError(f"{handle.path}: {handle.describe(index)} has {count} rows: an MWM table "
                                f"holds at most {MAX_ROWS} spectra")
        # One small read per id column: the spectrum_pk and a visit's catalogid live only there.
        columns = {role: handle.find_column(index, *names) for role, names in _ROW_ID_COLUMNS}
        values = {role: handle.read_column(index, name) for role, name in columns.items() if name}
        for row in range(count):
            ids = _row_ids(source, {role: column[row] for role, column in values.items()})
            slots.append(SpectrumSlot(hdu=index, row=row, is_visit=(fmt == VISIT), ids=ids))
    return slots


def read(handle: FitsFile, hdu: int, row: int, rel_path: str, *, fmt: str) -> Spectrum:
    """Read row ``row`` of table HDU ``hdu`` of an mwmStar/mwmVisit file."""
    where = f", HDU {hdu} row {row}"
    check_hdu(handle, hdu)
    if hdu not in HDUS:
        raise SpectrumError(f"{handle.path}{where}: {fmt} spectra are in HDUs 1-4 "
                            f"(BOSS/APO, BOSS/LCO, APOGEE/APO, APOGEE/LCO), not HDU {hdu}")
    if not handle.is_table(hdu):
        raise SpectrumError(f"{handle.path}{where}: {handle.describe(hdu)} is not a table")
    instrument = _instrument(handle, hdu)
    check_row(handle, hdu, row)
    names = require_columns(handle, hdu, where, flux=("flux",), ivar=("ivar",))
    extra = {role: handle.find_column(hdu, *candidates) for role, candidates in (
        ("pixel_flags", ("pixel_flags",)), ("snr", ("snr",)), ("mjd", ("mjd",)),
        ("min_mjd", ("min_mjd",)), ("max_mjd", ("max_mjd",)), ("telescope", ("telescope",)),
        *_ROW_ID_COLUMNS)}
    extra = {role: name for role, name in extra.items() if name}
    values = handle.read_row(hdu, row, [names["flux"], names["ivar"], *extra.values()])

    # read_row's values are copies of their own: not copied again where already float32.
    flux = values[names["flux"]].astype(np.float32, copy=False).ravel()
    ivar = values[names["ivar"]].astype(np.float32, copy=False).ravel()
    if ivar.shape != flux.shape:
        raise SpectrumError(f"{handle.path}{where}: flux has {flux.size} pixels but ivar has {ivar.size}")
    header = handle.header(hdu)
    npix = header_int(header, "NPIXELS")
    if npix is not None and npix != flux.size:
        raise SpectrumError(f"{handle.path}{where}: flux has {flux.size} pixels, the header says NPIXELS = {npix}")
    wavelength = log_lambda_grid(handle.path, where, header_float(header, "CRVAL", "CRVAL1"),
                                 header_float(header, "CDELT", "CDELT1"), flux.size,
                                 header_float(header, "CRPIX", "CRPIX1"))
    bitmask = None
    if "pixel_flags" in extra:
        flags = values[extra["pixel_flags"]].ravel()
        if flags.shape != flux.shape:
            raise SpectrumError(
                f"{handle.path}{where}: flux has {flux.size} pixels but pixel_flags has {flags.size}")
        # The data model stores pixel_flags as float32; the bits are what matters.
        bitmask = np.rint(flags).astype(np.int64) if flags.dtype.kind == "f" else flags.astype(np.int64)

    error = None
    if instrument == "apogee":
        with np.errstate(divide="ignore", invalid="ignore"):
            usable = np.isfinite(ivar) & (ivar > 0)
            error = np.where(usable, ivar, 1.0).astype(np.float32) ** -0.5
        error[~usable] = np.inf

    ids = _row_ids(_source_ids(handle), {role: values[extra[role]] for role, _ in _ROW_ID_COLUMNS
                                         if role in extra})
    meta = _meta(handle, fmt, hdu, row, {role: values[extra[role]] for role in _ROW_META if role in extra})
    return Spectrum(path=rel_path, hdu=hdu, row=row, instrument=instrument or "boss",
                    wavelength=wavelength, flux=flux, ivar=ivar, error=error, bitmask=bitmask,
                    is_visit=(fmt == VISIT), ids=ids, meta=meta)


def header_meta(primary: Mapping[str, Any]) -> dict[str, float]:
    """The photometry and position an MWM file's HDU 0 gives (``k_mag``, ``ebv``, ``plx``, ``ra`` …)."""
    found = {key: header_float(primary, *cards) for key, cards in _META_FLOATS}
    return {key: value for key, value in found.items() if value is not None}


def _meta(handle: FitsFile, fmt: str, hdu: int, row: int, row_values: dict[str, Any]) -> dict[str, Any]:
    primary = handle.header(0)
    meta: dict[str, Any] = {"format": fmt, "filetype": fmt, "extname": handle.extname(hdu)}
    meta.update(header_meta(primary))
    gaia = header_int(primary, "GAIA3_ID")
    if gaia is not None and gaia > 0:  # a source field, not a reference id (see workers.schema)
        meta["gaia_dr3_source_id"] = gaia
    for key, value in row_values.items():
        value = python_scalar(value)
        if value is not None and not (isinstance(value, float) and not np.isfinite(value)):
            meta[key] = value
    return meta
