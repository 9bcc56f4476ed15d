"""The spectrum files the reader tests read, written once per test module, and the checks they share."""
from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
from astropy.io import fits

from specq.testing import synthetic
from workers.readers import BACKENDS
from workers.spectrum import SpectrumError


AVAILABLE = [b for b in BACKENDS if b != "fitsio" or importlib.util.find_spec("fitsio") is not None]
BOSS_WAVE = 10.0 ** (3.5523 + 1e-4 * np.arange(4648))
APOGEE_WAVE = 10.0 ** (4.179 + 6e-6 * np.arange(8575))
STAR = dict(teff=5200.0, logg=4.4, fe_h=-0.3, snr=40.0)


# --------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each kind the tests read; written once for the module."""
    folder = tmp_path_factory.mktemp("spectra")
    made = {}
    made["lite"] = folder / "spec-112360-60000-27021598150202075.fits"
    synthetic.write_spec_lite(made["lite"], **STAR, v_r=25.0, seed=1, catalogid=27021598150202075,
                              field=112360, mjd=60000, sdss_id=103020000, k_mag=10.5, ebv=0.12)
    made["lite_lower"] = folder / "spec-015001-57000-27021598150202076.fits"
    synthetic.write_spec_lite(made["lite_lower"], **STAR, v_r=-5.0, seed=2, catalogid=27021598150202076,
                              field=15001, mjd=57000, lowercase=True)
    made["visit"] = folder / "mwmVisit-0.8.1-99560000.fits"
    synthetic.write_mwm_visit(made["visit"], [
        dict(STAR, v_r=10.0, seed=3, mjd=60001, catalogid=111),
        dict(STAR, v_r=12.0, seed=4, mjd=60002, catalogid=112),
        dict(STAR, v_r=14.0, seed=5, mjd=60003, telescope="lco"),
        dict(STAR, seed=6, instrument="apogee", mjd=60004),
    ], sdss_id=99560000, catalogid=63050395967613090, k_mag=11.147, ebv=0.05, plx=0.5)
    made["star_boss"] = folder / "mwmStar-0.8.1-1001.fits"
    synthetic.write_mwm_star(made["star_boss"], boss=dict(STAR, v_r=3.0, seed=7), sdss_id=1001,
                             catalogid=2001, k_mag=9.8)
    made["star_apogee"] = folder / "mwmStar-0.8.1-1002.fits"
    synthetic.write_mwm_star(made["star_apogee"], apogee=dict(STAR, seed=8, telescope="lco", fakemag=150.0),
                             sdss_id=1002, catalogid=2002, k_mag=8.5, ebv=0.3, apogee_id="2M12283021-6635525")
    made["star_both"] = folder / "mwmStar-0.8.1-1003.fits"
    synthetic.write_mwm_star(made["star_both"], boss=dict(STAR, seed=9), apogee=dict(STAR, seed=10),
                             sdss_id=1003, catalogid=2003, k_mag=12.0, ebv=0.2)
    made["apstar1"] = folder / "apStar-1.0-apo25m-2M13593121+6335074.fits"
    synthetic.write_apstar(made["apstar1"], teff=4600.0, logg=2.4, fe_h=0.1, fakemag=60.0, snr=80.0, seed=11,
                           nvisits=1, apogee_id="2M13593121+6335074", k_mag=10.288, ebv=0.068)
    made["apstar3"] = folder / "apStar-1.0-apo25m-2M00000001+0000001.fits"
    synthetic.write_apstar(made["apstar3"], teff=4800.0, logg=2.8, fe_h=-0.2, fakemag=80.0, snr=120.0, seed=12,
                           nvisits=3, apogee_id="2M00000001+0000001", k_mag=9.0, ebv=0.1)
    made["apstar_dr19"] = folder / "apStar-1.0-lco25m-2M00000002-0000002.fits"
    synthetic.write_apstar(made["apstar_dr19"], teff=5000.0, logg=3.0, fe_h=0.0, fakemag=90.0, snr=60.0, seed=13,
                           nvisits=2, apogee_id="2M00000002-0000002", k_mag=11.0, catalogid=4349650353,
                           release="DR19")
    return made


def table_row(path, hdu, row, column):
    with fits.open(path) as hdul:
        return np.array(hdul[hdu].data[column][row])


def image_data(path, hdu):
    with fits.open(path) as hdul:
        return np.array(hdul[hdu].data)


def assert_names_place(error: SpectrumError, path, hdu=None, row=None):
    message = str(error)
    assert str(path) in message
    if hdu is not None:
        assert f"HDU {hdu}" in message
    if row is not None:
        assert f"row {row}" in message


def assert_same_spectrum(mine, theirs):
    for name in ("wavelength", "flux", "ivar", "error", "bitmask"):
        a, b = getattr(mine, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert (mine.path, mine.hdu, mine.row, mine.instrument, mine.is_visit, mine.ids, mine.meta) == \
        (theirs.path, theirs.hdu, theirs.row, theirs.instrument, theirs.is_visit, theirs.ids, theirs.meta)


def gzip_file(source, target):
    target.write_bytes(gzip.compress(source.read_bytes(), compresslevel=1))
    return target
