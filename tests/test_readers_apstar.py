"""Reading APOGEE apStar files with every backend: single and several visits, DR19 keywords, ids."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from reader_files import APOGEE_WAVE, AVAILABLE, image_data
from reader_files import files  # noqa: F401 (a fixture)
from specq.testing import synthetic
from workers.readers import SpectrumSlot, detect_format, list_spectra, read_spectrum


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
    np.testing.assert_array_equal(spectrum.flux, image_data(path, 1).astype(np.float32))
    np.testing.assert_array_equal(spectrum.error, image_data(path, 2).astype(np.float32))
    np.testing.assert_array_equal(spectrum.bitmask, image_data(path, 3))
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
    np.testing.assert_array_equal(combined.flux, image_data(path, 1)[0].astype(np.float32))
    np.testing.assert_array_equal(combined.error, image_data(path, 2)[0].astype(np.float32))
    np.testing.assert_array_equal(combined.bitmask, image_data(path, 3)[0])
    assert not combined.is_visit and combined.meta["nvisits"] == 3
    visit = read_spectrum(path, 1, 2, backend=backend)
    assert visit.is_visit
    np.testing.assert_array_equal(visit.flux, image_data(path, 1)[2].astype(np.float32))
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


def test_unsummed_reads_stay_whole_after_the_scratch_memory_is_reused(tmp_path):
    """Reads of a file without sums go through the file's scratch memory, which the next file
    reuses: what a read returned is a copy, unchanged by the next file's reads."""
    from workers.readers.backends import open_fits

    first, second = tmp_path / "apStar-1.0-apo25m-2M00000001+0000001.fits", tmp_path / "apStar-1.0-apo25m-2M00000002+0000002.fits"
    for path, seed in ((first, 1), (second, 2)):
        synthetic.write_apstar(path, teff=4500 + 300 * seed, logg=2.5, fe_h=0.0, fakemag=50.0, snr=60.0, seed=seed,
                               nvisits=2)
    with open_fits(first, "native") as handle:
        assert handle._verified_unit(1) is None  # no sums declared: the rows are read alone
        flux, mask = handle.read_image_row(1, 0), handle.read_image_row(3, 0)
        table = handle.read_column(9, handle.columns(9)[1])
        scratch = [np.frombuffer(buffer, np.uint8) for buffer in handle._scratch]
    kept = flux.copy(), mask.copy(), table.copy()
    assert scratch and not any(np.shares_memory(a, s) for a in (flux, mask, table) for s in scratch)
    with open_fits(second, "native") as handle:  # takes the same buffers back
        other = handle.read_image_row(1, 0)
    assert not np.array_equal(other, kept[0])
    for now, then in zip((flux, mask, table), kept):
        np.testing.assert_array_equal(now, then)


def test_an_apstar_file_written_with_sums_is_checked(tmp_path):
    from workers.readers.checksum import ChecksumError

    path = tmp_path / "apStar-1.0-apo25m-2M00000001+0000001.fits"
    synthetic.write_apstar(path, teff=4800, logg=2.5, fe_h=0.0, fakemag=50.0, snr=80.0, seed=3, checksums=True)
    assert read_spectrum(path, 1, 0).flux.size == 8575
    with fits.open(path) as hdul:
        at = hdul[2].fileinfo()["datLoc"] + 1000  # a byte of ERR
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"HDU 2: checksum mismatch"):
        read_spectrum(path, 1, 0)
