"""FITS headers: specq's parser against astropy's, card values, and unusual headers."""
from __future__ import annotations

import logging

import pytest
from astropy.io import fits

from reader_files import AVAILABLE
from reader_files import files  # noqa: F401 (a fixture)
from workers.readers import read_spectrum
from workers.readers import backends
from workers.readers.header import Header, parse_card_value


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


def test_a_missing_or_unreadable_bitpix_is_named_as_such():
    from workers.readers.header import FitsFormatError, Header, expected_data_size

    garbled = Header(("SIMPLE  =                    T".ljust(80), "BITPIX  = \u00e9\u00e9\u00e9".ljust(80),
                      "NAXIS   =                    0".ljust(80)))
    with pytest.raises(FitsFormatError, match="^f.fits: HDU 0: the BITPIX card holds no readable value$"):
        expected_data_size(garbled, "f.fits: HDU 0")
    missing = Header(("SIMPLE  =                    T".ljust(80), "NAXIS   =                    0".ljust(80)))
    with pytest.raises(FitsFormatError, match="^f.fits: HDU 0: the mandatory keyword BITPIX is missing$"):
        expected_data_size(missing, "f.fits: HDU 0")
    with pytest.raises(FitsFormatError, match=r"BITPIX = 12 is not one of \[-64, -32, 8, 16, 32, 64\]"):
        expected_data_size(Header(("BITPIX  =                   12".ljust(80),)), "f.fits: HDU 0")
