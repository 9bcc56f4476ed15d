"""Readers: round trips through every SDSS format, every backend, and every way a file can be bad."""
from __future__ import annotations

import errno
import gzip
import importlib.util
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import workers.readers as readers
from specq.testing import synthetic
from workers.readers import (BACKENDS, DEFAULT_BACKEND, FormatMismatchError, SpectrumSlot, TransientReadError,
                             detect_format, list_spectra, measure_readers, read_spectrum)
from workers.readers import backends, native
from workers.readers.header import Header, parse_card_value
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


def _table_row(path, hdu, row, column):
    with fits.open(path) as hdul:
        return np.array(hdul[hdu].data[column][row])


def _image(path, hdu):
    with fits.open(path) as hdul:
        return np.array(hdul[hdu].data)


# --------------------------------------------------------------------------- spec-lite
@pytest.mark.parametrize("backend", AVAILABLE)
def test_spec_lite_round_trip(files, backend):
    path = files["lite"]
    assert detect_format(path, backend=backend) == "spec-lite"
    slots = list_spectra(path, "boss", backend=backend)
    assert slots == [SpectrumSlot(hdu=1, row=0, is_visit=True,
                                  ids={"catalogid": 27021598150202075, "sdss_id": 103020000})]
    assert list_spectra(path, "apogee", backend=backend) == []

    spectrum = read_spectrum(path, 1, 0, rel_path="lite/x.fits", backend=backend)
    assert spectrum.path == "lite/x.fits"
    assert (spectrum.hdu, spectrum.row, spectrum.instrument, spectrum.is_visit) == (1, 0, "boss", True)
    loglam = _table_row(path, 1, slice(None), "LOGLAM")
    np.testing.assert_array_equal(spectrum.wavelength, 10.0 ** loglam.astype(np.float64))
    np.testing.assert_allclose(spectrum.wavelength, BOSS_WAVE, rtol=2e-6)
    assert spectrum.wavelength.dtype == np.float64 and spectrum.flux.dtype == np.float32
    np.testing.assert_array_equal(spectrum.flux, _table_row(path, 1, slice(None), "FLUX"))
    np.testing.assert_array_equal(spectrum.ivar, _table_row(path, 1, slice(None), "IVAR"))
    assert spectrum.error is None
    assert spectrum.ids == {"catalogid": 27021598150202075, "sdss_id": 103020000}
    assert spectrum.meta["k_mag"] == 10.5 and spectrum.meta["ebv"] == 0.12
    assert spectrum.meta["field"] == 112360 and spectrum.meta["mjd"] == 60000
    assert "syn_teff" not in spectrum.meta  # production readers know nothing of synthetic files
    assert synthetic.read_truth(path, 1, 0) == {"teff": 5200.0, "logg": 4.4, "fe_h": -0.3, "v_r": 25.0, "snr": 40.0}
    # The flux is what the generator makes, plus noise at the stated S/N.
    model = synthetic.boss_flux(BOSS_WAVE, 5200.0, 4.4, -0.3, 25.0, np.random.default_rng(1))
    np.testing.assert_allclose(_table_row(path, 1, slice(None), "MODEL"), model, rtol=1e-6)
    np.testing.assert_allclose(spectrum.ivar * model.astype(np.float32) ** 2, 40.0 ** 2, rtol=1e-4)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_spec_lite_lower_case_columns(files, backend):
    path = files["lite_lower"]
    with fits.open(path) as hdul:
        assert hdul[1].columns.names == ["flux", "loglam", "ivar", "and_mask", "or_mask", "wdisp", "sky", "model"]
    spectrum = read_spectrum(path, 1, 0, backend=backend)
    assert spectrum.path == str(path)
    np.testing.assert_array_equal(spectrum.flux, _table_row(path, 1, slice(None), "flux"))
    np.testing.assert_array_equal(spectrum.wavelength, 10.0 ** _table_row(path, 1, slice(None), "loglam").astype(float))
    assert spectrum.ids["catalogid"] == 27021598150202076
    assert "sdss_id" not in spectrum.ids  # written as 0: unknown


# --------------------------------------------------------------------------- mwmVisit
@pytest.mark.parametrize("backend", AVAILABLE)
def test_mwm_visit_rows(files, backend):
    path = files["visit"]
    assert detect_format(path, backend=backend) == "mwmVisit"
    slots = list_spectra(path, "boss", backend=backend)
    assert [(s.hdu, s.row, s.is_visit) for s in slots] == [(1, 0, True), (1, 1, True), (2, 0, True)]
    assert [s.ids["catalogid"] for s in slots] == [111, 112, 63050395967613090]
    assert all(s.ids["sdss_id"] == 99560000 for s in slots)
    pks = [s.ids["spectrum_pk"] for s in slots]
    assert pks == [int(_table_row(path, s.hdu, s.row, "spectrum_pk_id")) for s in slots]
    assert len(set(pks)) == 3

    for slot, v_r in zip(slots, (10.0, 12.0, 14.0)):
        spectrum = read_spectrum(path, slot.hdu, slot.row, backend=backend)
        assert spectrum.instrument == "boss" and spectrum.is_visit
        np.testing.assert_array_equal(spectrum.flux, _table_row(path, slot.hdu, slot.row, "flux"))
        np.testing.assert_array_equal(spectrum.ivar, _table_row(path, slot.hdu, slot.row, "ivar"))
        np.testing.assert_allclose(spectrum.wavelength, BOSS_WAVE, rtol=1e-12)
        assert spectrum.ids == slot.ids
        assert spectrum.meta["k_mag"] == 11.147 and spectrum.meta["ebv"] == 0.05 and spectrum.meta["plx"] == 0.5
        assert synthetic.read_truth(path, slot.hdu, slot.row)["v_r"] == v_r


@pytest.mark.parametrize("backend", AVAILABLE)
def test_mwm_visit_apogee_refused_for_astronn(files, backend):
    with pytest.raises(SpectrumError, match="visit spectra are not valid input for AstroNN distances: "
                                            "use the mwmStar or apStar file"):
        list_spectra(files["visit"], "apogee", backend=backend)
    # Reading the row itself works; it says it is a visit, so a pipeline can refuse it.
    spectrum = read_spectrum(files["visit"], 3, 0, backend=backend)
    assert spectrum.instrument == "apogee" and spectrum.is_visit


# --------------------------------------------------------------------------- mwmStar
@pytest.mark.parametrize("backend", AVAILABLE)
def test_mwm_star_boss_only(files, backend):
    path = files["star_boss"]
    assert detect_format(path, backend=backend) == "mwmStar"
    slots = list_spectra(path, "boss", backend=backend)
    assert [(s.hdu, s.row, s.is_visit) for s in slots] == [(1, 0, False)]
    assert slots[0].ids["sdss_id"] == 1001 and slots[0].ids["catalogid"] == 2001
    assert list_spectra(path, "apogee", backend=backend) == []
    spectrum = read_spectrum(path, 1, 0, backend=backend)
    assert not spectrum.is_visit and spectrum.instrument == "boss"
    np.testing.assert_array_equal(spectrum.flux, _table_row(path, 1, 0, "flux"))
    assert "ebv" not in spectrum.meta and spectrum.meta["k_mag"] == 9.8


@pytest.mark.parametrize("backend", AVAILABLE)
def test_mwm_star_apogee_only(files, backend):
    path = files["star_apogee"]
    assert list_spectra(path, "boss", backend=backend) == []
    slots = list_spectra(path, "apogee", backend=backend)
    assert [(s.hdu, s.row, s.is_visit) for s in slots] == [(4, 0, False)]  # APOGEE/LCO
    assert slots[0].ids["apogee_id"] == "2M12283021-6635525"
    spectrum = read_spectrum(path, 4, 0, backend=backend)
    assert spectrum.instrument == "apogee" and not spectrum.is_visit
    np.testing.assert_allclose(spectrum.wavelength, APOGEE_WAVE, rtol=1e-12)
    ivar = _table_row(path, 4, 0, "ivar")
    np.testing.assert_array_equal(spectrum.ivar, ivar)
    good = ivar > 0
    assert (~good).sum() > 1000  # the detector gaps
    np.testing.assert_allclose(spectrum.error[good], ivar[good] ** -0.5, rtol=1e-6)
    assert np.all(np.isinf(spectrum.error[~good]))
    np.testing.assert_array_equal(spectrum.bitmask, _table_row(path, 4, 0, "pixel_flags").astype(np.int64))
    assert spectrum.bitmask.dtype == np.int64 and spectrum.bitmask[0] == synthetic.APOGEE_BADPIX
    assert spectrum.meta["k_mag"] == 8.5 and spectrum.meta["ebv"] == 0.3
    assert synthetic.read_truth(path, 4, 0)["fakemag"] == 150.0


@pytest.mark.parametrize("backend", AVAILABLE)
def test_mwm_star_both(files, backend):
    path = files["star_both"]
    boss = list_spectra(path, "boss", backend=backend)
    apogee = list_spectra(path, "apogee", backend=backend)
    assert [(s.hdu, s.row) for s in boss] == [(1, 0)] and [(s.hdu, s.row) for s in apogee] == [(3, 0)]
    assert boss[0].ids["spectrum_pk"] != apogee[0].ids["spectrum_pk"]
    assert read_spectrum(path, 1, 0, backend=backend).flux.size == 4648
    assert read_spectrum(path, 3, 0, backend=backend).flux.size == 8575


# --------------------------------------------------------------------------- apStar
@pytest.mark.parametrize("backend", AVAILABLE)
def test_apstar_single_visit(files, backend):
    path = files["apstar1"]
    assert detect_format(path, backend=backend) == "apStar"
    with fits.open(path) as hdul:
        assert hdul[1].data.shape == (8575,)  # one visit: 1-D images
    slots = list_spectra(path, "apogee", backend=backend)
    assert slots == [SpectrumSlot(hdu=1, row=0, is_visit=False, ids={"apogee_id": "2M13593121+6335074"})]
    assert list_spectra(path, "boss", backend=backend) == []
    spectrum = read_spectrum(path, 1, 0, backend=backend)
    assert spectrum.instrument == "apogee" and not spectrum.is_visit
    np.testing.assert_array_equal(spectrum.flux, _image(path, 1).astype(np.float32))
    np.testing.assert_array_equal(spectrum.error, _image(path, 2).astype(np.float32))
    np.testing.assert_array_equal(spectrum.bitmask, _image(path, 3))
    np.testing.assert_allclose(spectrum.wavelength, APOGEE_WAVE, rtol=1e-12)
    assert spectrum.meta["k_mag"] == 10.288 and spectrum.meta["ebv"] == 0.068
    assert synthetic.read_truth(path, 1, 0)["fakemag"] == 60.0


@pytest.mark.parametrize("backend", AVAILABLE)
def test_apstar_several_visits_uses_row_0(files, backend):
    path = files["apstar3"]
    with fits.open(path) as hdul:
        assert hdul[1].data.shape == (5, 8575)  # NVISITS + 2 rows
    slots = list_spectra(path, "apogee", backend=backend)
    assert [(s.hdu, s.row, s.is_visit) for s in slots] == [(1, 0, False)]
    combined = read_spectrum(path, 1, 0, backend=backend)
    np.testing.assert_array_equal(combined.flux, _image(path, 1)[0].astype(np.float32))
    np.testing.assert_array_equal(combined.error, _image(path, 2)[0].astype(np.float32))
    np.testing.assert_array_equal(combined.bitmask, _image(path, 3)[0])
    assert not combined.is_visit and combined.meta["nvisits"] == 3
    visit = read_spectrum(path, 1, 2, backend=backend)
    assert visit.is_visit
    np.testing.assert_array_equal(visit.flux, _image(path, 1)[2].astype(np.float32))
    # The combined spectrum is less noisy than a visit.
    on = combined.bitmask == 0
    assert np.median(combined.error[on]) < np.median(visit.error[on])


@pytest.mark.parametrize("backend", AVAILABLE)
def test_apstar_dr19_keywords(files, backend):
    spectrum = read_spectrum(files["apstar_dr19"], 1, 0, backend=backend)
    assert spectrum.meta["k_mag"] == 11.0  # KMAG
    assert "ebv" not in spectrum.meta and "plx" not in spectrum.meta  # -9999.99: no value
    assert spectrum.ids == {"apogee_id": "2M00000002-0000002", "catalogid": 4349650353}


def test_apstar_id_from_file_name(files, tmp_path):
    path = tmp_path / "apStar-1.0-apo25m-2M12283021-6635525.fits"
    with fits.open(files["apstar1"]) as hdul:
        del hdul[0].header["OBJID"]
        hdul.writeto(path, checksum=True)
    assert list_spectra(path, "apogee")[0].ids == {"apogee_id": "2M12283021-6635525"}


# --------------------------------------------------------------------------- detection
def test_detect_format_from_filetype_card_and_unknown_layouts(files, tmp_path):
    renamed = tmp_path / "whatever.fits"
    shutil.copy(files["star_both"], renamed)
    assert detect_format(renamed) == "mwmStar"  # from the columns, not the name
    with fits.open(files["lite"]) as hdul:
        hdul[0].header["FILETYPE"] = "mwmVisit"
        hdul.writeto(tmp_path / "typed.fits", checksum=True)
    assert detect_format(tmp_path / "typed.fits") == "mwmVisit"

    image = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]).writeto(image)
    with pytest.raises(SpectrumError, match="unknown file layout"):
        detect_format(image)
    with pytest.raises(SpectrumError, match="unknown file layout"):
        list_spectra(image, "boss")


def test_detect_format_falls_back_to_the_file_name(tmp_path):
    path = tmp_path / "apStar-1.0-apo25m-2M00000003+0000003.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("X", "E", array=[1.0])])]).writeto(path)
    assert detect_format(path) == "apStar"
    with pytest.raises(SpectrumError, match="HDU 2 does not exist"):
        read_spectrum(path, 1, 0)


# --------------------------------------------------------------------------- bad files
def _assert_names_place(error: SpectrumError, path, hdu=None, row=None):
    message = str(error)
    assert str(path) in message
    if hdu is not None:
        assert f"HDU {hdu}" in message
    if row is not None:
        assert f"row {row}" in message


@pytest.mark.parametrize("backend", AVAILABLE)
def test_empty_random_and_text_files(tmp_path, backend):
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(SpectrumError, match="empty file"):
        read_spectrum(empty, 1, 0, backend=backend)
    noise = tmp_path / "noise.fits"
    noise.write_bytes(np.random.default_rng(0).bytes(10000))
    with pytest.raises(SpectrumError, match="not a FITS file"):
        detect_format(noise, backend=backend)
    text = tmp_path / "notes.fits"
    text.write_text("SIMPLE but not really\n")
    with pytest.raises(SpectrumError, match="not a FITS file"):
        list_spectra(text, "boss", backend=backend)


# The native backend's safety net re-reads with astropy, which warns about the truncation.
@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.filterwarnings("ignore:Error validating header")
@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.99])
def test_truncated_files(files, tmp_path, backend, fraction):
    for name in ("lite", "star_apogee", "apstar3"):
        data = files[name].read_bytes()
        cut = tmp_path / f"cut-{name}.fits"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(SpectrumError, match="truncated") as caught:
            read_spectrum(cut, 1, 0, backend=backend)
        _assert_names_place(caught.value, cut)
        assert not isinstance(caught.value, TransientReadError)


@pytest.mark.filterwarnings("ignore:Error validating header")
def test_file_cut_inside_an_extension_header_is_not_rescued(files, tmp_path, caplog):
    """astropy quietly drops an extension whose header is cut short; the safety net must not."""
    caplog.set_level(logging.WARNING, logger="workers.readers")
    data = files["lite"].read_bytes()
    spall = data.rindex(b"XTENSION=")  # HDU 2, after the spectrum: HDU 1 alone is readable
    cut = tmp_path / "spec-112360-60000-27021598150202075.fits"
    cut.write_bytes(data[: spall + 1000])
    with fits.open(cut) as hdul:
        assert len(hdul) == 2  # what astropy makes of it
    for backend in AVAILABLE:
        with pytest.raises(SpectrumError, match="truncated"):
            read_spectrum(cut, 1, 0, backend=backend)
    assert not caplog.records


@pytest.mark.parametrize("backend", AVAILABLE)
def test_missing_column(files, tmp_path, backend):
    path = tmp_path / "spec-1-2-3.fits"
    with fits.open(files["lite"]) as hdul:
        hdul[1] = fits.BinTableHDU.from_columns([c for c in hdul[1].columns if c.name != "IVAR"], name="COADD")
        hdul.writeto(path, checksum=True)
    with pytest.raises(SpectrumError, match="has no column IVAR") as caught:
        read_spectrum(path, 1, 0, backend=backend)
    _assert_names_place(caught.value, path, hdu=1, row=0)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_row_and_hdu_out_of_range(files, backend):
    cases = [(files["visit"], 1, 2, "row 2 is out of range: HDU 1 \\(BOSS/APO\\) has 2 rows"),
             (files["star_boss"], 3, 0, "row 0 is out of range: HDU 3 \\(APOGEE/APO\\) has 0 rows"),
             (files["apstar3"], 1, 5, "row 5 is out of range: HDU 1 has 5 rows"),
             (files["apstar1"], 1, 1, "row 1 is out of range: HDU 1 has 1 row"),
             (files["lite"], 1, 3, "holds one spectrum: use row 0"),
             (files["lite"], 9, 0, "HDU 9 does not exist: the file has 3 HDUs"),
             (files["star_both"], 5, 0, "HDU 5 does not exist"),
             (files["star_both"], 0, 0, "spectra are in HDUs 1-4"),
             (files["apstar1"], 2, 0, "addressed by HDU 1"),
             (files["visit"], 1, -1, "row -1 is out of range")]
    for path, hdu, row, message in cases:
        with pytest.raises(SpectrumError, match=message) as caught:
            read_spectrum(path, hdu, row, backend=backend)
        _assert_names_place(caught.value, path, hdu=hdu)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_inconsistent_lengths_and_bad_grids(files, tmp_path, backend):
    npixels = tmp_path / "mwmStar-0.8.1-1.fits"
    with fits.open(files["star_boss"]) as hdul:
        hdul[1].header["NPIXELS"] = 4000
        hdul.writeto(npixels, checksum=True)
    with pytest.raises(SpectrumError, match="NPIXELS = 4000") as caught:
        read_spectrum(npixels, 1, 0, backend=backend)
    _assert_names_place(caught.value, npixels, hdu=1, row=0)

    no_grid = tmp_path / "mwmStar-0.8.1-2.fits"
    with fits.open(files["star_boss"]) as hdul:
        del hdul[1].header["CDELT"]
        hdul.writeto(no_grid, checksum=True)
    with pytest.raises(SpectrumError, match="no wavelength grid"):
        read_spectrum(no_grid, 1, 0, backend=backend)

    bad_loglam = tmp_path / "spec-1-2-4.fits"
    with fits.open(files["lite"]) as hdul:
        hdul[1].data["LOGLAM"][100] = np.nan
        hdul.writeto(bad_loglam, checksum=True)
    with pytest.raises(SpectrumError, match="non-finite"):
        read_spectrum(bad_loglam, 1, 0, backend=backend)

    shapes = tmp_path / "apStar-1.0-apo25m-2M00000009+0000009.fits"
    with fits.open(files["apstar3"]) as hdul:
        hdul[2] = fits.ImageHDU(hdul[2].data[:, :8000])
        hdul.writeto(shapes, checksum=True)
    with pytest.raises(SpectrumError, match="differ in shape"):
        read_spectrum(shapes, 1, 0, backend=backend)


# --------------------------------------------------------------------------- transient errors
@pytest.mark.parametrize("backend", AVAILABLE)
def test_missing_file_is_transient(tmp_path, backend):
    missing = tmp_path / "not-yet.fits"
    for call in (lambda: read_spectrum(missing, 1, 0, backend=backend),
                 lambda: list_spectra(missing, "boss", backend=backend),
                 lambda: detect_format(missing, backend=backend)):
        with pytest.raises(TransientReadError, match="not found") as caught:
            call()
        assert not isinstance(caught.value, SpectrumError)


def test_unreadable_file_is_transient_and_directory_is_not(files, tmp_path):
    folder = tmp_path / "spec-1-1-1.fits"
    folder.mkdir()
    with pytest.raises(SpectrumError, match="Is a directory"):
        read_spectrum(folder, 1, 0)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return  # root reads anything: the permission case cannot be staged
    locked = tmp_path / "locked.fits"
    shutil.copy(files["lite"], locked)
    locked.chmod(0)
    try:
        with pytest.raises(TransientReadError, match="permission denied"):
            read_spectrum(locked, 1, 0)
    finally:
        locked.chmod(0o644)


def test_io_error_is_transient(files, monkeypatch):
    def failing_scan(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(native, "scan_headers", failing_scan)
    with pytest.raises(TransientReadError, match="I/O error"):
        read_spectrum(files["lite"], 1, 0)


# --------------------------------------------------------------------------- backends
def test_backends_agree_on_every_format(files):
    assert DEFAULT_BACKEND in BACKENDS
    compared = 0
    for path in files.values():
        for instrument in ("boss", "apogee"):
            try:
                slots = list_spectra(path, instrument, backend="astropy")
            except SpectrumError:
                continue
            for backend in AVAILABLE:
                assert list_spectra(path, instrument, backend=backend) == slots
            for slot in slots:
                reference = read_spectrum(path, slot.hdu, slot.row, backend="astropy")
                for backend in AVAILABLE:
                    other = read_spectrum(path, slot.hdu, slot.row, backend=backend)
                    for name in ("wavelength", "flux", "ivar", "error", "bitmask"):
                        mine, theirs = getattr(reference, name), getattr(other, name)
                        assert (mine is None) == (theirs is None), (path, backend, name)
                        if mine is not None:
                            assert mine.dtype == theirs.dtype and mine.dtype.isnative
                            np.testing.assert_array_equal(mine, theirs)
                    assert (other.ids, other.meta, other.is_visit, other.instrument) == \
                        (reference.ids, reference.meta, reference.is_visit, reference.instrument)
                compared += 1
    assert compared == 12


def test_arrays_are_copies_not_views_of_the_file(files):
    spectrum = read_spectrum(files["star_both"], 3, 0)
    for name in ("wavelength", "flux", "ivar", "error", "bitmask"):
        array = getattr(spectrum, name)
        assert array.dtype.isnative and array.flags.writeable
        array[0] = 0  # must not raise (read-only views of a buffer would)


def _astropy_values(header) -> dict:
    """What specq's Header should hold for an astropy header: first value of each keyword."""
    expected = {}
    for card in header.cards:
        keyword = card.keyword.strip()
        if keyword.upper() in ("", "COMMENT", "HISTORY") or keyword.upper() in {k.upper() for k in expected}:
            continue
        value = card.value
        expected[keyword] = value if isinstance(value, (str, bool, int, float)) else None
    return expected


def _assert_headers_match_astropy(path):
    with fits.open(path) as hdul:
        for opener in (lambda: backends.open_fits(path, "native"), lambda: backends.open_reference(path)):
            with opener() as handle:
                assert handle.hdu_count() == len(hdul)
                for index, hdu in enumerate(hdul):
                    assert dict(handle.header(index)) == _astropy_values(hdu.header), (path, index)


def test_headers_parse_like_astropy(files):
    for path in files.values():
        _assert_headers_match_astropy(path)


def test_parse_card_value():
    assert parse_card_value("'O''Brien '           / a name") == "O'Brien"
    assert parse_card_value("                   T / flag") is True
    assert parse_card_value("                  42") == 42
    assert parse_card_value("            1.5D-03 / old-style exponent") == 1.5e-3
    assert parse_card_value("              6E-06") == 6e-06
    assert parse_card_value("                     / undefined") is None
    assert parse_card_value("") is None


def test_measure_readers(files):
    timings = measure_readers([files["lite"], files["star_both"], files["apstar3"]], repeat=1)
    assert set(timings) == set(AVAILABLE)
    assert all(0 < seconds < 5 for seconds in timings.values())


def test_bad_arguments(files):
    with pytest.raises(ValueError, match="instrument"):
        list_spectra(files["lite"], "optical")
    with pytest.raises(ValueError, match="unknown FITS backend"):
        read_spectrum(files["lite"], 1, 0, backend="cfitsio")


def test_native_backend_decodes_general_fits_like_astropy(tmp_path):
    """Scaled/unsigned integers, logicals, strings, multi-row images: what real files may hold."""
    path = tmp_path / "general.fits"
    rows = 5
    table = fits.BinTableHDU.from_columns([
        fits.Column("u16", "I", bzero=32768, array=np.array([0, 1, 40000, 65535, 7], dtype=np.uint16)),
        fits.Column("u32", "J", bzero=2**31, array=np.array([0, 1, 3_000_000_000, 4, 5], dtype=np.uint32)),
        fits.Column("scaled", "I", array=np.array([0, 1, 2, -1, 4], dtype=np.int16)),
        fits.Column("flag", "L", array=np.array([True, False, True, True, False])),
        fits.Column("name", "7A", array=np.array(["a", "bb", "ccc", "", "eeeeeee"])),
        fits.Column("vec", "3D", array=np.arange(rows * 3, dtype=float).reshape(rows, 3)),
    ], name="T")
    image = fits.ImageHDU(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    table.header["TSCAL3"], table.header["TZERO3"] = 0.5, 10.0  # physical = 0.5 raw + 10
    fits.HDUList([fits.PrimaryHDU(), table, image]).writeto(path)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul[1].data["scaled"], [10.0, 10.5, 11.0, 9.5, 12.0])
        expected = {name: np.array(hdul[1].data[name]) for name in hdul[1].columns.names}
        expected_image = np.array(hdul[2].data)
    for backend in AVAILABLE:
        with backends.open_fits(path, backend) as handle:
            for name, values in expected.items():
                if backend == "fitsio" and name == "scaled":
                    continue  # fitsio 1.4 mis-decodes TSCAL'd integer columns (none in SDSS spectra)
                column = handle.read_column(1, name)
                if values.dtype.kind in "SU":
                    assert [str(v).strip() for v in column.astype(str)] == [str(v).strip() for v in values]
                else:
                    np.testing.assert_array_equal(column, values, err_msg=f"{backend} {name}")
                row = handle.read_row(1, 3, [name])[name]
                if values.dtype.kind not in "SU":
                    np.testing.assert_array_equal(row, values[3])
            for index in range(3):
                np.testing.assert_array_equal(handle.read_image_row(2, index), expected_image[index])


def test_many_visits_list_row_by_row(tmp_path):
    """A visit table past the whole-read limit: ids come from per-row reads, the same in every backend."""
    path = tmp_path / "mwmVisit-0.8.1-5.fits"
    visits = [dict(STAR, v_r=float(i), seed=i, mjd=60000 + i, catalogid=1000 + i) for i in range(46)]
    synthetic.write_mwm_visit(path, visits, sdss_id=5, catalogid=6)
    with fits.open(path) as hdul:
        assert hdul[1].header["NAXIS1"] * hdul[1].header["NAXIS2"] > native._WHOLE_TABLE_BYTES
    expected = list_spectra(path, "boss", backend="astropy")
    assert [slot.ids["catalogid"] for slot in expected] == [1000 + i for i in range(46)]
    for backend in AVAILABLE:
        assert list_spectra(path, "boss", backend=backend) == expected
    last = read_spectrum(path, 1, 45)
    assert synthetic.read_truth(path, 1, 45)["v_r"] == 45.0 and last.ids["catalogid"] == 1045


# --------------------------------------------------------------------------- gzip
def _assert_same_spectrum(mine, theirs):
    for name in ("wavelength", "flux", "ivar", "error", "bitmask"):
        a, b = getattr(mine, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert (mine.path, mine.hdu, mine.row, mine.instrument, mine.is_visit, mine.ids, mine.meta) == \
        (theirs.path, theirs.hdu, theirs.row, theirs.instrument, theirs.is_visit, theirs.ids, theirs.meta)


def _gzip(source, target):
    target.write_bytes(gzip.compress(source.read_bytes(), compresslevel=1))
    return target


@pytest.fixture(scope="module")
def gz_files(files, tmp_path_factory):
    """Gzipped copies, ``{key: (plain, gzipped)}``; one gzipped file keeps a plain .fits name."""
    folder = tmp_path_factory.mktemp("gz")
    made = {key: (files[key], _gzip(files[key], folder / f"{files[key].name}.gz"))
            for key in ("lite", "visit", "star_apogee", "apstar3")}
    made["misnamed"] = (files["star_both"], _gzip(files["star_both"], folder / "mwmStar-0.8.1-7.fits"))
    return made


@pytest.mark.parametrize("backend", AVAILABLE)
def test_gzipped_files_read_like_plain_ones(gz_files, backend, caplog):
    caplog.set_level(logging.WARNING, logger="workers.readers")
    for plain, packed in gz_files.values():
        assert packed.read_bytes()[:2] == b"\x1f\x8b"
        assert detect_format(packed, backend=backend) == detect_format(plain, backend="astropy")
        for instrument in ("boss", "apogee"):
            try:
                expected = list_spectra(plain, instrument, backend="astropy")
            except SpectrumError:
                with pytest.raises(SpectrumError):
                    list_spectra(packed, instrument, backend=backend)
                continue
            assert list_spectra(packed, instrument, backend=backend) == expected
            for slot in expected:
                _assert_same_spectrum(read_spectrum(packed, slot.hdu, slot.row, rel_path="x", backend=backend),
                                      read_spectrum(plain, slot.hdu, slot.row, rel_path="x", backend="astropy"))
    assert not caplog.records  # read by the backend itself, not rescued by the safety net


def test_gzipped_file_names_still_identify_files(files, tmp_path):
    """The SDSS naming conventions are matched without the .gz suffix."""
    plain = tmp_path / "apStar-1.0-apo25m-2M12283021-6635525.fits"
    with fits.open(files["apstar1"]) as hdul:
        del hdul[0].header["OBJID"]
        hdul.writeto(plain, checksum=True)
    packed = _gzip(plain, tmp_path / "apStar-1.0-apo25m-2M12283021-6635525.fits.gz")
    assert list_spectra(packed, "apogee")[0].ids == {"apogee_id": "2M12283021-6635525"}

    layout_unknown = tmp_path / "apStar-1.0-apo25m-2M00000003+0000003.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("X", "E", array=[1.0])])]
                 ).writeto(layout_unknown)
    assert detect_format(_gzip(layout_unknown, tmp_path / f"{layout_unknown.name}.GZ")) == "apStar"


@pytest.mark.parametrize("backend", AVAILABLE)
def test_bad_gzip_files_are_permanent_errors(files, tmp_path, backend, caplog):
    caplog.set_level(logging.WARNING, logger="workers.readers")
    packed = gzip.compress(files["lite"].read_bytes(), compresslevel=1)
    for fraction in (0.001, 0.5, 0.999):
        cut = tmp_path / f"cut-{fraction}.fits.gz"
        cut.write_bytes(packed[: int(len(packed) * fraction)])
        with pytest.raises(SpectrumError, match="gzip file is truncated") as caught:
            read_spectrum(cut, 1, 0, backend=backend)
        _assert_names_place(caught.value, cut)
        assert not isinstance(caught.value, TransientReadError)
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    (tmp_path / "corrupt.fits.gz").write_bytes(bytes(corrupt))
    with pytest.raises(SpectrumError, match="gzip"):
        list_spectra(tmp_path / "corrupt.fits.gz", "boss", backend=backend)
    (tmp_path / "text.fits.gz").write_bytes(gzip.compress(b"SIMPLE but not really\n"))
    with pytest.raises(SpectrumError, match="not a FITS file"):
        detect_format(tmp_path / "text.fits.gz", backend=backend)
    (tmp_path / "empty.fits.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(SpectrumError, match="empty file"):
        detect_format(tmp_path / "empty.fits.gz", backend=backend)
    assert not caplog.records


def test_gzip_bomb_is_refused(files, tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_MAX_GUNZIPPED_BYTES", 100_000)
    monkeypatch.setattr(native, "_GUNZIP_CHUNK", 30_000)
    packed = _gzip(files["lite"], tmp_path / "big.fits.gz")
    with pytest.raises(SpectrumError, match="decompresses to more than"):
        read_spectrum(packed, 1, 0)


# --------------------------------------------------------------------------- native safety net
def _native_warnings(caplog):
    return [r for r in caplog.records if r.name == "workers.readers" and r.levelno == logging.WARNING]


def _vla_mwm_star(source, target):
    """A valid mwmStar whose flux/ivar are variable-length arrays: astropy reads them, native does not."""
    with fits.open(source) as hdul:
        table = hdul[1]
        columns = []
        for column in table.columns:
            if column.name in ("flux", "ivar"):
                values = np.empty(len(table.data), dtype=object)
                values[:] = [np.asarray(v, dtype=np.float32) for v in table.data[column.name]]
                columns.append(fits.Column(column.name, "PE()", array=values))
            else:
                columns.append(column)
        replaced = fits.BinTableHDU.from_columns(columns, header=table.header)
        hdul[1] = replaced
        hdul.writeto(target, checksum=True)
    return target


def test_safety_net_returns_astropys_reading_and_warns_once(files, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="workers.readers")
    path = _vla_mwm_star(files["star_boss"], tmp_path / "mwmStar-0.8.1-1001.fits")
    with backends.open_fits(path, "native") as handle, pytest.raises(SpectrumError, match="variable-length"):
        handle.read_row(1, 0, ["flux"])  # the native backend really cannot read this file

    expected = read_spectrum(files["star_boss"], 1, 0, rel_path="r", backend="astropy")
    _assert_same_spectrum(read_spectrum(path, 1, 0, rel_path="r", backend="astropy"), expected)
    _assert_same_spectrum(read_spectrum(path, 1, 0, rel_path="r", backend="native"), expected)
    _assert_same_spectrum(read_spectrum(path, 1, 0, rel_path="r"), expected)  # the default: native
    warned = _native_warnings(caplog)
    assert len(warned) == 1  # once per file, however often it is read
    assert str(path) in warned[0].getMessage() and "variable-length array" in warned[0].getMessage()


def test_safety_net_covers_specqs_header_parser(files, monkeypatch, caplog):
    """The second opinion reads the headers with astropy too, so a parser bug is caught as well."""
    caplog.set_level(logging.WARNING, logger="workers.readers")
    path = files["apstar3"]
    expected = read_spectrum(path, 1, 2, backend="astropy")
    slots = list_spectra(path, "apogee", backend="astropy")

    def broken_scan(path, *args):
        raise SpectrumError(f"{path}: simulated native header bug")

    monkeypatch.setattr(native, "scan_headers", broken_scan)
    with pytest.raises(SpectrumError, match="simulated native header bug"):
        read_spectrum(path, 1, 2, backend="astropy")  # only native has the safety net
    _assert_same_spectrum(read_spectrum(path, 1, 2, backend="native"), expected)
    assert list_spectra(path, "apogee", backend="native") == slots
    assert detect_format(path, backend="native") == "apStar"
    warned = _native_warnings(caplog)
    assert len(warned) == 1 and "simulated native header bug" in warned[0].getMessage()


def test_safety_net_keeps_the_native_error_when_astropy_fails_too(files, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="workers.readers")
    calls = []
    real_reference = backends.open_reference

    def counting_reference(path):
        calls.append(path)
        return real_reference(path)

    monkeypatch.setattr(backends, "open_reference", counting_reference)
    bad_loglam = tmp_path / "spec-1-2-4.fits"
    with fits.open(files["lite"]) as hdul:
        hdul[1].data["LOGLAM"][100] = np.nan
        hdul.writeto(bad_loglam, checksum=True)

    def failing_read(self, index, column):
        raise SpectrumError(f"{self.path}: simulated native data bug")

    monkeypatch.setattr(native.NativeFits, "_read_column", failing_read)
    with pytest.raises(SpectrumError, match="simulated native data bug"):
        read_spectrum(bad_loglam, 1, 0)  # astropy says "non-finite": the native message stands
    assert calls == [bad_loglam]
    with pytest.raises(SpectrumError, match="row 5 is out of range"):
        read_spectrum(files["apstar3"], 1, 5)  # an invalid request fails both ways
    assert len(calls) == 2
    assert not _native_warnings(caplog)

    calls.clear()
    with pytest.raises(SpectrumError, match="non-finite"):
        read_spectrum(bad_loglam, 1, 0, backend="astropy")
    assert calls == []  # no second opinion for the other backends

    def crashing_reference(path):
        raise RuntimeError("astropy bug")

    monkeypatch.setattr(backends, "open_reference", crashing_reference)
    with pytest.raises(SpectrumError, match="simulated native data bug"):
        read_spectrum(bad_loglam, 1, 0)  # the fallback never turns a clean error into a crash


def test_safety_net_never_retries_transient_errors(files, monkeypatch):
    def no_reference(path):
        raise AssertionError("a transient error must go back to the queue, not to astropy")

    def io_error(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(backends, "open_reference", no_reference)
    monkeypatch.setattr(native, "scan_headers", io_error)
    with pytest.raises(TransientReadError, match="I/O error"):
        read_spectrum(files["lite"], 1, 0, backend="native")
    with pytest.raises(TransientReadError, match="not found"):
        list_spectra(files["lite"].with_name("missing.fits"), "boss", backend="native")

    # A transient failure of the second opinion itself goes back to the queue too.
    def bad_scan(path, *args):
        raise SpectrumError("simulated native header bug")

    def vanished(path):
        raise TransientReadError(f"{path}: file not found (will retry)")

    monkeypatch.setattr(native, "scan_headers", bad_scan)
    monkeypatch.setattr(backends, "open_reference", vanished)
    with pytest.raises(TransientReadError, match="will retry"):
        read_spectrum(files["lite"], 1, 0, backend="native")


@pytest.mark.filterwarnings("ignore:Error validating header")
@pytest.mark.filterwarnings("ignore:Unexpected extra padding")
def test_trailing_bytes_after_the_last_hdu(files, tmp_path, caplog):
    """Zero padding is fine for every reader; junk is rejected natively but astropy accepts it."""
    caplog.set_level(logging.WARNING, logger="workers.readers")
    expected = read_spectrum(files["apstar1"], 1, 0, rel_path="r", backend="astropy")
    padded = tmp_path / "apStar-1.0-apo25m-2M13593121+6335074.fits"
    padded.write_bytes(files["apstar1"].read_bytes() + b"\0" * 5000)
    for backend in AVAILABLE:
        _assert_same_spectrum(read_spectrum(padded, 1, 0, rel_path="r", backend=backend), expected)
    assert not caplog.records

    junk = tmp_path / "junk" / padded.name
    junk.parent.mkdir()
    junk.write_bytes(files["apstar1"].read_bytes() + b"some junk that is not an extension" * 100)
    with pytest.raises(SpectrumError, match="not a FITS extension"):
        read_spectrum(junk, 1, 0, backend="astropy")
    _assert_same_spectrum(read_spectrum(junk, 1, 0, rel_path="r", backend="native"), expected)
    assert len(_native_warnings(caplog)) == 1


# --------------------------------------------------------------------------- unusual headers
def _replace_card(data: bytes, keyword: bytes, card: str) -> bytes:
    """Overwrite the 80-byte card that starts with ``keyword`` (byte editing, as no writer does it)."""
    start = data.index(keyword.ljust(8) + b"=")
    assert start % 80 == 0
    return data[:start] + card.ljust(80).encode("ascii") + data[start + 80:]


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # about the odd cards, on purpose
def test_unusual_headers_astropy_accepts(files, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="workers.readers")
    path = tmp_path / "mwmStar-0.8.1-1002.fits"
    long_text = "a long note, " * 20 + "the end"
    with fits.open(files["star_apogee"]) as hdul:
        primary = hdul[0].header
        primary["LONGNOTE"] = (long_text, "CONTINUE cards")
        primary["APOGEEID"] = "2M12283021-6635525" + "x" * 70  # a continued value of a card readers use
        primary["HIERARCH SDSS PIPE VERSION"] = "v1.2"
        primary["HIERARCH ESO DET chip"] = 3
        primary["COMMENT"] = "SDSS = a comment that looks like a value"
        primary["HISTORY"] = "written by a test"
        primary.add_blank("a blank card with text")
        primary.add_blank()
        primary["AFTER"] = (1, "a card after the unusual ones")
        hdul[4].header["LONGDESC"] = "x" * 200
        hdul[4].header.add_comment("table comment")
        for hdu in hdul:  # the raw card edits below would make the checksums stale
            hdu.header.remove("CHECKSUM", ignore_missing=True)
            hdu.header.remove("DATASUM", ignore_missing=True)
        hdul.writeto(path)
    data = path.read_bytes()
    assert b"CONTINUE  '" in data and b"HIERARCH " in data
    # Non-standard but accepted by astropy: lower-case keywords, '= ' before column 9.
    data = _replace_card(data, b"K_MAG", "k_mag   =                  7.5 / lower case")
    data = _replace_card(data, b"EBV", "ebv = 0.25")
    path.write_bytes(data)
    with fits.open(path) as hdul:
        assert hdul[0].header["K_MAG"] == 7.5 and hdul[0].header["EBV"] == 0.25
        assert hdul[0].header["LONGNOTE"] == long_text

    _assert_headers_match_astropy(path)
    with backends.open_fits(path, "native") as handle:
        assert handle.header(0)["LONGNOTE"] == long_text
        assert handle.header(0)["APOGEEID"] == "2M12283021-6635525" + "x" * 70
        assert handle.header(0)["esO DET CHIP"] == 3 and "SDSS PIPE VERSION" in handle.header(0)
        assert "SDSS" not in handle.header(0)  # COMMENT text is not a card
    for backend in AVAILABLE:
        spectrum = read_spectrum(path, 4, 0, backend=backend)
        assert spectrum.meta["k_mag"] == 7.5 and spectrum.meta["ebv"] == 0.25
    assert not caplog.records  # the native parser handled it: no rescue needed


def test_header_continue_cards_edge_cases():
    cards = ["STR     = 'abc&'", "CONTINUE  'def&'", "CONTINUE  'ghi'", "ALONE   = 'xyz&'",
             "NUM     =                    5", "CONTINUE  'ignored'", "STR     = 'second'",
             "CONTINUE  'orphan continuation of a duplicate'", "HIERARCH a b = 'c'", "HIERARCH"]
    header = Header([card.ljust(80) for card in cards])
    assert dict(header) == {"STR": "abcdefghi", "ALONE": "xyz&", "NUM": 5, "a b": "c"}
    assert header["A B"] == "c" and header.get("str") == "abcdefghi"


# --------------------------------------------------------------------------- backend choice
def test_backend_argument_and_default(files, monkeypatch):
    def native_only(self, *args):
        raise AssertionError("native backend used")

    monkeypatch.setattr(native.NativeFits, "_read_image_row", native_only)
    assert DEFAULT_BACKEND == "native"
    with pytest.raises(AssertionError, match="native backend used"):
        read_spectrum(files["apstar1"], 1, 0)  # None: the default, native
    assert read_spectrum(files["apstar1"], 1, 0, backend="astropy").flux.size == 8575  # the argument wins


def test_settings_know_the_readers_backends():
    from workers.settings import DEFAULT_FITS_BACKEND, FITS_BACKENDS, Settings

    assert FITS_BACKENDS == BACKENDS and DEFAULT_FITS_BACKEND == DEFAULT_BACKEND == Settings().fits_backend


def test_readers_ignore_the_environment(files, monkeypatch):
    """The backend is a setting (workers.settings), passed on by callers: the readers never read it."""
    monkeypatch.setenv("SPECQ_FITS_BACKEND", "bogus")
    code = ("import sys, workers.readers as r; "
            "print(r.DEFAULT_BACKEND, r.read_spectrum(sys.argv[1], 1, 0).flux.size)")
    done = subprocess.run([sys.executable, "-c", code, str(files["apstar1"])], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["native", "8575"]


@pytest.mark.parametrize("value, expected", [(" Astropy ", "astropy"), ("", "native"), ("fitsio", "fitsio"),
                                             ("bogus", None)])
def test_backend_setting_from_the_environment(value, expected, monkeypatch):
    from workers.settings import load_settings

    monkeypatch.setenv("SPECQ_FITS_BACKEND", value)
    if expected is None:
        with pytest.raises(ValueError, match="fits_backend = 'bogus'.*use one of astropy, fitsio, native"):
            load_settings()
    else:
        assert load_settings().fits_backend == expected


def test_backend_setting_from_specq_toml(tmp_path, monkeypatch):
    from workers.settings import load_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "specq.toml").write_text('[specq]\nfits_backend = "astropy"\n')
    assert load_settings().fits_backend == "astropy"
    monkeypatch.setenv("SPECQ_FITS_BACKEND", "native")  # the environment wins over the file
    assert load_settings().fits_backend == "native"


# --------------------------------------------------------------------------- name and content
def test_name_and_content_that_disagree_are_refused_naming_both(files, tmp_path):
    """An mwmVisit file named mwmStar-… must not be read (nor refused) as either product."""
    misnamed = tmp_path / "mwmStar-0.8.1-99560000.fits"
    shutil.copy(files["visit"], misnamed)
    for backend in AVAILABLE:
        for call in (lambda: detect_format(misnamed, backend=backend),
                     lambda: list_spectra(misnamed, "apogee", backend=backend),
                     lambda: list_spectra(misnamed, "boss", backend=backend),
                     lambda: read_spectrum(misnamed, 1, 0, backend=backend)):
            with pytest.raises(FormatMismatchError) as caught:
                call()
            message = str(caught.value)
            assert str(misnamed) in message
            assert "the file name says mwmStar but the content is mwmVisit" in message
            assert "has the mwmVisit column(s)" in message and "mjd" in message
            assert "not valid input" not in message
    # Other pairs: a spec-lite named like an apStar, an apStar named like a spec-lite.
    lite_as_apstar = tmp_path / "apStar-1.0-apo25m-2M00000001+0000001.fits.gz"
    _gzip(files["lite"], lite_as_apstar)
    with pytest.raises(FormatMismatchError, match="the file name says apStar but the content is spec-lite "
                                                  r"\(HDU 1 is a COADD table\)"):
        list_spectra(lite_as_apstar, "apogee")
    apstar_as_lite = tmp_path / "spec-1-60000-2.fits"
    shutil.copy(files["apstar1"], apstar_as_lite)
    with pytest.raises(FormatMismatchError, match="says spec-lite but the content is apStar"):
        read_spectrum(apstar_as_lite, 1, 0)


def test_name_and_content_mismatch_becomes_a_flagged_row(files, tmp_path):
    """Producer → worker: the file is sent as a file-level reference and ends as one flagged row."""
    from tasks.producer import expand_file
    from workers import engine

    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(files["visit"], root / "mwmStar-0.8.1-99560000.fits")
    expanded = expand_file("mwmStar-0.8.1-99560000.fits", ["astronn_dist"], root, backend="native")
    [ref] = expanded.refs["astronn_dist"]
    assert (ref.path, ref.hdu, ref.row) == ("mwmStar-0.8.1-99560000.fits", None, None)
    assert any("the file name says mwmStar but the content is mwmVisit" in note for note in expanded.notes)
    jobs = engine.read_jobs(ref, root, "apogee", backend="native")
    [row] = engine.run_jobs(engine.unloaded_pipeline("astronn_dist"), jobs)
    assert row["flag_bad"] and row["path"] == "mwmStar-0.8.1-99560000.fits"
    assert "the file name says mwmStar but the content is mwmVisit" in row["error"]


def test_format_table_names_every_format():
    from workers.readers.formats import FORMAT_TABLE

    assert sorted(fmt.name for fmt in FORMAT_TABLE) == sorted(readers.FORMATS)
