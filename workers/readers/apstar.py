"""APOGEE apStar files: ``apStar-{APRED}-{TELESCOPE}-{OBJ}.fits`` (``apStar.yaml``).

HDU 1 ``FLUX``, HDU 2 ``ERR``, HDU 3 ``MASK`` are images of 8575 pixels: a single row
(1-D image) when the star has one visit, else NVISITS + 2 rows of which row 0 is the
combined spectrum (row 1 the other weighting, rows 2… the visits). The log10-Å grid is
``CRVAL1``/``CDELT1``; photometry is in HDU 0 (``K`` or ``KMAG``, ``SFD_EBV`` …).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from workers.readers.common import check_hdu, check_row, header_float, header_int, header_str, log_lambda_grid
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import Spectrum, SpectrumError

FORMAT = "apStar"
FLUX_HDU, ERR_HDU, MASK_HDU = 1, 2, 3
COMBINED_ROW = 0
# Rows 0 and 1 of a multi-visit file are combined spectra; visits start at row 2.
FIRST_VISIT_ROW = 2
_APOGEE_ID = re.compile(r"(2M\d{8}[+-]\d{7}|AP\d{8}[+-]\d{7})")
_TELESCOPE = re.compile(r"a[ps]Star-[^-]+-(?P<telescope>[a-z]+\d+m)-", re.IGNORECASE)
MJD_OF_JD = 2400000.5

# Header photometry, newest keyword first (DR19 KMAG, DR17 K).
_META_FLOATS = (("k_mag", ("KMAG", "K")), ("e_k_mag", ("KERR", "K_ERR")), ("j_mag", ("JMAG", "J")),
                ("h_mag", ("HMAG", "H")), ("ebv", ("SFD_EBV", "EBV")), ("plx", ("PLX",)),
                ("e_plx", ("EPLX", "E_PLX")), ("ra", ("RA",)), ("dec", ("DEC",)), ("snr", ("SNR",)))


def evidence(handle: FitsFile) -> str | None:
    """Why the content is an apStar file (HDUs 1–3 are images with apStar cards), or None."""
    if handle.hdu_count() <= MASK_HDU:
        return None
    if not all(handle.is_image(i) for i in (FLUX_HDU, ERR_HDU, MASK_HDU)):
        return None
    primary, flux = handle.header(0), handle.header(FLUX_HDU)
    if any(key in primary for key in ("NVISITS", "OBJID")) or "CRVAL1" in flux:
        return "HDUs 1-3 are FLUX, ERR and MASK images"
    return None


def _ids(handle: FitsFile) -> dict[str, Any]:
    primary = handle.header(0)
    ids: dict[str, Any] = {}
    apogee_id = header_str(primary, "OBJID", "APOGEEID", "APOGEE_ID")
    if apogee_id is None:
        match = _APOGEE_ID.search(handle.name)
        apogee_id = match.group(1) if match else None
    if apogee_id:
        ids["apogee_id"] = apogee_id
    for key, cards in (("sdss_id", ("SDSS_ID",)), ("catalogid", ("CATID", "CATALOGID", "CAT_ID"))):
        value = header_int(handle.header(0), *cards)
        if value is not None and value > 0:
            ids[key] = value
    return ids


def _observation(handle: FitsFile, nvisits: int | None) -> dict[str, Any]:
    """File type, telescope (``TELESCOP``, else the file name) and the visits' MJD range (``JDn``)."""
    primary = handle.header(0)
    found: dict[str, Any] = {"filetype": FORMAT}
    telescope = header_str(primary, "TELESCOP")
    match = _TELESCOPE.match(handle.name)
    if telescope or match:
        found["telescope"] = telescope or match["telescope"].lower()
    # No more visits than the images have rows: NVISITS is a header's word (10**12 is no loop to run).
    visits = min(nvisits or 0, handle.nrows(FLUX_HDU))
    jds = [header_float(primary, f"JD{i}") for i in range(1, visits + 1)]
    mjds = [int(jd - MJD_OF_JD) for jd in jds if jd is not None and jd > MJD_OF_JD]
    if mjds:
        found.update(min_mjd=min(mjds), max_mjd=max(mjds))
    return found


def _is_visit(handle: FitsFile, row: int) -> bool:
    # A one-visit file's single row is that visit's coadd: combined, as SDSS treats it.
    return handle.nrows(FLUX_HDU) > 1 and row >= FIRST_VISIT_ROW


def list_slots(handle: FitsFile, instrument: str) -> list[SpectrumSlot]:
    """The combined spectrum (HDU 1, row 0) for AstroNN; nothing for BOSS pipelines."""
    if instrument != "apogee" or handle.nrows(FLUX_HDU) == 0:
        return []
    return [SpectrumSlot(hdu=FLUX_HDU, row=COMBINED_ROW, is_visit=False, ids=_ids(handle))]


def read(handle: FitsFile, hdu: int, row: int, rel_path: str) -> Spectrum:
    """Read row ``row`` of FLUX/ERR/MASK (HDUs 1–3)."""
    where = f", HDU {hdu} row {row}"
    check_hdu(handle, hdu)
    if hdu != FLUX_HDU:
        raise SpectrumError(f"{handle.path}{where}: an apStar spectrum is addressed by HDU 1 (FLUX), "
                            f"not HDU {hdu}")
    for index in (ERR_HDU, MASK_HDU):
        check_hdu(handle, index)
    shapes = {}
    for index in (FLUX_HDU, ERR_HDU, MASK_HDU):
        header = handle.header(index)
        if not handle.is_image(index) or int(header.get("NAXIS", 0) or 0) not in (1, 2):
            raise SpectrumError(f"{handle.path}{where}: HDU {index} is not a 1-D or 2-D image")
        shapes[index] = (handle.nrows(index), header_int(header, "NAXIS1"))
    if len(set(shapes.values())) != 1:
        raise SpectrumError(f"{handle.path}{where}: FLUX, ERR and MASK differ in shape "
                            f"(rows, pixels) {shapes[FLUX_HDU]}, {shapes[ERR_HDU]}, {shapes[MASK_HDU]}")
    check_row(handle, FLUX_HDU, row)

    flux = handle.read_image_row(FLUX_HDU, row, np.float32).ravel()
    error = handle.read_image_row(ERR_HDU, row, np.float32).ravel()
    bitmask = handle.read_image_row(MASK_HDU, row).ravel()
    if bitmask.dtype.kind not in "iu":  # a mask written as floats: its integer values
        bitmask = np.rint(bitmask).astype(np.int64)

    flux_header, primary = handle.header(FLUX_HDU), handle.header(0)
    npix = header_int(primary, "NWAVE")
    if npix is not None and npix != flux.size:
        raise SpectrumError(f"{handle.path}{where}: FLUX has {flux.size} pixels, the header says NWAVE = {npix}")
    wavelength = log_lambda_grid(
        handle.path, where,
        header_float(flux_header, "CRVAL1") if "CRVAL1" in flux_header else header_float(primary, "CRVAL1"),
        header_float(flux_header, "CDELT1") if "CDELT1" in flux_header else header_float(primary, "CDELT1"),
        flux.size,
        header_float(flux_header, "CRPIX1") if "CRPIX1" in flux_header else header_float(primary, "CRPIX1"))

    meta: dict[str, Any] = {"format": FORMAT}
    for key, cards in _META_FLOATS:
        value = header_float(primary, *cards)
        if value is not None:
            meta[key] = value
    nvisits = header_int(primary, "NVISITS")
    if nvisits is not None:
        meta["nvisits"] = nvisits
    meta.update(_observation(handle, nvisits))
    return Spectrum(path=rel_path, hdu=hdu, row=row, instrument="apogee", wavelength=wavelength,
                    flux=flux, error=error, bitmask=bitmask, is_visit=_is_visit(handle, row),
                    ids=_ids(handle), meta=meta)
