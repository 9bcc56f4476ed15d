"""Synthetic LAMOST and Gaia files, laid out as the surveys' archives serve them (for tests and demos).

- :func:`write_lamost_dr7`: the primary image's rows are flux, ivar, wavelength, and/or masks;
- :func:`write_lamost_dr8`: HDU 1 ``COADD``, one row of FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK cells.

The pixels come from the BOSS synthetic model (:func:`specq.testing.synthetic.boss_flux`) on
LAMOST's grid, so a file of either layout holds a plausible stellar spectrum.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

LAMOST_PIXELS = 3909
LAMOST_LOGLAM0, LAMOST_DLOGLAM = 3.5682, 1e-4  # log10(Å) of the first pixel, step


def lamost_wavelength(n: int = LAMOST_PIXELS) -> np.ndarray:
    """LAMOST's low-resolution grid: 3,909 pixels from about 3,700 Å, uniform in log10 λ."""
    return 10.0 ** (LAMOST_LOGLAM0 + LAMOST_DLOGLAM * np.arange(n))


def lamost_spectrum(teff: float, logg: float, fe_h: float, v_r: float, snr: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength, flux, ivar) float32 of a synthetic LAMOST spectrum."""
    from specq.testing.synthetic import boss_flux

    rng = np.random.default_rng(seed)
    wavelength = lamost_wavelength()
    model = boss_flux(wavelength, teff, logg, fe_h, v_r, rng)
    sigma = np.abs(model) / snr + 1e-3
    flux = model + sigma * rng.standard_normal(model.shape)
    return wavelength.astype(np.float32), flux.astype(np.float32), (1.0 / sigma**2).astype(np.float32)


def _primary_cards(obsid: int) -> dict:
    return {"TELESCOP": "LAMOST", "OBSID": obsid, "RA": 10.0, "DEC": 20.0}


def write_lamost_dr7(path: str | os.PathLike, *, teff: float, logg: float, fe_h: float, v_r: float = 0.0,
                     snr: float = 50.0, seed: int = 0, obsid: int = 1) -> Path:
    """A LAMOST DR7 file: a 5-row primary image (flux, ivar, wavelength, andmask, ormask)."""
    from astropy.io import fits

    wavelength, flux, ivar = lamost_spectrum(teff, logg, fe_h, v_r, snr, seed)
    masks = np.zeros_like(flux)
    hdu = fits.PrimaryHDU(np.stack([flux, ivar, wavelength, masks, masks]).astype(np.float32))
    hdu.header.update(_primary_cards(obsid))
    hdu.writeto(path, overwrite=True)
    return Path(path)


def write_lamost_dr8(path: str | os.PathLike, *, teff: float, logg: float, fe_h: float, v_r: float = 0.0,
                     snr: float = 50.0, seed: int = 0, obsid: int = 1) -> Path:
    """A LAMOST DR8 file: HDU 1 ``COADD``, one row whose cells are the whole spectrum."""
    from astropy.io import fits

    wavelength, flux, ivar = lamost_spectrum(teff, logg, fe_h, v_r, snr, seed)
    n = len(flux)
    cols = [fits.Column(name=name, format=f"{n}E", array=values[None, :])
            for name, values in (("FLUX", flux), ("IVAR", ivar), ("WAVELENGTH", wavelength),
                                 ("ANDMASK", np.zeros(n, np.float32)), ("ORMASK", np.zeros(n, np.float32)))]
    table = fits.BinTableHDU.from_columns(cols, name="COADD")
    primary = fits.PrimaryHDU()
    primary.header.update(_primary_cards(obsid))
    fits.HDUList([primary, table]).writeto(path, overwrite=True)
    return Path(path)


def _correlations(n: int, rng: np.random.Generator) -> np.ndarray:
    """The strict lower triangle, row by row, of a random positive-definite correlation matrix."""
    a = rng.standard_normal((n, n))
    c = a @ a.T + n * np.eye(n)
    d = np.sqrt(np.diag(c))
    rows, cols = np.tril_indices(n, -1)
    return (c / d[:, None] / d[None, :])[rows, cols]


def write_gaia_table(path: str | os.PathLike, kind: str, n: int, seed: int = 0) -> Path:
    """An ECSV table of ``n`` synthetic Gaia DR3 spectra: ``kind`` ``"rvs"`` (mean spectra) or ``"xp"`` (coefficients)."""
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {"source_id": 4_000_000_000_000 + 1000 * seed + np.arange(n, dtype=np.int64)}
    if kind == "rvs":
        pixel = np.arange(2401)
        centres = rng.uniform(300, 2100, (n, 3))
        flux = 1.0 - sum(0.4 * np.exp(-0.5 * ((pixel[None, :] - centres[:, [k]]) / 6.0) ** 2) for k in range(3))
        columns["flux"] = (flux + 0.01 * rng.standard_normal(flux.shape)).astype(np.float32)
        columns["flux_error"] = np.full(flux.shape, 0.01, np.float32)
        columns["flux"][:, :10] = np.nan  # the band's edges, as in the archive
    elif kind == "xp":
        scale = 10.0 ** -np.linspace(0, 3, 55)
        for band in ("bp", "rp"):
            coefficients = 300 * scale * (1 + 0.2 * rng.standard_normal((n, 55)))
            columns[f"{band}_coefficients"] = coefficients
            columns[f"{band}_coefficient_errors"] = 0.01 * np.abs(coefficients) + 0.02
            columns[f"{band}_coefficient_correlations"] = np.array([_correlations(55, rng) for _ in range(n)])
    else:
        raise ValueError(f"kind must be 'rvs' or 'xp', not {kind!r}")
    Table(columns).write(path, format="ascii.ecsv", overwrite=True)
    return Path(path)


def write_source_files(folder: str | os.PathLike, instrument: str, n: int, seed: int = 0) -> list[str]:
    """``n`` synthetic spectra of a source beyond BOSS and APOGEE; their files' paths relative to ``folder``.

    LAMOST: ``n`` files under ``lamost/``, DR7 and DR8 layouts in turn. Gaia RVS and XP: one
    table of ``n`` rows under ``gaia/``. Other instruments: none.
    """
    folder = Path(folder)
    if instrument == "lamost" and n:
        (folder / "lamost").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        paths = []
        for i in range(n):
            writer = write_lamost_dr7 if i % 2 == 0 else write_lamost_dr8
            rel = f"lamost/spec-{55000 + i}-F{seed:04d}_sp01-{i:03d}.fits"
            writer(folder / rel, teff=float(rng.uniform(4000, 7000)), logg=float(rng.uniform(1, 5)),
                   fe_h=float(rng.uniform(-1.5, 0.3)), v_r=float(rng.uniform(-50, 50)), seed=seed + i, obsid=i + 1)
            paths.append(rel)
        return paths
    if instrument in ("gaia_rvs", "gaia_xp") and n:
        kind = instrument.split("_")[1]
        (folder / "gaia").mkdir(parents=True, exist_ok=True)
        rel = f"gaia/{'RVS' if kind == 'rvs' else 'XP_CONTINUOUS'}-synthetic-{seed}.ecsv"
        write_gaia_table(folder / rel, kind, n, seed)
        return [rel]
    return []
