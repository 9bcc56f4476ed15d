"""APOGEE apStar files (``apStar.yaml``): HDU 0 header, FLUX/ERR/MASK images and the rest."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from specq.testing.synthetic.fitsfile import _atomic_write, _image_hdu, _primary_hdu, _table
from specq.testing.synthetic.physics import (APOGEE_BADERR, APOGEE_BADPIX, APOGEE_CDELT, APOGEE_CRVAL, APOGEE_NPIX,
                                             APOGEE_SIG_SKYLINE, apogee_flux, apogee_on_chip, apogee_wavelength,
                                             _noisy, _sky_position)
from specq.testing.synthetic.truth import _labels, _mark_synthetic

_APSTAR_RV_COLUMNS = (
    "FILENAME:300A SNR:D VHELIO:D VREL:D VRELERR:D TEFF:D TEFFERR:D LOGG:D LOGGERR:D FEH:D FEHERR:D "
    "CHISQ:D BC:D X_CCF:801D CCF:801D CCFERR:801D XCORR_VREL:D XCORR_VRELERR:D XCORR_VHELIO:D")
_APSTAR_IMAGES = ((1, "Flux (10^-17 erg/s/cm^2/Ang)"), (2, "Err (10^-17 erg/s/cm^2/Ang)"),
                  (3, "Pixel bitmask"), (4, "Sky (10^-17 erg/s/cm^2/Ang)"),
                  (5, "Sky error (10^-17 erg/s/cm^2/Ang)"), (6, "Telluric"), (7, "Telluric error"))
# A few bright OH lines in the H band (vacuum Å): flagged SIG_SKYLINE like real data.
_OH_LINES = (15240.0, 15432.0, 15539.0, 15631.0, 15893.0, 16128.0, 16235.0, 16351.0, 16502.0, 16692.0)


def write_apstar(path: str | os.PathLike, *, teff: float, logg: float, fe_h: float, fakemag: float,
                 snr: float, seed: int, nvisits: int = 1, apogee_id: str = "2M00000000+0000000",
                 k_mag: float | None = None, ebv: float | None = None, v_r: float = 0.0,
                 catalogid: int | None = None, release: str = "DR17",
                 checksums: bool = False) -> list[dict[str, Any]]:
    """Write an apStar file (``apStar.yaml``): FLUX/ERR/MASK/SKY/…/RV table.

    One visit → 1-D images (one row); several → NVISITS + 2 rows: row 0 the combined
    spectrum (mean of the visits), row 1 the same (the other weighting), then the visits.
    Spectra are rest-frame, as in apStar files; ``v_r`` shifts them (default 0) and goes
    into ``VHELIO``.

    Parameters
    ----------
    path : path-like
        Conventionally ``apStar-1.0-apo25m-{apogee_id}.fits``.
    teff, logg, fe_h : float
    fakemag : float
        True astroNN fakemag (``SYNFMAG``); it does not change the pixels.
    snr : float
        S/N per pixel of the combined spectrum (visits: snr / sqrt(nvisits)).
    seed : int
    nvisits : int
    apogee_id : str
    k_mag, ebv : float, optional
        ``K``/``SFD_EBV`` (DR17) or ``KMAG`` (DR19, which has no E(B−V) card).
    catalogid : int, optional
        ``CATID`` (DR19).
    release : {"DR17", "DR19"}
        Which primary-header vocabulary to write.
    checksums : bool
        Write ``DATASUM`` and ``CHECKSUM`` cards. Off by default: the apStar files of the
        data model (``apStar.yaml``) carry none, so a reader reads their rows alone.

    Returns
    -------
    list of dict
        One entry for the combined spectrum (HDU 1, row 0).
    """
    if nvisits < 1:
        raise ValueError("nvisits must be at least 1")
    if release not in ("DR17", "DR19"):
        raise ValueError("release must be 'DR17' or 'DR19'")
    rng = np.random.default_rng(seed)
    wavelength = apogee_wavelength()
    model = apogee_flux(wavelength, teff, logg, fe_h, v_r, rng)
    on_chip = apogee_on_chip(wavelength)
    visit_snr = snr / np.sqrt(nvisits)
    visits = [_noisy(model, visit_snr, rng) for _ in range(nvisits)]
    visit_flux = np.stack([flux for flux, _ in visits])
    visit_err = np.stack([sigma for _, sigma in visits])
    combined = visit_flux.mean(axis=0)
    combined_err = np.sqrt((visit_err ** 2).sum(axis=0)) / nvisits
    mask_row = np.where(on_chip, 0, APOGEE_BADPIX).astype(np.int64)
    for line in _OH_LINES:
        mask_row[np.abs(wavelength - line) < 1.0] |= APOGEE_SIG_SKYLINE
    if nvisits == 1:
        flux, err, mask = combined, combined_err, mask_row
    else:
        flux = np.vstack([combined, combined, visit_flux])
        err = np.vstack([combined_err, combined_err, visit_err])
        mask = np.vstack([mask_row] * (nvisits + 2))
    err = np.where(on_chip, err, APOGEE_BADERR)
    sky = np.where(on_chip, 50.0, 0.0) * np.ones_like(flux)
    telluric = np.where(on_chip, 0.98, 1.0) * np.ones_like(flux)
    images = {1: flux.astype(np.float64), 2: err.astype(np.float64), 3: mask, 4: sky,
              5: np.where(on_chip, 1.0, APOGEE_BADERR) * np.ones_like(flux), 6: telluric,
              7: np.where(on_chip, 0.01, 0.0) * np.ones_like(flux)}

    primary = _primary_hdu()
    header = primary.header
    ra, dec = _sky_position(seed)
    cards: list[tuple[str, Any]] = [("CRVAL1", APOGEE_CRVAL), ("CDELT1", APOGEE_CDELT), ("CRPIX1", 1),
                                    ("CTYPE1", "LOG-LINEAR"), ("DC-FLAG", 1)]
    missing = -9999.990234375  # APOGEE's "no value"
    if release == "DR17":
        cards += [("NWAVE", APOGEE_NPIX), ("FIELD", "SYNTHETIC"), ("OBJID", apogee_id), ("SNR", float(snr)),
                  ("RA", ra), ("DEC", dec),
                  ("J", 99.99 if k_mag is None else k_mag + 0.7), ("J_ERR", 0.02),
                  ("H", 99.99 if k_mag is None else k_mag + 0.15), ("H_ERR", 0.02),
                  ("K", 99.99 if k_mag is None else float(k_mag)),
                  ("K_ERR", 0.02 if k_mag is not None else missing),
                  ("SFD_EBV", missing if ebv is None else float(ebv))]
    else:
        cards += [("OBJID", apogee_id), ("APRED", "1.0"), ("SNR", float(snr)), ("RA", ra), ("DEC", dec),
                  ("JMAG", 99.99 if k_mag is None else k_mag + 0.7), ("JERR", missing),
                  ("HMAG", 99.99 if k_mag is None else k_mag + 0.15), ("HERR", missing),
                  ("KMAG", 99.99 if k_mag is None else float(k_mag)),
                  ("KERR", 0.02 if k_mag is not None else missing),
                  ("CATID", int(catalogid) if catalogid is not None else 0),
                  ("PLX", missing), ("EPLX", missing)]
    cards += [("NVISITS", int(nvisits)), ("STARFLAG", 0), ("ANDFLAG", 0), ("N_COMP", 1),
              ("VHELIO" if release == "DR17" else "VRAD", float(v_r)), ("VSCATTER", 0.0),
              ("RV_TEFF", float(teff)), ("RV_LOGG", float(logg)), ("RV_FEH", float(fe_h))]
    for visit in range(1, nvisits + 1):
        # Visits a few nights apart from MJD 59280 (JD 2459280.5 + 0.4).
        cards += [(f"SFILE{visit}", f"apVisit-synthetic-{visit}.fits"),
                  (f"JD{visit}", 2459280.9 + 3.0 * (visit - 1)), (f"SNRVIS{visit}", float(visit_snr))]
    for key, value in cards:
        header[key] = value
    _mark_synthetic(header, {"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr,
                             "fakemag": fakemag})
    hdus: list = [primary]
    for index, unit in _APSTAR_IMAGES:
        image = _image_hdu(images[index])
        for key, value in (("CRVAL1", APOGEE_CRVAL), ("CDELT1", APOGEE_CDELT), ("CRPIX1", 1),
                           ("CTYPE1", "LOG-LINEAR"), ("BUNIT", unit)):
            image.header[key] = value
        hdus.append(image)
    hdus.append(_table("", 0, {}) if release == "DR19" else _image_hdu(None))  # the (empty) LSF HDU
    hdus.append(_table(_APSTAR_RV_COLUMNS, nvisits, {
        "FILENAME": [f"apVisit-synthetic-{v}.fits" for v in range(1, nvisits + 1)],
        "SNR": [visit_snr] * nvisits, "VHELIO": [v_r] * nvisits, "TEFF": [teff] * nvisits,
        "LOGG": [logg] * nvisits, "FEH": [fe_h] * nvisits}))
    for hdu in hdus:
        hdu.checksums = checksums
    _atomic_write(path, hdus)
    return [{"hdu": 1, "row": 0, "instrument": "apogee", "is_visit": False,
             **_labels({"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr,
                        "fakemag": fakemag})}]
