"""The least data a pipeline answers for: the coverage steps of a shared grid, worked out once."""
from __future__ import annotations

import numpy as np
import pytest

from workers import minimum_data
from workers.minimum_data import COVERAGE_BINS, MinimumData
from workers.spectrum import log10_grid

APOGEE = MinimumData("AstroNN distances", (15100.0, 17000.0), 2000, 0.5)


def covered_share(minimum: MinimumData, wavelength: np.ndarray, flux: np.ndarray) -> float:
    """The share of the range the finite pixels cover, from the definition (no steps kept)."""
    low, high = minimum.wavelength_range
    good = np.isfinite(wavelength) & (wavelength >= low) & (wavelength <= high) & np.isfinite(flux)
    edges = np.linspace(np.log10(low), np.log10(high), COVERAGE_BINS + 1)
    steps = np.clip(np.searchsorted(edges, np.log10(wavelength[good]), side="right") - 1, 0, COVERAGE_BINS - 1)
    return np.unique(steps).size / COVERAGE_BINS


@pytest.mark.parametrize("shared", [True, False])
def test_coverage_on_a_grid_matches_its_definition_for_every_gap(shared, monkeypatch):
    monkeypatch.setattr(minimum_data, "_GRID_STEPS", {})
    grid = log10_grid(4.179, 6e-6, 8575)
    wavelength = grid if shared else np.array(grid)  # a copy is no shared grid: nothing kept for it
    rng = np.random.default_rng(7)
    verdicts = set()
    for gap in (0, 3000, 4200, 5200, 6000):
        flux = np.ones(8575)
        start = int(rng.integers(0, 8575 - gap)) if gap else 0
        flux[start:start + gap] = np.nan
        share = covered_share(APOGEE, wavelength, flux)
        reason = APOGEE.shortfall(wavelength, flux)
        if share < APOGEE.min_coverage:
            assert reason is not None and f"cover {share:.0%}" in reason
        else:
            assert reason is None or "good pixels in" in reason  # too few pixels, said first
        verdicts.add(reason is None)
    assert verdicts == {True, False}  # both sides of the rule were met
    assert bool(minimum_data._GRID_STEPS) == shared


def test_a_kept_grid_cannot_be_changed_through_what_is_kept():
    grid = log10_grid(4.179, 6e-6, 8575)
    APOGEE.shortfall(grid, np.ones(8575))
    inside, steps = APOGEE._steps(grid)
    assert not inside.flags.writeable and not steps.flags.writeable


def test_wavelength_and_flux_of_different_lengths_is_a_reason_not_a_crash():
    reason = APOGEE.shortfall(np.linspace(15100.0, 17000.0, 100), np.ones(8575))
    assert reason == "wavelength and flux differ in length (100 and 8575 pixels)"


def test_pipelines_with_other_ranges_on_one_grid_keep_steps_of_their_own(monkeypatch):
    monkeypatch.setattr(minimum_data, "_GRID_STEPS", {})
    grid = log10_grid(4.179, 6e-6, 8575)
    blue = MinimumData("blue half", (15100.0, 16000.0), 100, 0.5)
    flux = np.ones(8575)
    flux[grid > 16000.0] = np.nan  # only the blue half has data
    assert blue.shortfall(grid, flux) is None
    reason = APOGEE.shortfall(grid, flux)  # the same grid, the whole range: half of it is empty
    assert reason is not None and f"cover {covered_share(APOGEE, grid, flux):.0%}" in reason
    assert len(minimum_data._GRID_STEPS) == 2
