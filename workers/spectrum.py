"""The `Spectrum`: one spectrum's pixels and identity, as a reader hands it on."""
from __future__ import annotations

import os
import threading
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
        Vacuum wavelength in Angstrom (float64), one per pixel. May be a read-only grid
        shared by every spectrum on it (:func:`log10_grid`).
    flux : ndarray
        Flux per pixel (float32). BOSS: 1e-17 erg/s/cm2/A.
    ivar : ndarray or None
        Inverse variance of the flux (BOSS readers fill it).
    error : ndarray or None
        1-sigma flux error (APOGEE readers fill it; from ivar**-0.5 where only ivar exists).
    bitmask : ndarray or None
        Pixel bitmask (APOGEE: apStar MASK / mwmStar pixel_flags), integers in the file's own type.
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

    def __reduce__(self):
        # On a shared grid the wavelengths travel as the grid's four numbers, and a wide
        # integer mask in the narrowest type that holds its values: a reader process then
        # sends a DR17 apStar spectrum (a 64-bit MASK) in 86 kB instead of 206 kB.
        fields = dict(self.__dict__)
        key = shared_grid_key(self.wavelength)
        if key is not None:
            fields["wavelength"] = None
        mask_type = None
        narrow = _narrowed(self.bitmask)
        if narrow is not None:
            mask_type, fields["bitmask"] = self.bitmask.dtype, narrow
        return _rebuild_spectrum, (type(self), key, fields, mask_type)


def _narrowed(mask: Any) -> np.ndarray | None:
    """``mask`` in a 16-bit integer type when it is a wider integer array whose values fit one, else None.

    Plain arrays only: a masked array's ``min``/``max`` skip its masked entries.
    """
    if type(mask) is not np.ndarray or mask.dtype.kind not in "iu" or mask.dtype.itemsize <= 2 or not mask.size:
        return None
    low, high = int(mask.min()), int(mask.max())
    for narrow in (np.uint16, np.int16):
        limits = np.iinfo(narrow)
        if limits.min <= low and high <= limits.max:
            return mask.astype(narrow)
    return None


def _rebuild_spectrum(cls: type, grid: tuple | None, fields: dict[str, Any], mask_type: Any = None) -> Spectrum:
    spectrum = cls.__new__(cls)
    spectrum.__dict__.update(fields)
    if grid is not None:
        spectrum.wavelength = log10_grid(*grid)
    if mask_type is not None:
        spectrum.bitmask = spectrum.bitmask.astype(mask_type)
    return spectrum


# The grids made by log10_grid, by their numbers and by the id of their array. The arrays are
# held here, so an id stands for its grid until both tables are emptied.
_GRIDS: dict[tuple, np.ndarray] = {}
_GRID_OF_ID: dict[int, tuple] = {}
_GRIDS_KEPT = 64  # a worker reads a handful of grids (one per SDSS product and instrument)
_grids_lock = threading.Lock()


def _new_grids_lock() -> None:
    global _grids_lock
    _grids_lock = threading.Lock()


# A process forked while another thread held the lock would find it held for ever.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_grids_lock)


def log10_grid(start: float, step: float, npix: int, reference: float = 1.0) -> np.ndarray:
    """The log10-linear wavelength grid ``10 ** (start + step · (i + 1 − reference))``, i = 0 … npix−1.

    Computed once a process and shared, read-only, by every spectrum on it; a `Spectrum` on
    such a grid is pickled with these four numbers instead of its wavelengths.

    Parameters
    ----------
    start, step : float
        log10 Å at the reference pixel, and per pixel (FITS ``CRVAL1``, ``CDELT1``).
    npix : int
    reference : float
        1-based reference pixel (``CRPIX1``).
    """
    key = (float(start), float(step), int(npix), float(reference))
    grid = _GRIDS.get(key)
    if grid is None:
        grid = 10.0 ** (key[0] + key[1] * (np.arange(key[2], dtype=np.float64) + 1.0 - key[3]))
        grid.flags.writeable = False
        with _grids_lock:
            if len(_GRIDS) >= _GRIDS_KEPT:
                _GRIDS.clear()
                _GRID_OF_ID.clear()
            grid = _GRIDS.setdefault(key, grid)
            _GRID_OF_ID[id(grid)] = key
    return grid


def shared_grid_key(wavelength: Any) -> tuple | None:
    """The numbers of a grid :func:`log10_grid` made and still holds, None for any other array."""
    key = _GRID_OF_ID.get(id(wavelength))
    return key if key is not None and _GRIDS.get(key) is wavelength else None


class SpectrumError(Exception):
    """A spectrum cannot be read or is not valid input: permanent, never retried."""


# Each instrument's usual pixels: (first, last, count) on a log-wavelength grid, or a fixed grid.
_EXAMPLE_GRIDS = {
    "boss": lambda: np.logspace(np.log10(3600.0), np.log10(10300.0), 4648),
    "lamost": lambda: np.logspace(np.log10(3700.0), np.log10(9100.0), 3909),
    "apogee": lambda: 10.0 ** (4.179 + 6e-6 * np.arange(8575)),  # the apStar grid
    "gaia_rvs": lambda: 8460.0 + 0.1 * np.arange(2401),
    "gaia_xp": lambda: np.arange(110, dtype=np.float64),  # 55 BP then 55 RP coefficients
}
XP_BAND_COEFFICIENTS = 55


def examples(instrument: str, n: int) -> list[Spectrum]:
    """``n`` made-up spectra of ``instrument`` with its usual pixels: a pipeline's network takes them.

    Flat positive flux with a little seeded noise (a continuum fit has something to fit),
    a 2 % error on every pixel, and for Gaia XP uncorrelated coefficients. For timing a
    network (a worker's estimate of its longest message), never for science.
    """
    wavelength = _EXAMPLE_GRIDS[instrument]()
    out = []
    for i in range(n):
        flux = (1.0 + 0.02 * np.random.default_rng(i).standard_normal(wavelength.size)).astype(np.float32)
        error = np.full(wavelength.size, 0.02, dtype=np.float32)
        meta: dict[str, Any] = {}
        if instrument == "gaia_xp":
            for band in ("bp", "rp"):
                pairs = XP_BAND_COEFFICIENTS * (XP_BAND_COEFFICIENTS - 1) // 2
                meta[f"{band}_coefficient_correlations"] = np.zeros(pairs, dtype=np.float32)
        out.append(Spectrum(path=f"example-{i}", hdu=1, row=0, instrument=instrument, wavelength=wavelength.copy(),
                            flux=flux, ivar=(error ** -2.0).astype(np.float32), error=error, meta=meta))
    return out
