"""LAMOST low-resolution spectra, DR7 and DR8 layouts (``spec-{MJD}-{PLANID}_sp{SP}-{FIBER}.fits``).

Their names begin with ``spec-`` as BOSS spec-lite files' do, so the layout decides, never
the name alone:

- **DR7** (and earlier): the primary HDU is a 2-D image whose rows are flux, inverse
  variance, wavelength (then and/or masks); the spectrum is HDU 0, row 0.
- **DR8** (and later): HDU 1 is a one-row table (EXTNAME ``COADD`` in the archive's files)
  whose cells ``FLUX``, ``IVAR`` and ``WAVELENGTH`` are whole spectra; no ``LOGLAM``
  column, which is what tells it from a BOSS spec-lite table. The spectrum is HDU 1, row 0.

Wavelengths are in Å as written (vacuum in LAMOST's pipeline). A row's identity is its path
(LAMOST's ``OBSID`` has no place among the SDSS identifiers).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from workers.readers.common import check_hdu, check_row, check_wavelength, header_float, require_columns
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import Spectrum, SpectrumError

DR7 = "lamostDR7"
DR8 = "lamostDR8"
INSTRUMENT = "lamost"
_DR7_ROWS = {"flux": 0, "ivar": 1, "wavelength": 2}
_TABLE_HDU = 1
_WAVELENGTH_RANGE = (3000.0, 11000.0)  # Å: a row of the DR7 image that holds wavelengths


def _is_dr7_image(handle: FitsFile) -> bool:
    header = handle.header(0)
    return int(header.get("NAXIS", 0) or 0) == 2 and handle.nrows(0) >= 3 and int(header.get("NAXIS1", 0) or 0) > 1


def evidence_dr7(handle: FitsFile) -> str | None:
    """Why the content is a LAMOST DR7 file (a primary image of ≥ 3 rows, row 2 a wavelength grid), or None."""
    if not _is_dr7_image(handle):
        return None
    telescope = str(handle.header(0).get("TELESCOP", "")).strip().upper()
    if telescope == "LAMOST":
        return "its primary image has flux/ivar/wavelength rows and TELESCOP = 'LAMOST'"
    wavelength = np.asarray(handle.read_image_row(0, _DR7_ROWS["wavelength"]), dtype=np.float64)
    low, high = _WAVELENGTH_RANGE
    if np.isfinite(wavelength).all() and (np.diff(wavelength) > 0).all() and low < wavelength[0] and wavelength[-1] < high:
        return "its primary image's row 2 is an optical wavelength grid"
    return None


def evidence_dr8(handle: FitsFile) -> str | None:
    """Why the content is a LAMOST DR8 file (HDU 1: one row of FLUX/IVAR/WAVELENGTH cells, no LOGLAM), or None."""
    if handle.hdu_count() <= _TABLE_HDU or not handle.is_table(_TABLE_HDU):
        return None
    if handle.find_column(_TABLE_HDU, "LOGLAM") is not None:
        return None
    if all(handle.find_column(_TABLE_HDU, c) is not None for c in ("FLUX", "IVAR", "WAVELENGTH")):
        return "HDU 1 is a table with FLUX, IVAR and WAVELENGTH cells and no LOGLAM"
    return None


def _ids(handle: FitsFile) -> dict[str, Any]:
    return {}


def list_slots_dr7(handle: FitsFile, instrument: str) -> list[SpectrumSlot]:
    """The spectrum (HDU 0, row 0) for LAMOST pipelines; nothing for others."""
    return [SpectrumSlot(hdu=0, row=0, is_visit=False, ids=_ids(handle))] if instrument == INSTRUMENT else []


def list_slots_dr8(handle: FitsFile, instrument: str) -> list[SpectrumSlot]:
    """The spectrum (HDU 1, row 0) for LAMOST pipelines; nothing for others."""
    if instrument != INSTRUMENT or handle.nrows(_TABLE_HDU) == 0:
        return []
    return [SpectrumSlot(hdu=_TABLE_HDU, row=0, is_visit=False, ids=_ids(handle))]


def _spectrum(handle: FitsFile, hdu: int, row: int, rel_path: str, fmt: str,
              wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray) -> Spectrum:
    where = f", HDU {hdu} row {row}"
    wavelength = check_wavelength(handle.path, where, np.asarray(wavelength, dtype=np.float64).ravel())
    flux = np.asarray(flux, dtype=np.float32).ravel()
    ivar = np.asarray(ivar, dtype=np.float32).ravel()
    if not (len(wavelength) == len(flux) == len(ivar)):
        raise SpectrumError(f"{handle.path}{where}: wavelength, flux and ivar lengths differ "
                            f"({len(wavelength)}, {len(flux)}, {len(ivar)})")
    meta: dict[str, Any] = {"format": fmt}
    for key, card in (("ra", "RA"), ("dec", "DEC")):
        value = header_float(handle.header(0), card)
        if value is not None:
            meta[key] = value
    return Spectrum(path=rel_path, hdu=hdu, row=row, instrument=INSTRUMENT, wavelength=wavelength,
                    flux=flux, ivar=ivar, is_visit=False, ids=_ids(handle), meta=meta)


def read_dr7(handle: FitsFile, hdu: int, row: int, rel_path: str) -> Spectrum:
    """HDU 0, row 0: rows 0, 1, 2 of the primary image are flux, ivar and wavelength."""
    if (hdu, row) != (0, 0):
        raise SpectrumError(f"{handle.path}: a LAMOST DR7 spectrum is addressed as HDU 0 row 0, not HDU {hdu} row {row}")
    rows = {k: handle.read_image_row(0, i) for k, i in _DR7_ROWS.items()}
    return _spectrum(handle, hdu, row, rel_path, DR7, rows["wavelength"], rows["flux"], rows["ivar"])


def read_dr8(handle: FitsFile, hdu: int, row: int, rel_path: str) -> Spectrum:
    """HDU 1, row 0: the FLUX, IVAR and WAVELENGTH cells."""
    if hdu != _TABLE_HDU:
        raise SpectrumError(f"{handle.path}: a LAMOST DR8 spectrum is addressed by HDU 1, not HDU {hdu}")
    check_hdu(handle, hdu)
    check_row(handle, hdu, row)
    cols = require_columns(handle, hdu, f", HDU {hdu} row {row}", flux=("FLUX",), ivar=("IVAR",),
                           wavelength=("WAVELENGTH",))
    values = handle.read_row(hdu, row, list(cols.values()))
    return _spectrum(handle, hdu, row, rel_path, DR8, values[cols["wavelength"]], values[cols["flux"]],
                     values[cols["ivar"]])
