"""Reading BOSS spec-lite files (upper and lower case columns) with every backend."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from reader_files import AVAILABLE, BOSS_WAVE, table_row
from reader_files import files  # noqa: F401 (a fixture)
from specq.testing import synthetic
from workers.readers import SpectrumSlot, detect_format, list_spectra, read_spectrum


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
    loglam = table_row(path, 1, slice(None), "LOGLAM")
    np.testing.assert_array_equal(spectrum.wavelength, 10.0 ** loglam.astype(np.float64))
    np.testing.assert_allclose(spectrum.wavelength, BOSS_WAVE, rtol=2e-6)
    assert spectrum.wavelength.dtype == np.float64 and spectrum.flux.dtype == np.float32
    np.testing.assert_array_equal(spectrum.flux, table_row(path, 1, slice(None), "FLUX"))
    np.testing.assert_array_equal(spectrum.ivar, table_row(path, 1, slice(None), "IVAR"))
    assert spectrum.error is None
    assert spectrum.ids == {"catalogid": 27021598150202075, "sdss_id": 103020000}
    assert spectrum.meta["k_mag"] == 10.5 and spectrum.meta["ebv"] == 0.12
    assert spectrum.meta["field"] == 112360 and spectrum.meta["mjd"] == 60000
    assert "syn_teff" not in spectrum.meta  # production readers know nothing of synthetic files
    assert synthetic.read_truth(path, 1, 0) == {"teff": 5200.0, "logg": 4.4, "fe_h": -0.3, "v_r": 25.0, "snr": 40.0}
    # The flux is what the generator makes, plus noise at the stated S/N.
    model = synthetic.boss_flux(BOSS_WAVE, 5200.0, 4.4, -0.3, 25.0, np.random.default_rng(1))
    np.testing.assert_allclose(table_row(path, 1, slice(None), "MODEL"), model, rtol=1e-6)
    np.testing.assert_allclose(spectrum.ivar * model.astype(np.float32) ** 2, 40.0 ** 2, rtol=1e-4)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_spec_lite_lower_case_columns(files, backend):
    path = files["lite_lower"]
    with fits.open(path) as hdul:
        assert hdul[1].columns.names == ["flux", "loglam", "ivar", "and_mask", "or_mask", "wdisp", "sky", "model"]
    spectrum = read_spectrum(path, 1, 0, backend=backend)
    assert spectrum.path == str(path)
    np.testing.assert_array_equal(spectrum.flux, table_row(path, 1, slice(None), "flux"))
    np.testing.assert_array_equal(spectrum.wavelength, 10.0 ** table_row(path, 1, slice(None), "loglam").astype(float))
    assert spectrum.ids["catalogid"] == 27021598150202076
    assert "sdss_id" not in spectrum.ids  # written as 0: unknown
