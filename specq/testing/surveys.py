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
