"""Reading Milky Way Mapper products with every backend: mwmVisit rows and mwmStar coadds."""
from __future__ import annotations

import numpy as np
import pytest

from reader_files import APOGEE_WAVE, AVAILABLE, BOSS_WAVE, table_row
from reader_files import files  # noqa: F401 (a fixture)
from specq.testing import synthetic
from workers.readers import detect_format, list_spectra, read_spectrum


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
    assert pks == [int(table_row(path, s.hdu, s.row, "spectrum_pk_id")) for s in slots]
    assert len(set(pks)) == 3

    for slot, v_r in zip(slots, (10.0, 12.0, 14.0)):
        spectrum = read_spectrum(path, slot.hdu, slot.row, backend=backend)
        assert spectrum.instrument == "boss" and spectrum.is_visit
        np.testing.assert_array_equal(spectrum.flux, table_row(path, slot.hdu, slot.row, "flux"))
        np.testing.assert_array_equal(spectrum.ivar, table_row(path, slot.hdu, slot.row, "ivar"))
        np.testing.assert_allclose(spectrum.wavelength, BOSS_WAVE, rtol=1e-12)
        assert spectrum.ids == slot.ids
        assert spectrum.meta["k_mag"] == 11.147 and spectrum.meta["ebv"] == 0.05 and spectrum.meta["plx"] == 0.5
        assert synthetic.read_truth(path, slot.hdu, slot.row)["v_r"] == v_r


@pytest.mark.parametrize("backend", AVAILABLE)
def test_mwm_visit_apogee_listed_as_visits_for_the_pipeline_to_refuse(files, backend):
    slots = list_spectra(files["visit"], "apogee", backend=backend)
    assert slots and all(slot.is_visit for slot in slots)
    # The row reads; it says it is a visit, and AstroNN (its spec takes coadds only) refuses it.
    spectrum = read_spectrum(files["visit"], slots[0].hdu, slots[0].row, backend=backend)
    from workers import engine

    assert "got a visit spectrum" in engine.unloaded_pipeline("astronn_dist").refuse_reason(spectrum)


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
    np.testing.assert_array_equal(spectrum.flux, table_row(path, 1, 0, "flux"))
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
    ivar = table_row(path, 4, 0, "ivar")
    np.testing.assert_array_equal(spectrum.ivar, ivar)
    good = ivar > 0
    assert (~good).sum() > 1000  # the detector gaps
    np.testing.assert_allclose(spectrum.error[good], ivar[good] ** -0.5, rtol=1e-6)
    assert np.all(np.isinf(spectrum.error[~good]))
    np.testing.assert_array_equal(spectrum.bitmask, table_row(path, 4, 0, "pixel_flags").astype(np.int64))
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
