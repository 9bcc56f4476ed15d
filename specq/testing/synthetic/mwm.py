"""Milky Way Mapper files: mwmVisit and mwmStar (``mwmVisit.yaml``, ``mwmStar.yaml``).

HDU 0 holds the source; HDUs 1–4 (``BOSS/APO``, ``BOSS/LCO``, ``APOGEE/APO``,
``APOGEE/LCO``) one row per spectrum, zero rows where there is none, as Astra writes them.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from specq.testing.synthetic.fitsfile import _atomic_write, _now, _primary_hdu, _table
from specq.testing.synthetic.physics import (APOGEE_BADPIX, APOGEE_CDELT, APOGEE_CRVAL, APOGEE_NPIX, BOSS_CDELT,
                                             BOSS_CRVAL, BOSS_NPIX, apogee_flux, apogee_on_chip, apogee_wavelength,
                                             boss_flux, boss_wavelength, _ivar, _noisy, _planck, _sky_position)
from specq.testing.synthetic.truth import _labels, _put_labels, _require, _shared_labels

V_ASTRA = "0.8.1"
SYNTHETIC_GAIA_BASE = 5_000_000_000_000_000_000  # + sdss_id: the GAIA3_ID of a synthetic MWM file


_MWM_PRIMARY_KEYS = (
    "SDSS_ID APOGEEID GAIA2_ID GAIA3_ID TIC_ID HEALPIX LEAD VER_ID CAT_ID CAT_ID21 CAT_ID25 CAT_ID31 "
    "N_ASSOC N_NEIGH RA DEC L B PLX E_PLX PMRA E_PMRA PMDE E_PMDE V_RAD E_V_RAD G_MAG BP_MAG RP_MAG "
    "J_MAG E_J_MAG H_MAG E_H_MAG K_MAG E_K_MAG PH_QUAL BL_FLG CC_FLG W1_MAG E_W1_MAG W1_FLUX "
    "W1_DFLUX W1_FRAC W2_MAG E_W2_MAG W2_FLUX W2_DFLUX W2_FRAC W1UFLAGS W2UFLAGS W1AFLAGS W2AFLAGS "
    "MAG4_5 D4_5M RMS_F4_5 SQF_4_5 MF4_5 CSF N_BOSS B_MINMJD N_MAXMJD N_APOGEE A_MINMJD A_MAXMJD").split()

_STAR_BOSS_COLUMNS = (
    "spectrum_pk_id:K release:5A filetype:7A v_astra:5A healpix:J sdss_id:K run2d:6A telescope:6A "
    "min_mjd:J max_mjd:J n_visits:J n_good_visits:J n_good_rvs:J v_rad:E e_v_rad:E std_v_rad:E "
    "median_e_v_rad:E xcsao_teff:E xcsao_e_teff:E xcsao_logg:E xcsao_e_logg:E xcsao_fe_h:E "
    "xcsao_e_fe_h:E xcsao_meanrxc:E snr:E gri_gaia_transform_flags:K zwarning_flags:K "
    "wavelength:{n}E flux:{n}E ivar:{n}E pixel_flags:{n}E continuum:{n}E "
    "nmf_rectified_model_flux:{n}E nmf_rchi2:E nmf_flags:K")
_STAR_APOGEE_COLUMNS = (
    "spectrum_pk:K release:5A filetype:7A v_astra:5A healpix:J sdss_id:K apred:4A obj:18A "
    "telescope:6A min_mjd:J max_mjd:J n_entries:J n_visits:J n_good_visits:J n_good_rvs:J snr:E "
    "mean_fiber:E std_fiber:E spectrum_flags:K v_rad:E e_v_rad:E std_v_rad:E median_e_v_rad:E "
    "doppler_teff:E doppler_e_teff:E doppler_logg:E doppler_e_logg:E doppler_fe_h:E "
    "doppler_e_fe_h:E doppler_rchi2:E doppler_flags:K xcorr_v_rad:E xcorr_v_rel:E xcorr_e_v_rel:E "
    "ccfwhm:E autofwhm:E n_components:J wavelength:{n}E flux:{n}E ivar:{n}E pixel_flags:{n}E "
    "continuum:{n}E nmf_rectified_model_flux:{n}E nmf_rchi2:E nmf_flags:K")
_VISIT_BOSS_COLUMNS = (
    "spectrum_pk_id:K drp_spectrum_pk_id:K release:5A filetype:8A v_astra:5A healpix:J sdss_id:K "
    "run2d:6A mjd:J fieldid:J catalogid:K n_exp:J exptime:E plateid:J cartid:J mapid:J slitid:J "
    "psfsky:J preject:E n_std:J n_gal:J lowrej:J highrej:J scatpoly:J proftype:J nfitpoly:J "
    "skychi2:E schi2min:E schi2max:E alt:E az:E telescope:6A seeing:E airmass:E airtemp:E "
    "dewpoint:E humidity:E pressure:E dust_a:E dust_b:E gust_direction:E gust_speed:E "
    "wind_direction:E wind_speed:E moon_dist_mean:E moon_phase_mean:E n_guide:J tai_beg:K "
    "tai_end:K fiber_offset:L f_night_time:E delta_ra:1E delta_dec:1E snr:E in_stack:L "
    "gri_gaia_transform_flags:K zwarning_flags:K xcsao_v_rad:E xcsao_e_v_rad:E xcsao_teff:E "
    "xcsao_e_teff:E xcsao_logg:E xcsao_e_logg:E xcsao_fe_h:E xcsao_e_fe_h:E xcsao_rxc:E "
    "flux:{n}E ivar:{n}E wresl:{n}E pixel_flags:{n}E continuum:{n}E nmf_rchi2:E nmf_flags:K")
_VISIT_APOGEE_COLUMNS = (
    "spectrum_pk:K catalogid:K star_pk:K visit_pk:K rv_visit_pk:K release:5A filetype:8A "
    "v_astra:5A healpix:J sdss_id:K apred:4A plate:6A telescope:6A fiber:J mjd:J field:12A "
    "prefix:2A reduction:18A obj:18A date_obs:26A jd:E exptime:E dithered:L f_night_time:E "
    "input_ra:E input_dec:E n_frames:J assigned:J on_target:J valid:J fps:L snr:E in_stack:L "
    "spectrum_flags:K v_rad:E v_rel:E e_v_rel:E bc:E doppler_teff:E doppler_e_teff:E "
    "doppler_logg:E doppler_e_logg:E doppler_fe_h:E doppler_e_fe_h:E doppler_rchi2:E "
    "doppler_flags:K xcorr_v_rad:E xcorr_v_rel:E xcorr_e_v_rel:E ccfwhm:E autofwhm:E "
    "n_components:J flux:{n}E ivar:{n}E pixel_flags:{n}E continuum:{n}E nmf_rchi2:E nmf_flags:K")
_MWM_HDUS = ((1, "BOSS/APO", "boss", "apo"), (2, "BOSS/LCO", "boss", "lco"),
             (3, "APOGEE/APO", "apogee", "apo"), (4, "APOGEE/LCO", "apogee", "lco"))


def _as_rows(spec: dict | Sequence[dict] | None) -> list[dict[str, Any]]:
    if spec is None:
        return []
    return [dict(spec)] if isinstance(spec, dict) else [dict(item) for item in spec]


def _mwm_primary(*, sdss_id: int, catalogid: int, k_mag, ebv, plx, apogee_id, seed: int,
                 boss_mjds: list[int], apogee_mjds: list[int]):
    primary = _primary_hdu()
    header = primary.header
    header["V_ASTRA"] = V_ASTRA
    header["CREATED"] = _now()
    ra, dec = _sky_position(seed)
    # A made-up Gaia DR3 id in Gaia's range, one per source.
    known = {"SDSS_ID": int(sdss_id), "APOGEEID": apogee_id, "CAT_ID": int(catalogid),
             "GAIA3_ID": SYNTHETIC_GAIA_BASE + int(sdss_id),
             "CAT_ID31": int(catalogid), "LEAD": "gaia_dr3_source", "VER_ID": 31, "N_ASSOC": 1,
             "N_NEIGH": 0, "RA": ra, "DEC": dec, "PLX": plx, "E_PLX": None if plx is None else 0.02,
             "K_MAG": k_mag, "E_K_MAG": None if k_mag is None else 0.02,
             "J_MAG": None if k_mag is None else k_mag + 0.7, "E_J_MAG": None if k_mag is None else 0.02,
             "H_MAG": None if k_mag is None else k_mag + 0.15, "E_H_MAG": None if k_mag is None else 0.02,
             "PH_QUAL": "AAA" if k_mag is not None else None, "BL_FLG": "111", "CC_FLG": "000",
             "N_BOSS": len(boss_mjds), "B_MINMJD": min(boss_mjds) if boss_mjds else None,
             "N_MAXMJD": max(boss_mjds) if boss_mjds else None,  # sic: the data model's name
             "N_APOGEE": len(apogee_mjds) or None, "A_MINMJD": min(apogee_mjds) if apogee_mjds else None,
             "A_MAXMJD": max(apogee_mjds) if apogee_mjds else None}
    for key in _MWM_PRIMARY_KEYS:
        value = known.get(key)
        header[key] = float(value) if isinstance(value, (float, np.floating)) else value
    if ebv is not None:
        # Not in the SDSS data model (astra takes E(B-V) from its database): a specq extra
        # so synthetic AstroNN inputs are complete. Readers look for EBV / SFD_EBV.
        header["EBV"] = (float(ebv), "E(B-V) (specq synthetic extra)")
    header["SPECQSYN"] = (True, "specq synthetic spectrum: not real data")
    return primary


def _mwm_table_header(header, extname: str, instrument: str, telescope: str) -> None:
    crval, cdelt, npix = ((BOSS_CRVAL, BOSS_CDELT, BOSS_NPIX) if instrument == "boss"
                          else (APOGEE_CRVAL, APOGEE_CDELT, APOGEE_NPIX))
    for key, value in (("OBSRVTRY", telescope.upper()), ("INSTRMNT", instrument.upper()),
                       ("V_ASTRA", V_ASTRA), ("CREATED", _now()), ("CRVAL", crval), ("CDELT", cdelt),
                       ("CTYPE", "LOG-LINEAR"), ("CUNIT", "Angstrom (Vacuum)"), ("CRPIX", 1),
                       ("DC-FLAG", 1), ("NPIXELS", npix)):
        header[key] = value


def _mwm_pixels(spec: dict[str, Any], instrument: str) -> dict[str, np.ndarray]:
    """Flux, ivar, flags, continuum of one MWM row (rest of the row is metadata)."""
    rng = np.random.default_rng(spec["seed"])
    if instrument == "boss":
        wavelength = boss_wavelength()
        model = boss_flux(wavelength, spec["teff"], spec["logg"], spec["fe_h"], spec.get("v_r", 0.0), rng)
        continuum = _planck(wavelength, spec["teff"])
        flags = np.zeros(BOSS_NPIX)
    else:
        wavelength = apogee_wavelength()
        model = apogee_flux(wavelength, spec["teff"], spec["logg"], spec["fe_h"], spec.get("v_r", 0.0), rng)
        continuum = _planck(wavelength, spec["teff"])
        flags = np.where(apogee_on_chip(wavelength), 0, APOGEE_BADPIX)
    flux, sigma = _noisy(model, spec["snr"], rng)
    on = model > 0
    continuum *= np.median(model[on] / continuum[on]) if on.any() else 0.0
    continuum[~on] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rectified = np.where(continuum > 0, model / np.where(continuum > 0, continuum, 1.0), 0.0)
    return {"wavelength": wavelength, "flux": flux, "ivar": _ivar(sigma),
            "pixel_flags": flags.astype(np.float32), "continuum": continuum,
            "nmf_rectified_model_flux": rectified,
            "wresl": wavelength * np.log(10.0) * BOSS_CDELT * 2.355 if instrument == "boss" else None}


def _write_mwm(path, kind: str, rows_by_hdu: dict[int, list[dict[str, Any]]], *, sdss_id: int,
               catalogid: int, k_mag, ebv, plx, apogee_id) -> list[dict[str, Any]]:
    specs = {("mwmStar", "boss"): _STAR_BOSS_COLUMNS, ("mwmStar", "apogee"): _STAR_APOGEE_COLUMNS,
             ("mwmVisit", "boss"): _VISIT_BOSS_COLUMNS, ("mwmVisit", "apogee"): _VISIT_APOGEE_COLUMNS}
    all_rows = [row for rows in rows_by_hdu.values() for row in rows]
    seed = int(all_rows[0]["seed"]) if all_rows else int(sdss_id)
    primary = _mwm_primary(
        sdss_id=sdss_id, catalogid=catalogid, k_mag=k_mag, ebv=ebv, plx=plx, apogee_id=apogee_id, seed=seed,
        boss_mjds=[r.get("mjd", 60000) for i in (1, 2) for r in rows_by_hdu[i]],
        apogee_mjds=[r.get("mjd", 60000) for i in (3, 4) for r in rows_by_hdu[i]])
    _put_labels(primary.header, _shared_labels([_labels(r) for r in all_rows]), row=None)
    hdus = [primary]
    written: list[dict[str, Any]] = []
    for index, extname, instrument, telescope in _MWM_HDUS:
        rows = rows_by_hdu[index]
        npix = BOSS_NPIX if instrument == "boss" else APOGEE_NPIX
        values: dict[str, Any] = {}
        if rows:
            pixels = [_mwm_pixels(row, instrument) for row in rows]
            for column in ("wavelength", "flux", "ivar", "pixel_flags", "continuum",
                           "nmf_rectified_model_flux", "wresl"):
                if pixels[0][column] is not None:
                    values[column] = np.stack([p[column] for p in pixels])
            count = len(rows)
            mjds = [int(row.get("mjd", 60000 + i)) for i, row in enumerate(rows)]
            # A unique made-up primary key per row unless the caller gives one.
            pks = [int(row.get("spectrum_pk", int(sdss_id) * 10**4 + index * 1000 + i + 1))
                   for i, row in enumerate(rows)]
            values.update({
                "release": "dr20", "filetype": kind, "v_astra": V_ASTRA, "sdss_id": [sdss_id] * count,
                "telescope": f"{telescope}25m" if instrument == "apogee" else telescope,
                "snr": [row["snr"] for row in rows],
                "spectrum_pk_id" if instrument == "boss" else "spectrum_pk": pks,
                "v_rad": [row.get("v_r", 0.0) for row in rows],
            })
            if kind == "mwmVisit":
                values.update({"mjd": mjds, "catalogid": [int(row.get("catalogid", catalogid)) for row in rows],
                               "in_stack": [True] * count})
                if instrument == "boss":
                    values.update({"fieldid": [int(row.get("field", 112360)) for row in rows],
                                   "run2d": "v6_1_3", "n_exp": 4, "exptime": 3600.0,
                                   "xcsao_v_rad": values["v_rad"]})
                else:
                    values.update({"obj": apogee_id or "", "apred": "1.3", "prefix": "ap"})
            else:
                n_visits = [row.get("n_visits", 1) for row in rows]
                values.update({"min_mjd": min(mjds), "max_mjd": max(mjds), "n_visits": n_visits,
                               "n_good_visits": n_visits})
                if instrument == "boss":
                    values.update({"run2d": "v6_1_3"})
                else:
                    values.update({"obj": apogee_id or "", "apred": "1.3", "n_entries": 1})
        table = _table(specs[(kind, instrument)], len(rows), values, npix=npix, name=extname)
        _mwm_table_header(table.header, extname, instrument, telescope)
        for i, row in enumerate(rows):
            _put_labels(table.header, _labels(row), row=i)
            written.append({"hdu": index, "row": i, "instrument": instrument,
                            "is_visit": kind == "mwmVisit", **_labels(row)})
        hdus.append(table)
    _atomic_write(path, hdus)
    return written


def _split_by_hdu(rows: list[dict[str, Any]], default_instrument: str | None) -> dict[int, list[dict[str, Any]]]:
    by_hdu: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: [], 4: []}
    for row in rows:
        instrument = (row.get("instrument") or default_instrument or "boss").lower()
        telescope = str(row.get("telescope", "apo")).lower()[:3]
        if instrument not in ("boss", "apogee") or telescope not in ("apo", "lco"):
            raise ValueError(f"instrument must be boss/apogee and telescope apo/lco, got {instrument}/{telescope}")
        _require(row, f"{instrument} spectrum", "teff", "logg", "fe_h", "snr", "seed")
        index = {("boss", "apo"): 1, ("boss", "lco"): 2, ("apogee", "apo"): 3, ("apogee", "lco"): 4}[
            (instrument, telescope)]
        by_hdu[index].append(row)
    return by_hdu


def write_mwm_visit(path: str | os.PathLike, visits: Iterable[dict[str, Any]], *, sdss_id: int,
                    catalogid: int, k_mag: float | None = None, ebv: float | None = None,
                    plx: float | None = None, apogee_id: str | None = None) -> list[dict[str, Any]]:
    """Write an mwmVisit file (``mwmVisit.yaml``, DR20 layout): one row per visit.

    Parameters
    ----------
    path : path-like
        Conventionally ``mwmVisit-0.8.1-{sdss_id}.fits``.
    visits : iterable of dict
        Each: ``teff``, ``logg``, ``fe_h``, ``snr``, ``seed``; optional ``v_r`` (km/s,
        default 0), ``instrument`` (``"boss"`` default, or ``"apogee"``), ``telescope``
        (``"apo"`` default, or ``"lco"``), ``mjd``, ``catalogid``, ``spectrum_pk``.
        BOSS visits go to HDUs 1/2, APOGEE visits to HDUs 3/4.
    sdss_id, catalogid : int
    k_mag, ebv, plx : float, optional
        Primary header ``K_MAG``, ``EBV`` (a specq extra), ``PLX``.
    apogee_id : str, optional

    Returns
    -------
    list of dict
        One per row written: ``hdu``, ``row``, ``instrument``, ``is_visit`` and labels.
    """
    rows = _split_by_hdu(_as_rows(list(visits)), None)
    return _write_mwm(path, "mwmVisit", rows, sdss_id=sdss_id, catalogid=catalogid, k_mag=k_mag,
                      ebv=ebv, plx=plx, apogee_id=apogee_id)


def write_mwm_star(path: str | os.PathLike, boss: dict | Sequence[dict] | None = None,
                   apogee: dict | Sequence[dict] | None = None, *, sdss_id: int, catalogid: int,
                   k_mag: float | None = None, ebv: float | None = None, plx: float | None = None,
                   apogee_id: str | None = None) -> list[dict[str, Any]]:
    """Write an mwmStar file (``mwmStar.yaml``, DR20 layout): combined spectra.

    Parameters
    ----------
    path : path-like
        Conventionally ``mwmStar-0.8.1-{sdss_id}.fits``.
    boss, apogee : dict or list of dict, optional
        The combined BOSS / APOGEE spectrum (a list for one per telescope). Keys as for
        :func:`write_mwm_visit` visits, plus ``fakemag`` for APOGEE. None → zero rows.
    sdss_id, catalogid : int
    k_mag, ebv, plx : float, optional
    apogee_id : str, optional

    Returns
    -------
    list of dict
        One per row written.
    """
    rows = [dict(row, instrument="boss") for row in _as_rows(boss)]
    rows += [dict(row, instrument="apogee") for row in _as_rows(apogee)]
    by_hdu = _split_by_hdu(rows, None)
    for index, hdu_rows in by_hdu.items():
        if len(hdu_rows) > 1:
            raise ValueError(f"mwmStar holds one combined spectrum per instrument and telescope, "
                             f"got {len(hdu_rows)} for HDU {index}")
    return _write_mwm(path, "mwmStar", by_hdu, sdss_id=sdss_id, catalogid=catalogid, k_mag=k_mag,
                      ebv=ebv, plx=plx, apogee_id=apogee_id)
