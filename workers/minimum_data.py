"""The least data a pipeline answers for: below it, a flagged row says why instead of a number.

A network returns a value for any input, also for a spectrum with all its flux negative or
with twenty pixels. Each pipeline states, as named constants in its folder
(``workers/<name>/minimum.py``), the least it needs:

- positive flux: the median of its good pixels above zero;
- enough good pixels (finite flux inside the pipeline's wavelength range);
- enough of that range covered: the range is cut into :data:`COVERAGE_BINS` equal steps
  of log wavelength, and the share of steps holding a good pixel must reach the minimum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COVERAGE_BINS = 100


@dataclass(frozen=True)
class MinimumData:
    """What one pipeline needs of a spectrum.

    Parameters
    ----------
    pipeline : str
        Its title, for the reason.
    wavelength_range : (float, float)
        Å, the part of the spectrum the network reads.
    min_good_pixels : int
    min_coverage : float
        Share (0–1) of ``wavelength_range`` the good pixels must cover.
    """

    pipeline: str
    wavelength_range: tuple[float, float]
    min_good_pixels: int
    min_coverage: float

    def shortfall(self, wavelength, flux) -> str | None:
        """None when the spectrum has enough; else why not, in words (a row's error)."""
        low, high = self.wavelength_range
        wl = np.asarray(wavelength, dtype=np.float64).ravel()
        fx = np.asarray(flux, dtype=np.float64).ravel()
        inside = np.isfinite(wl) & (wl >= low) & (wl <= high)
        good = inside & np.isfinite(fx)
        n_good = int(good.sum())
        where = f"{low:.0f}-{high:.0f} A"
        if n_good < self.min_good_pixels:
            return (f"too little data for {self.pipeline}: {n_good} good pixels in {where}, "
                    f"it needs {self.min_good_pixels}")
        good_flux = fx[good]
        # The median is positive when both middle values are, i.e. when at most (n - 1) // 2
        # values are not: a count, cheaper than the median, which is taken only otherwise.
        if np.count_nonzero(good_flux <= 0) > (n_good - 1) // 2:
            median = float(np.median(good_flux))
            if not median > 0:
                return (f"too little data for {self.pipeline}: the flux is not positive "
                        f"(median {median:.3g} in {where})")
        edges = np.linspace(np.log10(low), np.log10(high), COVERAGE_BINS + 1)
        bins = np.clip(np.searchsorted(edges, np.log10(wl[good]), side="right") - 1, 0, COVERAGE_BINS - 1)
        coverage = np.count_nonzero(np.bincount(bins, minlength=COVERAGE_BINS)) / COVERAGE_BINS
        if coverage < self.min_coverage:
            return (f"too little data for {self.pipeline}: good pixels cover {coverage:.0%} of {where}, "
                    f"it needs {self.min_coverage:.0%}")
        return None
