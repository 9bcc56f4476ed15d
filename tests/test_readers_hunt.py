"""Hostile header values and file kinds, each through the public readers: a clear error or a
correct spectrum, never a hang, a large allocation or an exception of another kind."""
from __future__ import annotations

import numpy as np
import pytest

from reader_files import files  # noqa: F401 (a fixture)
from workers.readers import backends, read_spectrum
from workers.readers.common import header_int
from workers.readers.errors import FitsFormatError
from workers.spectrum import SpectrumError


def _set_card(data: bytes, hdu: int, keyword: str, value: str) -> bytes:
    """``data`` with HDU ``hdu``'s card ``keyword`` holding ``value`` (written as is)."""
    starts = [0] + [i for i in range(2880, len(data), 2880) if data[i:i + 9] == b"XTENSION="]
    at = data.index(keyword.ljust(8).encode() + b"= ", starts[hdu])
    return data[:at] + f"{keyword:<8}= {value:>20}".ljust(80).encode() + data[at + 80:]


@pytest.fixture
def reference_calls(monkeypatch):
    """The files handed to astropy's second opinion, which is not run: on these files it
    would not end (its failures are swallowed, so the calls are counted)."""
    calls = []

    def counting(path):
        calls.append(path)
        raise SpectrumError(f"{path}: astropy's reading is not run in this test")

    monkeypatch.setattr(backends, "open_reference", counting)
    return calls


# astropy's own reading of these headers never ends: NAXIS1 = -1 walks back over the file
# and lists HDUs until memory runs out (GBs in a minute); NAXIS = 2**31 - 1 loops over two
# billion axes. The native refusal must be the answer, without asking astropy.
@pytest.mark.parametrize("hdu, keyword, value", [(1, "NAXIS1", "-1"), (0, "NAXIS", "2147483647"),
                                                 (1, "PCOUNT", "-5"), (1, "NAXIS", "1000")])
def test_an_impossible_structural_value_is_refused_without_astropys_second_opinion(
        files, tmp_path, reference_calls, hdu, keyword, value):
    path = tmp_path / files["lite"].name
    path.write_bytes(_set_card(files["lite"].read_bytes(), hdu, keyword, value))
    with pytest.raises(FitsFormatError, match=f"HDU {hdu}: {keyword} = {value} is out of range"):
        read_spectrum(path, 1, 0)
    assert reference_calls == []


def test_an_mwm_table_of_millions_of_tiny_rows_is_refused_before_its_spectra_are_listed(tmp_path):
    """A 3 kB gzipped mwmVisit of 1-byte rows lists 3 million spectra (11 s, 1 GB) unless
    the row count is bounded: every row of an MWM table is one spectrum."""
    from astropy.io import fits

    from workers.readers import list_spectra
    from workers.readers.mwm import MAX_ROWS

    path = tmp_path / "mwmVisit-0.8.1-5.fits"
    rows = MAX_ROWS + 1
    table = fits.BinTableHDU.from_columns([fits.Column("spectrum_pk_id", "B", array=np.ones(rows, np.uint8))],
                                          name="BOSS/APO")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(SpectrumError, match=rf"^{path}: HDU 1 \(BOSS/APO\) has {rows} rows: an MWM table "
                                            rf"holds at most {MAX_ROWS} spectra$"):
        list_spectra(path, "boss")


@pytest.mark.parametrize("garbage", ["--5", "-", "+-3", "12-"])
def test_a_dashed_string_in_an_id_card_is_ignored_like_any_other_non_integer(files, tmp_path, garbage):
    """A string ID card is read as an integer only when it is one: '--5' lost the whole file
    (ValueError from int(), reported as a malformed FITS file)."""
    from astropy.io import fits

    path = tmp_path / files["star_boss"].name
    with fits.open(files["star_boss"]) as hdul:
        hdul[0].header["CAT_ID"] = garbage
        hdul[0].header["GAIA3_ID"] = garbage
        hdul.writeto(path, checksum=True)
    spectrum = read_spectrum(path, 1, 0)
    assert spectrum.ids == read_spectrum(files["star_boss"], 1, 0).ids  # the row's catalogid wins anyway
    assert "gaia_dr3_source_id" not in spectrum.meta
    assert header_int({"K": garbage}, "K") is None
    assert header_int({"K": garbage, "L": " -12 "}, "K", "L") == -12


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_a_gzip_file_is_held_once_in_memory_not_twice(tmp_path):
    """The gunzipped bytes were gathered in chunks and then joined: a peak of twice the
    content (8 GiB for the 4 GiB a gzip file may inflate to, from a few MB on disk)."""
    import gzip
    import tracemalloc

    from workers.readers.completeness import why_incomplete

    size = 64 << 20
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    1",
             f"NAXIS1  = {size - 2880:>20}", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode()
    path = tmp_path / "spec-1-60000-3.fits.gz"
    path.write_bytes(gzip.compress(header + bytes(size - 2880), compresslevel=1))
    tracemalloc.start()
    try:
        assert why_incomplete(path) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * size, f"peak {peak / size:.2f} times the content"

    # A header that claims one block more than there is: the native refusal sends the file to
    # astropy's second opinion, which decompresses it again while the native handle is still
    # referenced (with_file's frame): its content must be gone by then.
    header = header.replace(f"{size - 2880:>20}".encode(), f"{size:>20}".encode())
    path.write_bytes(gzip.compress(header + bytes(size - 2880), compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(FitsFormatError, match="truncated"):
            read_spectrum(path, 1, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * size, f"peak {peak / size:.2f} times the content"


def _empty_hdus(path, count: int):
    """A gzipped file of a primary HDU and ``count`` empty image extensions (a block each)."""
    import gzip

    def header(cards):
        return "".join(card.ljust(80) for card in cards).ljust(2880).encode()

    primary = header(["SIMPLE  =                    T", "BITPIX  =                    8",
                      "NAXIS   =                    0", "END"])
    empty = header(["XTENSION= 'IMAGE   '", "BITPIX  =                    8", "NAXIS   =                    0",
                    "PCOUNT  =                    0", "GCOUNT  =                    1", "END"])
    path.write_bytes(gzip.compress(primary + empty * count))
    return path


def test_a_file_of_hundreds_of_empty_hdus_is_refused_in_linear_time(tmp_path, monkeypatch):
    """astropy's HDUList.fileinfo(i) looks over every HDU (and prints every header): the
    second opinion's layout took minutes for 8000 empty HDUs (a 32 kB gzip file)."""
    from astropy.io.fits import HDUList

    count = 900
    path = _empty_hdus(tmp_path / "unnamed.fits.gz", count)
    looked_over = []
    real = HDUList.__iter__

    def counting(self):
        looked_over.append(1)
        return real(self)

    monkeypatch.setattr(HDUList, "__iter__", counting)
    with pytest.raises(SpectrumError, match="unknown file layout") as caught:
        read_spectrum(path, 1, 0)
    assert len(looked_over) < count  # each HDU's place is asked of that HDU, not of the whole list
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500, message  # not one entry per HDU
    assert f"{count + 1} HDUs" in message


def test_a_file_of_more_hdus_than_any_spectrum_file_is_refused_from_its_headers(tmp_path, reference_calls):
    """A 4 MB gzip file of empty HDUs inflates to over a million of them: the walk stops at
    MAX_HDUS, and astropy is not asked (it would walk them all)."""
    from workers.readers.errors import UnreadableStructureError
    from workers.readers.header import MAX_HDUS

    path = _empty_hdus(tmp_path / "spec-1-60000-3.fits.gz", MAX_HDUS)  # one more than the most, with HDU 0
    with pytest.raises(UnreadableStructureError, match=rf"^{path}: more than {MAX_HDUS} HDUs: not a spectrum file$"):
        read_spectrum(path, 1, 0)
    assert reference_calls == []
    _empty_hdus(path, MAX_HDUS - 1)  # as many as the most: read (and refused for what they hold)
    with pytest.raises(SpectrumError, match="is not a table"):
        read_spectrum(path, 1, 0)
