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

import os
import threading
from dataclasses import dataclass

import numpy as np

from workers.spectrum import shared_grid_key

COVERAGE_BINS = 100
# Per (wavelength range, shared grid): which pixels lie inside the range and the coverage
# step of each. Every spectrum of a product shares one grid, so they are worked out once.
_GRID_STEPS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_GRID_STEPS_KEPT = 64
_grid_steps_lock = threading.Lock()


def _new_grid_steps_lock() -> None:
    global _grid_steps_lock
    _grid_steps_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # a child forked while another thread held the lock gets a free one
    os.register_at_fork(after_in_child=_new_grid_steps_lock)


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
        fx = np.asarray(flux, dtype=np.float64).ravel()
        inside, steps = self._steps(wavelength)
        if inside.shape != fx.shape:
            return f"wavelength and flux differ in length ({inside.size} and {fx.size} pixels)"
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
        coverage = np.count_nonzero(np.bincount(steps[good], minlength=COVERAGE_BINS)) / COVERAGE_BINS
        if coverage < self.min_coverage:
            return (f"too little data for {self.pipeline}: good pixels cover {coverage:.0%} of {where}, "
                    f"it needs {self.min_coverage:.0%}")
        return None

    def _steps(self, wavelength) -> tuple[np.ndarray, np.ndarray]:
        """(pixels inside the range, each pixel's coverage step: 0 outside it); kept for a shared grid."""
        key = shared_grid_key(wavelength)
        if key is not None:
            found = _GRID_STEPS.get((self.wavelength_range, key))
            if found is not None:
                return found
        low, high = self.wavelength_range
        wl = np.asarray(wavelength, dtype=np.float64).ravel()
        inside = np.isfinite(wl) & (wl >= low) & (wl <= high)
        edges = np.linspace(np.log10(low), np.log10(high), COVERAGE_BINS + 1)
        steps = np.zeros(wl.shape, dtype=np.intp)
        steps[inside] = np.clip(np.searchsorted(edges, np.log10(wl[inside]), side="right") - 1, 0, COVERAGE_BINS - 1)
        if key is not None:
            inside.flags.writeable = steps.flags.writeable = False
            with _grid_steps_lock:
                if len(_GRID_STEPS) >= _GRID_STEPS_KEPT:
                    _GRID_STEPS.clear()
                _GRID_STEPS[self.wavelength_range, key] = inside, steps
        return inside, steps
