"""APOGEE continuum normalization, batched: astroNN's ``apogee_continuum(..., dr=17)`` arithmetic
for many spectra at once.

astroNN fits, for each spectrum and each of the three detector chips, a degree-2 Chebyshev
series to the continuum pixels (weighted by ``1/(err² + 1e-8)``) with
``numpy.polynomial.Chebyshev.fit``, then divides. Its per-spectrum Python loop costs
~1 ms a spectrum and holds the GIL, which starves the read-ahead thread. Here the parts
shared by every spectrum (pixel grid, domain mapping, Chebyshev design matrix, chip
boundaries, continuum mask) are built once, the least-squares solve is the same
``numpy.linalg.lstsq`` call on the same arrays (so coefficients agree bit for bit), and
evaluation and division are done for the whole batch with the same operations in the same
order as ``Chebyshev.__call__``. The result equals the library's exactly; the tests check
it against the library call itself on the reference vector and on perturbed spectra.

The chip layout and the DR17 continuum mask are astroNN's own data, read from the
installed package (``astroNN.apogee`` does not load TensorFlow).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.polynomial import chebyshev, polyutils

DEGREE = 2
IVAR_FLOOR = 1e-8  # astroNN adds this to err² "for numerical stability"
MASK_VALUE = 1.0  # what astroNN writes into bad pixels
TARGET_BITS = (0, 1, 2, 3, 4, 5, 6, 7, 12)  # APOGEE_PIXMASK bits astroNN masks by default


@dataclass(frozen=True)
class _Chip:
    start: int  # in the gap-deleted spectrum
    stop: int
    raw: slice  # the same pixels on the apStar grid
    fit_pixels: np.ndarray  # indices (within the chip) of the continuum pixels
    design: np.ndarray  # (3, n_fit) Chebyshev design matrix, transposed as numpy builds it
    rcond: float
    grid: np.ndarray  # every chip pixel mapped to the window [-1, 1]


@dataclass(frozen=True)
class _Layout:
    keep: np.ndarray  # raw-pixel indices that survive the gap deletion
    chips: tuple[_Chip, ...]
    target: int  # bitmask of TARGET_BITS


@lru_cache(maxsize=4)
def _layout(dr: int) -> _Layout:
    from workers.astronn_dist.astronn import astronn_apogee

    apogee = astronn_apogee()
    import astroNN.data

    info = apogee.chips.chips_pix_info(dr=dr)
    keep = np.r_[info[0]:info[1], info[2]:info[3], info[4]:info[5]]
    cont_mask = np.load(os.path.join(astroNN.data.datapath(), f"dr{dr}_contmask.npy"))
    cont_mask = np.asarray(cont_mask, dtype=bool).ravel()
    if cont_mask.size != keep.size:
        raise ValueError(f"astroNN's dr{dr} continuum mask has {cont_mask.size} pixels, expected {keep.size}")
    chips = []
    start = 0
    for lo, hi in ((info[0], info[1]), (info[2], info[3]), (info[4], info[5])):
        stop = start + (hi - lo)
        fit_pixels = np.flatnonzero(cont_mask[start:stop])
        x = np.arange(stop - start)[fit_pixels] + 0.0
        domain = np.array((x.min(), x.max()))  # Chebyshev.fit's default domain
        off, scl = polyutils.mapparms(domain, np.array((-1.0, 1.0)))
        design = chebyshev.chebvander(off + scl * x, DEGREE).T
        grid = off + scl * np.arange(stop - start)
        chips.append(_Chip(start, stop, slice(lo, hi), fit_pixels, design, len(x) * np.finfo(x.dtype).eps, grid))
        start = stop
    return _Layout(keep, tuple(chips), int(np.sum(2 ** np.array(TARGET_BITS))))


def _chip_coefficients(chip: _Chip, flux: np.ndarray, ivar: np.ndarray,
                       failed: dict[int, str]) -> np.ndarray:
    """Chebyshev coefficients (B, 3) of every spectrum's chip, exactly as ``numpy``'s ``_fit`` computes them.

    The weighting and column scaling are done for the whole batch (each row the same
    operations on the same values as one spectrum alone); the least-squares solve is
    ``numpy.linalg.lstsq`` per spectrum. A spectrum whose solve raises is named in
    ``failed`` and keeps NaN coefficients.
    """
    w = ivar[:, chip.fit_pixels]
    # C order: each spectrum's rows contiguous, so the sums below run as numpy's pairwise
    # sum over one contiguous row, as for one spectrum alone (a gathered batch is column-major)
    lhs = np.multiply(chip.design[None, :, :], w[:, None, :], order="C")
    rhs = np.multiply(flux[:, chip.fit_pixels], w, order="C")
    scl = np.sqrt(np.square(lhs).sum(2))
    scl[scl == 0] = 1
    coef = np.full((flux.shape[0], DEGREE + 1), np.nan)
    for b in range(flux.shape[0]):
        if b in failed:
            continue
        try:
            coef[b] = np.linalg.lstsq(lhs[b].T / scl[b], rhs[b], chip.rcond)[0] / scl[b]
        except (np.linalg.LinAlgError, ValueError) as exc:
            failed[b] = f"continuum fit failed: {type(exc).__name__}: {exc}"
    return coef


def normalize_batch(flux: np.ndarray, err: np.ndarray, bitmask: np.ndarray | None,
                    dr: int = 17) -> tuple[np.ndarray, dict[int, str]]:
    """Continuum-normalized flux of a batch, as ``apogee_continuum(flux, err, bitmask=bitmask, dr=dr)``.

    Parameters
    ----------
    flux, err : ndarray
        (B, 8575) float64 on the apStar grid.
    bitmask : ndarray or None
        (B, 8575) APOGEE_PIXMASK values; None masks nothing.
    dr : int
        APOGEE data release of the chip layout and continuum mask (17).

    Returns
    -------
    norm_flux : ndarray
        (B, 7514) float64; rows of failed spectra are left as NaN.
    failed : dict
        Row → reason, for spectra whose fit raised (astroNN raises on the same input).
    """
    layout = _layout(dr)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    err = np.atleast_2d(np.asarray(err, dtype=np.float64))
    norm = np.empty((flux.shape[0], layout.keep.size))
    failed: dict[int, str] = {}
    # Chip by chip on slices of the apStar grid: no gathered copy of the gap-deleted spectra.
    with np.errstate(all="ignore"):  # zero continua and bad pixels are handled below, as astroNN does
        for chip in layout.chips:
            part = flux[:, chip.raw]
            ivar = 1 / (np.square(err[:, chip.raw]) + IVAR_FLOOR)
            coef = _chip_coefficients(chip, part, ivar, failed)
            # Clenshaw recursion for three coefficients, as numpy's chebval orders it
            x = chip.grid[None, :]
            c0, c1 = coef[:, 1:2], coef[:, 2:3]
            c0, c1 = coef[:, 0:1] - c1, c0 + c1 * (2 * x)
            np.divide(part, c0 + c1 * x, out=norm[:, chip.start:chip.stop])
        np.copyto(norm, 0.0, where=norm < 0.0)
        np.copyto(norm, MASK_VALUE, where=~np.isfinite(norm))
    if bitmask is not None:
        bits = np.atleast_2d(np.asarray(bitmask)).astype(np.int64, copy=False)
        for chip in layout.chips:
            np.copyto(norm[:, chip.start:chip.stop], MASK_VALUE, where=(bits[:, chip.raw] & layout.target) != 0)
    for b in failed:
        norm[b] = np.nan
    return norm, failed
