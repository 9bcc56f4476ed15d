"""Spectra on a shared log10 wavelength grid: one read-only array a process, pickled as its four numbers."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from reader_files import files  # noqa: F401 (a fixture)
from workers import spectrum as spectrum_module
from workers.readers import read_spectrum
from workers.spectrum import Spectrum, log10_grid

APSTAR = (4.179, 6e-6, 8575, 1.0)


def _arrays_bytes(s: Spectrum) -> int:
    return sum(a.nbytes for a in (s.wavelength, s.flux, s.error, s.bitmask) if a is not None)


def test_a_read_apstar_spectrum_sits_on_the_shared_grid_and_travels_without_it(files):
    s = read_spectrum(files["apstar3"], 1, 0)
    assert s.wavelength is log10_grid(*APSTAR)
    assert not s.wavelength.flags.writeable  # shared: no reader of it may change it
    assert s.bitmask.dtype == np.int64  # the MASK image's own type (BITPIX 64 in DR17 and later)
    data = pickle.dumps(s)
    # Without the grid, and the 64-bit mask in 16 bits: its values are pixel flags below 2**16.
    assert len(data) < _arrays_bytes(s) - s.wavelength.nbytes - 3 * s.bitmask.size * 2 + 4096
    back = pickle.loads(data)
    assert back.wavelength is s.wavelength  # this process's grid, not a copy
    assert back.bitmask.dtype == s.bitmask.dtype
    for name in ("flux", "error", "bitmask"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))
    assert (back.path, back.hdu, back.row, back.ids, back.meta) == (s.path, s.hdu, s.row, s.ids, s.meta)


def test_the_grid_has_the_values_of_its_formula():
    start, step, npix, reference = 3.5523, 1e-4, 4648, 3.0
    grid = log10_grid(start, step, npix, reference)
    expected = 10.0 ** (start + step * (np.arange(npix) + 1.0 - reference))
    np.testing.assert_array_equal(grid, expected)
    assert log10_grid(start, step, npix, reference) is grid


@pytest.mark.parametrize("wavelength", [np.linspace(3600.0, 10300.0, 50),
                                        np.array(log10_grid(*APSTAR))],  # equal values, another array
                         ids=["own-array", "copy-of-a-grid"])
def test_a_spectrum_with_its_own_wavelengths_travels_with_them(wavelength):
    s = Spectrum(path="x.fits", hdu=1, row=0, instrument="apogee", wavelength=wavelength,
                 flux=np.ones(wavelength.size, np.float32))
    data = pickle.dumps(s)
    assert len(data) > wavelength.nbytes
    back = pickle.loads(data)
    np.testing.assert_array_equal(back.wavelength, wavelength)
    assert back.wavelength.flags.writeable
    assert copy.deepcopy(s).wavelength is not wavelength


def test_grids_dropped_from_the_table_travel_in_full(monkeypatch):
    monkeypatch.setattr(spectrum_module, "_GRIDS_KEPT", 2)
    monkeypatch.setattr(spectrum_module, "_GRIDS", {})
    monkeypatch.setattr(spectrum_module, "_GRID_OF_ID", {})
    first = log10_grid(3.0, 1e-4, 10)
    s = Spectrum(path="x.fits", hdu=1, row=0, instrument="boss", wavelength=first, flux=np.ones(10, np.float32))
    small = len(pickle.dumps(s))
    log10_grid(3.0, 2e-4, 10)
    log10_grid(3.0, 3e-4, 10)  # the table is full: emptied, the first grid no longer in it
    assert len(pickle.dumps(s)) >= small + first.nbytes
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(s)).wavelength, first)


def test_a_subclass_of_spectrum_comes_back_as_itself():
    class Tagged(Spectrum):
        pass

    s = Tagged(path="x.fits", hdu=1, row=0, instrument="apogee", wavelength=log10_grid(*APSTAR),
               flux=np.ones(8575, np.float32))
    back = copy.copy(s)
    assert type(back) is Tagged and back.wavelength is s.wavelength


@pytest.mark.parametrize("mask", [
    np.array([0, 1, 4096, 65535], dtype=np.int64),  # travels as uint16
    np.array([-1, 0, 32767, -32768], dtype=np.int64),  # as int16
    np.array([0, 65536], dtype=np.int64),  # too wide for 16 bits: as it is
    np.array([0, 2**40], dtype=np.uint64),
    np.array([[3, 5], [7, 9]], dtype=np.int32),  # 2-D
    np.array([], dtype=np.int64),
    np.array([0.0, 1.0]),  # not integers: as it is
    np.array([1, 2], dtype=np.int16),
    None,
])
def test_a_mask_comes_back_with_its_own_type_and_values(mask):
    s = Spectrum("a.fits", 1, 0, "apogee", np.arange(4.0), np.ones(4, np.float32), bitmask=mask)
    back = pickle.loads(pickle.dumps(s))
    if mask is None:
        assert back.bitmask is None
    else:
        assert back.bitmask.dtype == mask.dtype and back.bitmask.shape == mask.shape
        np.testing.assert_array_equal(back.bitmask, mask)


def test_a_masked_array_mask_travels_whole():
    mask = np.ma.masked_array(np.array([1, 2**40], dtype=np.int64), mask=[False, True])
    s = Spectrum("a.fits", 1, 0, "apogee", np.arange(2.0), np.ones(2, np.float32), bitmask=mask)
    back = pickle.loads(pickle.dumps(s))
    assert back.bitmask.data.tolist() == [1, 2**40] and back.bitmask.mask.tolist() == [False, True]
