"""The `Spectrum`: one spectrum's pixels and identity, as a reader hands it on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# More pixels than any SDSS spectrum has (BOSS 4648, APOGEE 8575) by far: readers refuse a
# spectrum above it before reading its pixels, so a corrupt or hostile header claiming
# millions of them cannot exhaust a worker's memory.
MAX_PIXELS = 100_000
# The spectrographs: a pipeline takes one's spectra, and the readers list a file's by it.
INSTRUMENTS = ("boss", "apogee", "lamost", "gaia_rvs", "gaia_xp")


@dataclass
class Spectrum:
    """One spectrum read from an SDSS file.

    Parameters
    ----------
    path : str
        File path relative to the data root (the reference's path).
    hdu, row : int
        Where in the file the spectrum lives.
    instrument : {"boss", "apogee", "lamost", "gaia_rvs", "gaia_xp"}
        Which spectrograph (or Gaia product); decides which pipelines may take it.
    wavelength : ndarray
        Vacuum wavelength in Angstrom (float64), one per pixel.
    flux : ndarray
        Flux per pixel (float32). BOSS: 1e-17 erg/s/cm2/A.
    ivar : ndarray or None
        Inverse variance of the flux (BOSS readers fill it).
    error : ndarray or None
        1-sigma flux error (APOGEE readers fill it; from ivar**-0.5 where only ivar exists).
    bitmask : ndarray or None
        Pixel bitmask (APOGEE: apStar MASK / mwmStar pixel_flags).
    is_visit : bool
        True for a single-visit spectrum, False for a combined/coadded one.
    ids : dict
        Known identifiers: ``sdss_id``, ``catalogid``, ``spectrum_pk``, ``apogee_id``.
    meta : dict
        Header values the pipelines may use, e.g. ``k_mag`` from ``K_MAG``/``K``.
    """

    path: str
    hdu: int
    row: int
    instrument: str
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray | None = None
    error: np.ndarray | None = None
    bitmask: np.ndarray | None = None
    is_visit: bool = False
    ids: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class SpectrumError(Exception):
    """A spectrum cannot be read or is not valid input: permanent, never retried."""
