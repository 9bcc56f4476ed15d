"""A mixed data set of synthetic SDSS files with its truth table (:func:`make_dataset`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from specq.testing.synthetic.apstar import write_apstar
from specq.testing.synthetic.mwm import V_ASTRA, write_mwm_star, write_mwm_visit
from specq.testing.synthetic.spec_lite import write_spec_lite
from workers.readers.formats import PRODUCTS


def _draw_star(rng: np.random.Generator) -> dict[str, float]:
    """Plausible labels: a mix of dwarfs and giants."""
    if rng.random() < 0.4:  # giant branch
        teff = float(rng.uniform(3800.0, 5300.0))
        logg = float(np.clip(1.0 + (teff - 3800.0) / 1500.0 * 2.3 + rng.normal(0, 0.2), 0.5, 3.6))
    else:  # main sequence
        teff = float(rng.uniform(3600.0, 9000.0))
        logg = float(np.clip(4.2 + (5500.0 - teff) / 8000.0 + rng.normal(0, 0.1), 3.8, 5.0))
    fe_h = float(np.clip(rng.normal(-0.25, 0.35), -2.0, 0.5))
    # astroNN fakemag = 10**(0.2 M_K + 2); M_K from a rough log g relation.
    absolute_k = -1.5 + 2.0 * (logg - 2.5)
    return {"teff": round(teff, 1), "logg": round(logg, 3), "fe_h": round(fe_h, 3),
            "fakemag": round(float(10.0 ** (0.2 * absolute_k + 2.0)), 4),
            "k_mag": round(float(rng.uniform(7.0, 13.0)), 3), "ebv": round(float(rng.uniform(0.01, 0.4)), 4)}


def make_dataset(folder: str | os.PathLike, n_boss: int = 20, n_apogee: int = 10, seed: int = 0,
                 formats: Sequence[str] = PRODUCTS, visits: int | None = None):
    """Write a small mixed data set of synthetic SDSS files and return its truth table.

    BOSS spectra are spread over spec-lite files, mwmVisit files (2–3 visits of one
    star) and mwmStar files; APOGEE spectra over apStar files (1–3 visits) and the
    APOGEE rows of mwmStar files (sharing the star with a BOSS row where one is free).
    Files go to ``boss/``, ``mwm/`` and ``apogee/`` under ``folder``.

    Parameters
    ----------
    folder : path-like
    n_boss, n_apogee : int
        How many BOSS / APOGEE spectra a pipeline will find.
    seed : int
    formats : sequence of str
        Which of ``"spec-lite"``, ``"mwmVisit"``, ``"mwmStar"``, ``"apStar"`` to use.
    visits : int, optional
        BOSS visits in each mwmVisit file (the last file may hold fewer); default 2–3.

    Returns
    -------
    astropy.table.Table
        One row per spectrum: ``path`` (relative to ``folder``), ``hdu``, ``row``,
        ``format``, ``instrument``, ``is_visit``, ``teff``, ``logg``, ``fe_h``, ``v_r``,
        ``snr``, ``k_mag``, ``ebv``, ``fakemag`` (NaN for BOSS), ``sdss_id``,
        ``catalogid`` (-1 where the file has none), ``apogee_id``.
    """
    from astropy.table import Table

    unknown = set(formats) - set(PRODUCTS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}: use {PRODUCTS}")
    boss_formats = [f for f in ("spec-lite", "mwmVisit", "mwmStar") if f in formats]
    apogee_formats = [f for f in ("apStar", "mwmStar") if f in formats]
    if n_boss and not boss_formats:
        raise ValueError("n_boss > 0 needs one of spec-lite, mwmVisit, mwmStar in formats")
    if n_apogee and not apogee_formats:
        raise ValueError("n_apogee > 0 needs apStar or mwmStar in formats")
    if visits is not None and visits < 1:
        raise ValueError(f"visits must be at least 1, not {visits}")

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    counter = iter(range(1, 10**6))

    def new_star() -> dict[str, Any]:
        number = next(counter)
        star = _draw_star(rng)
        star.update(sdss_id=int(seed % 1000) * 10**6 + 90_000_000 + number,
                    catalogid=63050395000000000 + int(seed % 1000) * 10**6 + number,
                    apogee_id=f"2M{number:08d}+{int(seed % 10**7):07d}")
        return star

    def spectrum(star, snr_low, snr_high, v_r=None) -> dict[str, Any]:
        return {"teff": star["teff"], "logg": star["logg"], "fe_h": star["fe_h"],
                "v_r": round(float(rng.normal(0.0, 40.0)), 2) if v_r is None else v_r,
                "snr": round(float(rng.uniform(snr_low, snr_high)), 1), "seed": int(rng.integers(2**31))}

    def record(fmt, rel, written, star, *, sdss_id, catalogid, apogee_id, fakemag) -> None:
        for item in written:
            rows.append({"path": rel, "hdu": item["hdu"], "row": item["row"], "format": fmt,
                         "instrument": item["instrument"], "is_visit": item["is_visit"],
                         "teff": item["teff"], "logg": item["logg"], "fe_h": item["fe_h"],
                         "v_r": item["v_r"], "snr": item["snr"], "k_mag": star["k_mag"], "ebv": star["ebv"],
                         "fakemag": fakemag if item["instrument"] == "apogee" else np.nan,
                         "sdss_id": sdss_id, "catalogid": catalogid, "apogee_id": apogee_id})

    star_files: list[dict[str, Any]] = []  # mwmStar files still to write: BOSS and/or APOGEE
    remaining, turn = n_boss, 0
    while remaining > 0:
        fmt = boss_formats[turn % len(boss_formats)]
        turn += 1
        star = new_star()
        if fmt == "spec-lite":
            spec = spectrum(star, 15.0, 80.0)
            field, mjd = 100000 + next(counter), 60000 + int(rng.integers(0, 900))
            rel = f"boss/spec-{field:06d}-{mjd}-{star['catalogid']}.fits"
            written = write_spec_lite(folder / rel, **spec, catalogid=star["catalogid"], field=field, mjd=mjd,
                                      sdss_id=star["sdss_id"], k_mag=star["k_mag"], ebv=star["ebv"])
            record(fmt, rel, written, star, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
                   apogee_id="", fakemag=np.nan)
            remaining -= 1
        elif fmt == "mwmVisit":
            count = int(min(remaining, visits if visits is not None else rng.integers(2, 4)))
            visit_spectra = [dict(spectrum(star, 8.0, 40.0), mjd=60000 + 30 * i,
                           telescope="lco" if rng.random() < 0.3 else "apo") for i in range(count)]
            rel = f"mwm/mwmVisit-{V_ASTRA}-{star['sdss_id']}.fits"
            written = write_mwm_visit(folder / rel, visit_spectra, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
                                      k_mag=star["k_mag"], ebv=star["ebv"])
            record(fmt, rel, written, star, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
                   apogee_id="", fakemag=np.nan)
            remaining -= count
        else:
            star_files.append({"star": star, "boss": spectrum(star, 20.0, 100.0), "apogee": None})
            remaining -= 1

    remaining, turn = n_apogee, 0
    while remaining > 0:
        fmt = apogee_formats[turn % len(apogee_formats)]
        turn += 1
        if fmt == "apStar":
            star = new_star()
            spec = spectrum(star, 40.0, 200.0, v_r=0.0)
            rel = f"apogee/apStar-1.0-apo25m-{star['apogee_id']}.fits"
            written = write_apstar(folder / rel, teff=spec["teff"], logg=spec["logg"], fe_h=spec["fe_h"],
                                   fakemag=star["fakemag"], snr=spec["snr"], seed=spec["seed"],
                                   nvisits=int(rng.integers(1, 4)), apogee_id=star["apogee_id"],
                                   k_mag=star["k_mag"], ebv=star["ebv"])
            record(fmt, rel, written, star, sdss_id=-1, catalogid=-1, apogee_id=star["apogee_id"],
                   fakemag=star["fakemag"])
        else:
            free = next((item for item in star_files if item["apogee"] is None), None)
            if free is None:
                free = {"star": new_star(), "boss": None, "apogee": None}
                star_files.append(free)
            free["apogee"] = dict(spectrum(free["star"], 40.0, 200.0, v_r=0.0), fakemag=free["star"]["fakemag"])
        remaining -= 1

    for item in star_files:
        star = item["star"]
        rel = f"mwm/mwmStar-{V_ASTRA}-{star['sdss_id']}.fits"
        written = write_mwm_star(folder / rel, boss=item["boss"], apogee=item["apogee"], sdss_id=star["sdss_id"],
                                 catalogid=star["catalogid"], k_mag=star["k_mag"], ebv=star["ebv"],
                                 apogee_id=star["apogee_id"] if item["apogee"] else None)
        record("mwmStar", rel, written, star, sdss_id=star["sdss_id"], catalogid=star["catalogid"],
               apogee_id=star["apogee_id"] if item["apogee"] else "", fakemag=star["fakemag"])

    names = ["path", "hdu", "row", "format", "instrument", "is_visit", "teff", "logg", "fe_h", "v_r",
             "snr", "k_mag", "ebv", "fakemag", "sdss_id", "catalogid", "apogee_id"]
    dtypes = [str, int, int, str, str, bool, float, float, float, float, float, float, float, float,
              np.int64, np.int64, str]
    if not rows:
        return Table(names=names, dtype=dtypes)
    return Table(rows=[[row[name] for name in names] for row in rows], names=names, dtype=dtypes)
