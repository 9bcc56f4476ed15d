"""Gzipped spectrum files: read like plain ones, still identified by name, bad ones and gzip bombs refused."""
from __future__ import annotations

import gzip
import logging

import pytest
from astropy.io import fits

from reader_files import AVAILABLE, assert_names_place, assert_same_spectrum, gzip_file
from reader_files import files  # noqa: F401 (a fixture)
from workers.readers import TransientReadError, detect_format, list_spectra, read_spectrum
from workers.readers import native
from workers.spectrum import SpectrumError


# --------------------------------------------------------------------------- gzip
@pytest.fixture(scope="module")
def gz_files(files, tmp_path_factory):
    """Gzipped copies, ``{key: (plain, gzipped)}``; one gzipped file keeps a plain .fits name."""
    folder = tmp_path_factory.mktemp("gz")
    made = {key: (files[key], gzip_file(files[key], folder / f"{files[key].name}.gz"))
            for key in ("lite", "visit", "star_apogee", "apstar3")}
    made["misnamed"] = (files["star_both"], gzip_file(files["star_both"], folder / "mwmStar-0.8.1-7.fits"))
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
                assert_same_spectrum(read_spectrum(packed, slot.hdu, slot.row, rel_path="x", backend=backend),
                                      read_spectrum(plain, slot.hdu, slot.row, rel_path="x", backend="astropy"))
    assert not caplog.records  # read by the backend itself, not rescued by the safety net


def test_gzipped_file_names_still_identify_files(files, tmp_path):
    """The SDSS naming conventions are matched without the .gz suffix."""
    plain = tmp_path / "apStar-1.0-apo25m-2M12283021-6635525.fits"
    with fits.open(files["apstar1"]) as hdul:
        del hdul[0].header["OBJID"]
        hdul.writeto(plain, checksum=True)
    packed = gzip_file(plain, tmp_path / "apStar-1.0-apo25m-2M12283021-6635525.fits.gz")
    assert list_spectra(packed, "apogee")[0].ids == {"apogee_id": "2M12283021-6635525"}

    layout_unknown = tmp_path / "apStar-1.0-apo25m-2M00000003+0000003.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("X", "E", array=[1.0])])]
                 ).writeto(layout_unknown)
    assert detect_format(gzip_file(layout_unknown, tmp_path / f"{layout_unknown.name}.GZ")) == "apStar"


@pytest.mark.parametrize("backend", AVAILABLE)
def test_bad_gzip_files_are_permanent_errors(files, tmp_path, backend, caplog):
    caplog.set_level(logging.WARNING, logger="workers.readers")
    packed = gzip.compress(files["lite"].read_bytes(), compresslevel=1)
    for fraction in (0.001, 0.5, 0.999):
        cut = tmp_path / f"cut-{fraction}.fits.gz"
        cut.write_bytes(packed[: int(len(packed) * fraction)])
        with pytest.raises(SpectrumError, match="gzip file is truncated") as caught:
            read_spectrum(cut, 1, 0, backend=backend)
        assert_names_place(caught.value, cut)
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
    packed = gzip_file(files["lite"], tmp_path / "big.fits.gz")
    with pytest.raises(SpectrumError, match="decompresses to more than"):
        read_spectrum(packed, 1, 0)
