"""Every way a file can be bad: a clear error naming the place, and which errors are transient."""
from __future__ import annotations

import errno
import logging
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

from reader_files import AVAILABLE, assert_names_place
from reader_files import files  # noqa: F401 (a fixture)
from workers.readers import TransientReadError, detect_format, list_spectra, read_spectrum
from workers.readers import native
from workers.spectrum import SpectrumError


# --------------------------------------------------------------------------- bad files
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
        assert_names_place(caught.value, cut)
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
    assert_names_place(caught.value, path, hdu=1, row=0)


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
        assert_names_place(caught.value, path, hdu=hdu)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_inconsistent_lengths_and_bad_grids(files, tmp_path, backend):
    npixels = tmp_path / "mwmStar-0.8.1-1.fits"
    with fits.open(files["star_boss"]) as hdul:
        hdul[1].header["NPIXELS"] = 4000
        hdul.writeto(npixels, checksum=True)
    with pytest.raises(SpectrumError, match="NPIXELS = 4000") as caught:
        read_spectrum(npixels, 1, 0, backend=backend)
    assert_names_place(caught.value, npixels, hdu=1, row=0)

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
