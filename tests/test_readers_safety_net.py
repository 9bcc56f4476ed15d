"""The native backend's safety net: astropy's reading when the native reader fails, warned once, never on
transient errors."""
from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
from astropy.io import fits

from reader_files import AVAILABLE, assert_same_spectrum
from reader_files import files  # noqa: F401 (a fixture)
from workers.readers import TransientReadError, detect_format, list_spectra, read_spectrum
from workers.readers import backends, native
from workers.spectrum import SpectrumError


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
    assert_same_spectrum(read_spectrum(path, 1, 0, rel_path="r", backend="astropy"), expected)
    assert_same_spectrum(read_spectrum(path, 1, 0, rel_path="r", backend="native"), expected)
    assert_same_spectrum(read_spectrum(path, 1, 0, rel_path="r"), expected)  # the default: native
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
    assert_same_spectrum(read_spectrum(path, 1, 2, backend="native"), expected)
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
        assert_same_spectrum(read_spectrum(padded, 1, 0, rel_path="r", backend=backend), expected)
    assert not caplog.records

    junk = tmp_path / "junk" / padded.name
    junk.parent.mkdir()
    junk.write_bytes(files["apstar1"].read_bytes() + b"some junk that is not an extension" * 100)
    with pytest.raises(SpectrumError, match="not a FITS extension"):
        read_spectrum(junk, 1, 0, backend="astropy")
    assert_same_spectrum(read_spectrum(junk, 1, 0, rel_path="r", backend="native"), expected)
    assert len(_native_warnings(caplog)) == 1
