"""BOSS spec-lite files: ``spec-{FIELD}-{MJD}-{CATALOGID}.fits`` (``specLite.yaml``).

HDU 1 ``COADD`` is a table with one row per *pixel* (``FLUX``, ``LOGLAM``, ``IVAR``,
``AND_MASK``, …; lower case before DR18); HDU 2 ``SPALL`` holds one row of metadata
(``CATALOGID``, ``SDSS_ID``, ``EBV``, ``TWOMASS_MAG``, …). The file holds one visit
spectrum, addressed as HDU 1, row 0.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from workers.readers.common import (check_hdu, header_float, header_int, header_str, python_scalar,
                                    require_columns, wavelength_of_log10)
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import MAX_PIXELS, Spectrum, SpectrumError

FORMAT = "spec-lite"
FILETYPE = "specLite"  # the SDSS file type (the data model's ``filetype``)
COADD_HDU = 1
SPALL_HDU = 2
_NAME = re.compile(r"spec-(?P<field>\d+)-(?P<mjd>\d+)-(?P<third>\d+)\.fits", re.IGNORECASE)


def _telescope(observatory: str) -> str:
    """The SDSS short telescope name of an observatory (``APO`` → ``apo25m``)."""
    return f"{observatory.strip().lower()}25m"


def evidence(handle: FitsFile) -> str | None:
    """Why the content is a spec-lite file (HDU 1 is the COADD table), or None."""
    if handle.hdu_count() <= COADD_HDU or not handle.is_table(COADD_HDU):
        return None
    if handle.extname(COADD_HDU).upper() == "COADD":
        return "HDU 1 is a COADD table"
    if handle.find_column(COADD_HDU, "LOGLAM") is not None and handle.find_column(COADD_HDU, "FLUX") is not None:
        return "HDU 1 is a table with LOGLAM and FLUX columns"
    return None


def _ids_and_meta(handle: FitsFile) -> tuple[dict[str, Any], dict[str, Any]]:
    """Identifiers and photometry from the SPALL row, the primary header and the file name."""
    ids: dict[str, Any] = {}
    meta: dict[str, Any] = {"format": FORMAT, "filetype": FILETYPE}
    primary = handle.header(0)
    for key, name in (("field", "FIELDID"), ("mjd", "MJD")):
        value = header_int(primary, name)
        if value is not None:
            meta[key] = value
    for key, names in (("ra", ("RA", "PLUG_RA")), ("dec", ("DEC", "PLUG_DEC"))):
        value = header_float(primary, *names)
        if value is not None:
            meta[key] = value  # the telescope's boresight: the SPALL row's object position wins below
    observatory = header_str(primary, "OBSERVAT")
    if observatory:
        meta["telescope"] = _telescope(observatory)

    if handle.hdu_count() > SPALL_HDU and handle.is_table(SPALL_HDU) and handle.nrows(SPALL_HDU) > 0:
        wanted = {role: handle.find_column(SPALL_HDU, name) for role, name in (
            ("catalogid", "CATALOGID"), ("sdss_id", "SDSS_ID"), ("field", "FIELD"), ("mjd", "MJD"),
            ("ebv", "EBV"), ("plx", "PARALLAX"), ("twomass", "TWOMASS_MAG"), ("ra", "RACAT"),
            ("dec", "DECCAT"), ("plug_ra", "PLUG_RA"), ("plug_dec", "PLUG_DEC"), ("snr", "SN_MEDIAN_ALL"),
            ("obs", "OBS"))}
        wanted = {role: name for role, name in wanted.items() if name is not None}
        if wanted:
            row = handle.read_row(SPALL_HDU, 0, list(wanted.values()))
            values = {role: row[name] for role, name in wanted.items()}
            for role in ("catalogid", "sdss_id"):
                value = python_scalar(values.get(role)) if role in values else None
                if isinstance(value, int) and value > 0:
                    ids[role] = value
            for role in ("field", "mjd"):
                value = python_scalar(values.get(role)) if role in values else None
                if isinstance(value, int):
                    meta[role] = value
            for role in ("ebv", "plx"):
                value = python_scalar(values.get(role)) if role in values else None
                if isinstance(value, float) and np.isfinite(value) and value > -999.0:
                    meta[role] = value
            for role, fallback in (("ra", "plug_ra"), ("dec", "plug_dec"), ("snr", None)):
                # The object's catalog position, else its fiber's; a zero position is unset.
                for source in (role, fallback):
                    value = python_scalar(values.get(source)) if source in values else None
                    if isinstance(value, float) and np.isfinite(value) and (role == "snr" or value != 0.0):
                        meta[role] = value
                        break
            observatory = python_scalar(values.get("obs")) if "obs" in values else None
            if isinstance(observatory, str) and observatory:
                meta["telescope"] = _telescope(observatory)
            if "twomass" in values:
                mags = np.asarray(values["twomass"]).ravel()
                # TWOMASS_MAG is (J, H, Ks); zero or non-finite means not measured.
                k_mag = python_scalar(mags[2]) if mags.size >= 3 else None
                if isinstance(k_mag, float) and np.isfinite(k_mag) and 0.0 < k_mag < 98.0:
                    meta["k_mag"] = k_mag

    match = _NAME.fullmatch(handle.name)
    if match:
        meta.setdefault("field", int(match["field"]))
        meta.setdefault("mjd", int(match["mjd"]))
        # The plate era put a 4-digit fiber number there; SDSS-V puts the catalogid.
        if "catalogid" not in ids and len(match["third"]) > 5:
            ids["catalogid"] = int(match["third"])
    return ids, meta


def list_slots(handle: FitsFile, instrument: str) -> list[SpectrumSlot]:
    """The single visit spectrum (HDU 1, row 0) for BossNet; nothing for APOGEE pipelines."""
    if instrument != "boss":
        return []
    check_hdu(handle, COADD_HDU)  # a file cut after HDU 0 says so, not IndexError
    if handle.nrows(COADD_HDU) == 0:
        return []
    ids, _ = _ids_and_meta(handle)
    return [SpectrumSlot(hdu=COADD_HDU, row=0, is_visit=True, ids=ids)]


def read(handle: FitsFile, hdu: int, row: int, rel_path: str) -> Spectrum:
    """Read the COADD spectrum of a spec-lite file."""
    where = f", HDU {hdu} row {row}"
    check_hdu(handle, hdu)
    if hdu != COADD_HDU:
        raise SpectrumError(f"{handle.path}{where}: a spec-lite spectrum is in HDU 1 (COADD), not HDU {hdu}")
    if row != 0:
        raise SpectrumError(f"{handle.path}{where}: a spec-lite file holds one spectrum: use row 0")
    if not handle.is_table(hdu):
        raise SpectrumError(f"{handle.path}{where}: {handle.describe(hdu)} is not a table")
    names = require_columns(handle, hdu, where, flux=("FLUX",), loglam=("LOGLAM",), ivar=("IVAR",))
    if handle.nrows(hdu) > MAX_PIXELS:  # before any column is read: memory stays bounded
        raise SpectrumError(f"{handle.path}{where}: COADD has {handle.nrows(hdu)} rows (pixels); "
                            f"a spectrum has at most {MAX_PIXELS}")
    mask_name = handle.find_column(hdu, "AND_MASK")
    flux = handle.read_column(hdu, names["flux"])
    loglam = handle.read_column(hdu, names["loglam"])
    ivar = handle.read_column(hdu, names["ivar"])
    if flux.ndim != 1:
        raise SpectrumError(f"{handle.path}{where}: FLUX has shape {flux.shape}, expected one value per row")
    if flux.size == 0:
        raise SpectrumError(f"{handle.path}{where}: empty spectrum (COADD has 0 rows)")
    if loglam.shape != flux.shape or ivar.shape != flux.shape:
        raise SpectrumError(
            f"{handle.path}{where}: column lengths differ: "
            f"FLUX {flux.shape}, LOGLAM {loglam.shape}, IVAR {ivar.shape}")
    wavelength = wavelength_of_log10(handle.path, where, loglam)
    bitmask = handle.read_column(hdu, mask_name, np.int64) if mask_name else None
    ids, meta = _ids_and_meta(handle)
    return Spectrum(path=rel_path, hdu=hdu, row=row, instrument="boss", wavelength=wavelength,
                    flux=flux.astype(np.float32), ivar=ivar.astype(np.float32), bitmask=bitmask,
                    is_visit=True, ids=ids, meta=meta)

