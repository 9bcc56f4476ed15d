"""BOSS spec-lite files (``specLite.yaml``): HDU 0, HDU 1 ``COADD``, HDU 2 ``SPALL``."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from specq.testing.synthetic.fitsfile import _atomic_write, _primary_hdu, _table
from specq.testing.synthetic.physics import (BOSS_BRIGHTSKY, BOSS_CDELT, BOSS_CRVAL, BOSS_NPIX, C_KMS, boss_flux,
                                             boss_wavelength, _ivar, _noisy, _sky_position)
from specq.testing.synthetic.truth import _labels, _mark_synthetic

_COADD_COLUMNS = "FLUX:E LOGLAM:E IVAR:E AND_MASK:J OR_MASK:J WDISP:E SKY:E MODEL:E WRESL:E"
_SPALL_COLUMNS = (
    "FIELD:K MJD:K OBS:3A MJD_FINAL:D MJD_LIST:47A TAI_LIST:87A RUN2D:6A RUN1D:6A DESIGNS:55A "
    "CONFIGS:39A NEXP:I EXPTIME:E TARGET_INDEX:K FIBERID_LIST:31A SPEC_FILE:41A PROGRAMNAME:7A "
    "SURVEY:3A CADENCE:10A FIRSTCARTON:17A CARTON_TO_TARGET_PK:19A SDSS5_TARGET_FLAGS:69L "
    "OBJTYPE:16A TOO:15A TOO_ID:K CATALOGID:K CATALOGID_V0:K CATALOGID_V0P5:K CATALOGID_V1:K "
    "SDSS_ID:K SPECOBJID:29A CALIBFLUX:5E CALIBFLUX_IVAR:5E OPTICAL_PROV:21A MAG:5E PSFMAG:5E "
    "FIBER2MAG:5E CATDB_MAG:5E GAIA_G_MAG:E GRI_GAIA_TRANSFORM:K BP_MAG:E RP_MAG:E GAIA_ID:K "
    "WISE_MAG:4E TWOMASS_MAG:3E GUVCAT_MAG:2E EBV:E EBV_TYPE:3A FIBER_RA:D FIBER_DEC:D PLUG_RA:D "
    "PLUG_DEC:D RACAT:D DECCAT:D COORD_EPOCH:E PMRA:E PMDEC:E PARALLAX:E RA_LIST:87A DEC_LIST:71A "
    "DELTA_RA_LIST:63A DELTA_DEC_LIST:63A FIBER_OFFSET:K XFOCAL:71A YFOCAL:71A ZOFFSET:E "
    "LAMBDA_EFF:E BLUEFIBER:K HEALPIX:K HEALPIXGRP:K HEALPIX_PATH:68A FIELDQUALITY:4A "
    "EXP_DISP_MED:D FIELDSN2:E FIELDSNR2G_LIST:39A FIELDSNR2R_LIST:39A FIELDSNR2I_LIST:39A "
    "SPEC1_G:E SPEC1_R:E SPEC1_I:E SPEC2_G:E SPEC2_R:E SPEC2_I:E SN_MEDIAN:5E SN_MEDIAN_ALL:E "
    "AIRMASS:E SEEING20:E SEEING50:E SEEING80:E MOON_DIST:47A MOON_PHASE:39A ASSIGNED:15A "
    "ON_TARGET:15A VALID:15A DECOLLIDED:15A ANYANDMASK:K ANYORMASK:K SPECPRIMARY:K SPECBOSS:K "
    "BOSS_SPECOBJ_ID:K NSPECOBS:K SPECTROFLUX:5E SPECTROFLUX_IVAR:5E SPECTROSYNFLUX:5E "
    "SPECTROSYNFLUX_IVAR:5E SPECTROSKYFLUX:5E WAVEMIN:E WAVEMAX:E WCOVERAGE:E CLASS:6A "
    "SUBCLASS:21A Z:E Z_ERR:E ZWARNING:K RCHI2:E DOF:K RCHI2DIFF:E TFILE:24A TCOLUMN:10K NPOLY:K "
    "THETA:10E VDISP:E VDISP_ERR:E VDISPZ:E VDISPZ_ERR:E VDISPCHI2:E VDISPNPIX:E VDISPDOF:K "
    "CHI68P:E FRACNSIGMA:10E FRACNSIGHI:10E FRACNSIGLO:10E Z_NOQSO:E Z_ERR_NOQSO:E ZNUM_NOQSO:K "
    "ZWARNING_NOQSO:K CLASS_NOQSO:6A SUBCLASS_NOQSO:21A RCHI2DIFF_NOQSO:E XCSAO_RV:E XCSAO_ERV:E "
    "XCSAO_RXC:E XCSAO_TEFF:E XCSAO_ETEFF:E XCSAO_LOGG:E XCSAO_ELOGG:E XCSAO_FEH:E XCSAO_EFEH:E")
# Optical night-sky emission lines (vacuum Å) for the SKY column and the BRIGHTSKY bit.
_SKY_LINES = (5578.89, 5891.58, 5897.56, 6302.05, 6365.54, 7343.0, 7823.0, 8346.0, 8401.0,
              8432.0, 8829.0, 8886.0, 8921.0, 9378.0, 9441.0, 9792.0)


def _boss_sky(wavelength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth sky continuum plus emission lines, and the pixels they make bright."""
    sky = 2.0 + 1.5 * (wavelength / 10000.0) ** 2
    bright = np.zeros(wavelength.shape, dtype=bool)
    for centre in _SKY_LINES:
        profile = np.exp(-0.5 * ((wavelength - centre) / 1.5) ** 2)
        sky += 40.0 * profile
        bright |= profile > 0.1
    return sky, bright


def write_spec_lite(path: str | os.PathLike, *, teff: float, logg: float, fe_h: float, v_r: float,
                    snr: float, seed: int, catalogid: int = 27021598150202075, field: int = 112360,
                    mjd: int = 60000, sdss_id: int | None = None, k_mag: float | None = None,
                    ebv: float | None = None, lowercase: bool = False) -> list[dict[str, Any]]:
    """Write a BOSS spec-lite file (``specLite.yaml``): HDU 0, HDU 1 COADD, HDU 2 SPALL.

    Parameters
    ----------
    path : path-like
        Conventionally ``spec-{field:06d}-{mjd}-{catalogid}.fits``.
    teff, logg, fe_h, v_r, snr : float
        True labels, Doppler shift (km/s) and S/N per pixel.
    seed : int
        Seeds brightness and noise.
    catalogid, field, mjd, sdss_id : int
        Identity (SPALL row and primary header).
    k_mag, ebv : float, optional
        Written to SPALL ``TWOMASS_MAG[2]`` and ``EBV``.
    lowercase : bool
        Write the COADD the pre-DR18 way: 8 lower-case columns (no WRESL).

    Returns
    -------
    list of dict
        One entry: ``hdu``, ``row``, ``instrument``, ``is_visit`` and the labels.
    """
    rng = np.random.default_rng(seed)
    wavelength = boss_wavelength()
    loglam = (BOSS_CRVAL + BOSS_CDELT * np.arange(BOSS_NPIX)).astype(np.float32)
    model = boss_flux(wavelength, teff, logg, fe_h, v_r, rng)
    flux, sigma = _noisy(model, snr, rng)
    sky, bright = _boss_sky(wavelength)
    or_mask = np.where(bright, BOSS_BRIGHTSKY, 0).astype(np.int32)
    wdisp = np.linspace(1.15, 0.95, BOSS_NPIX, dtype=np.float32)  # pixels
    wresl = (wavelength * np.log(10.0) * BOSS_CDELT * 2.355 * wdisp).astype(np.float32)
    pixel_columns = {"FLUX": flux, "LOGLAM": loglam, "IVAR": _ivar(sigma), "AND_MASK": 0,
                     "OR_MASK": or_mask, "WDISP": wdisp, "SKY": sky, "MODEL": model, "WRESL": wresl}
    units = {"FLUX": "10^-17 ergs/s/cm^2/Angs", "LOGLAM": "log10(Angs)", "WDISP": "Pixels",
             "SKY": "10^-17 ergs/s/cm^2/Angs", "WRESL": "Angs"}
    spec = _COADD_COLUMNS
    if lowercase:  # DR17 and earlier: lower-case names, no WRESL
        spec = spec.lower().replace(" wresl:e", "").replace(":e", ":E").replace(":j", ":J")
        pixel_columns = {name.lower(): value for name, value in pixel_columns.items()}
        units = {name.lower(): unit for name, unit in units.items()}
    coadd = _table(spec, BOSS_NPIX, pixel_columns, name="COADD", units=units)

    primary = _primary_hdu()
    header = primary.header
    ra, dec = _sky_position(seed)
    for key, value in (("TELESCOP", "SDSS 2.5-M"), ("OBSERVAT", "APO"), ("NEXP", 4),
                       ("EXPTIME", 3600.0), ("FIELDID", int(field)), ("MJD", int(mjd)),
                       ("RA", ra), ("DEC", dec), ("RADEG", ra), ("DECDEG", dec), ("EQUINOX", 2000.0),
                       ("RADECSYS", "FK5"), ("RUN2D", "v6_1_3"), ("VACUUM", True),
                       ("CRVAL1", BOSS_CRVAL), ("CD1_1", BOSS_CDELT), ("CRPIX1", 1.0),
                       ("CTYPE1", "LOG-LINEAR"), ("DC-FLAG", 1), ("HELIO_RV", 0.0)):
        header[key] = value
    _mark_synthetic(header, {"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr})

    twomass = [np.nan, np.nan, np.nan] if k_mag is None else [k_mag + 0.7, k_mag + 0.15, k_mag]
    spall = _table(_SPALL_COLUMNS, 1, {
        "FIELD": field, "MJD": mjd, "OBS": "APO", "MJD_FINAL": float(mjd), "MJD_LIST": str(mjd),
        "RUN2D": "v6_1_3", "RUN1D": "v6_1_3", "NEXP": 4, "EXPTIME": 3600.0,
        "SPEC_FILE": f"spec-{int(field):06d}-{int(mjd)}-{int(catalogid)}.fits",
        "PROGRAMNAME": "mwm", "SURVEY": "MWM", "OBJTYPE": "science",
        "CATALOGID": catalogid, "CATALOGID_V1": catalogid, "SDSS_ID": sdss_id or 0,
        "TWOMASS_MAG": twomass, "EBV": np.nan if ebv is None else ebv, "EBV_TYPE": "SFD",
        "FIBER_RA": ra, "FIBER_DEC": dec, "PLUG_RA": ra, "PLUG_DEC": dec, "RACAT": ra, "DECCAT": dec,
        "SN_MEDIAN_ALL": snr, "SN_MEDIAN": [snr] * 5, "CLASS": "STAR", "SUBCLASS": "synthetic",
        "WAVEMIN": float(wavelength[0]), "WAVEMAX": float(wavelength[-1]),
        "WCOVERAGE": float(np.log10(wavelength[-1] / wavelength[0])),
        "Z": v_r / C_KMS, "XCSAO_RV": v_r, "SPECPRIMARY": 1, "SPECBOSS": 1, "NSPECOBS": 1,
    }, name="SPALL")
    _atomic_write(path, [primary, coadd, spall])
    return [{"hdu": 1, "row": 0, "instrument": "boss", "is_visit": True,
             **_labels({"teff": teff, "logg": logg, "fe_h": fe_h, "v_r": v_r, "snr": snr})}]
