"""Property-based tests of specq's own FITS parser: any bytes in, a clear error or a result out.

Random bytes, random FITS-like headers, and valid files damaged on purpose (cut short,
bytes flipped, structural cards such as NAXIS2, TFORMn, BITPIX, PCOUNT set huge, negative
or to garbage, gzipped) go through the native parser and reader and through the readers'
public calls. Whatever the input, only the project's errors may come out
(:class:`~workers.spectrum.SpectrumError` and its subclasses), no call may run long, and
memory stays small: a header claiming 10**12 rows must be refused from the file's size,
not allocated.

The budget is fixed by the ``ci`` Hypothesis profile (tests/conftest.py): derandomized,
so every run tries the same examples. ``HYPOTHESIS_PROFILE=thorough`` searches longer.
"""
from __future__ import annotations

import gzip
import signal
import tracemalloc
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from workers.readers import list_spectra, read_spectrum
from workers.readers.backends import open_fits
from workers.spectrum import SpectrumError

# Per example: far above what the parser needs for these small files (~1 ms .. 50 ms),
# far below what an allocation or a loop sized by a hostile header would take.
SECONDS_PER_EXAMPLE = 10
PEAK_BYTES = 16 << 20
_BUDGET = settings.default.max_examples  # examples per test, from the profile


# --------------------------------------------------------------------------- valid files to damage
def _primary(**cards) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU()
    for key, value in cards.items():
        hdu.header[key] = value
    return hdu


def _spec_lite() -> fits.HDUList:
    rows = 40
    coadd = fits.BinTableHDU.from_columns([
        fits.Column("FLUX", "E", array=np.linspace(1, 2, rows)),
        fits.Column("LOGLAM", "E", array=3.6 + 1e-4 * np.arange(rows)),
        fits.Column("IVAR", "E", array=np.full(rows, 4.0)),
        fits.Column("AND_MASK", "J", array=np.arange(rows)),
    ], name="COADD")
    spall = fits.BinTableHDU.from_columns([
        fits.Column("CATALOGID", "K", array=[27021598150202075]),
        fits.Column("SDSS_ID", "K", array=[103020000]),
        fits.Column("EBV", "E", array=[0.1]),
        fits.Column("TWOMASS_MAG", "3E", array=[[10.0, 9.5, 9.2]]),
        fits.Column("PROGRAM", "8A", array=["mwm"]),
        fits.Column("GOOD", "L", array=[True]),
    ], name="SPALL")
    return fits.HDUList([_primary(FIELDID=1, MJD=60000, RA=10.0, DEC=-5.0), coadd, spall])


def _mwm_table(name: str, rows: int, npix: int, extra: list[fits.Column]) -> fits.BinTableHDU:
    table = fits.BinTableHDU.from_columns([
        fits.Column("spectrum_pk_id", "K", array=np.arange(1, rows + 1)),
        fits.Column("flux", f"{npix}E", array=np.ones((rows, npix))),
        fits.Column("ivar", f"{npix}E", array=np.full((rows, npix), 2.0)),
        fits.Column("pixel_flags", f"{npix}E", array=np.zeros((rows, npix))),
        *extra,
    ], name=name)
    table.header["CRVAL"], table.header["CDELT"], table.header["NPIXELS"] = 3.6, 1e-4, npix
    return table


def _mwm_star() -> fits.HDUList:
    npix = 24
    min_mjd = lambda rows: fits.Column("min_mjd", "J", array=np.full(rows, 60000))  # noqa: E731
    return fits.HDUList([
        _primary(SDSS_ID=7, CAT_ID=8, K_MAG=9.5, EBV=0.2, APOGEEID="2M00000001+0000001"),
        _mwm_table("BOSS/APO", 1, npix, [min_mjd(1)]),
        _mwm_table("BOSS/LCO", 0, npix, [min_mjd(0)]),
        _mwm_table("APOGEE/APO", 2, npix, [min_mjd(2), fits.Column("obj", "18A", array=["2M1", "2M2"])]),
        _mwm_table("APOGEE/LCO", 0, npix, [min_mjd(0)]),
    ])


def _apstar() -> fits.HDUList:
    shape = (3, 24)
    images = [fits.ImageHDU(np.ones(shape, dtype=np.float32), name="FLUX"),
              fits.ImageHDU(np.full(shape, 0.1, dtype=np.float32), name="ERR"),
              fits.ImageHDU(np.arange(72, dtype=np.uint16).reshape(shape), name="MASK")]  # BZERO 32768
    for image in images:
        image.header["CRVAL1"], image.header["CDELT1"] = 4.179, 6e-6
    return fits.HDUList([_primary(NVISITS=1, OBJID="2M00000001+0000001", K=9.0, SFD_EBV=0.1, NWAVE=24),
                         *images])


def _general() -> fits.HDUList:
    """What real files may hold beyond SDSS: a heap (PCOUNT > 0), scaling, bits, complex, TDIM."""
    rows = 4
    varying = np.empty(rows, dtype=object)
    varying[:] = [np.arange(n, dtype=np.float32) for n in (1, 3, 0, 5)]
    table = fits.BinTableHDU.from_columns([
        fits.Column("vla", "PE()", array=varying),
        fits.Column("u16", "I", bzero=32768, array=np.array([0, 1, 40000, 65535], dtype=np.uint16)),
        fits.Column("bits", "12X", array=np.zeros((rows, 12), dtype=bool)),
        fits.Column("z", "C", array=np.arange(rows) + 1j),
        fits.Column("cube", "6D", dim="(3,2)", array=np.arange(rows * 6, dtype=float).reshape(rows, 2, 3)),
    ], name="T")
    table.header["TSCAL2"] = 1
    image = fits.ImageHDU(np.arange(12, dtype=np.int16).reshape(3, 4))
    image.header["BSCALE"], image.header["BZERO"] = 0.5, 10.0
    return fits.HDUList([fits.PrimaryHDU(np.arange(8, dtype=np.uint8)), table, image])


def _to_bytes(hdul: fits.HDUList) -> bytes:
    import io

    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


# name under which a damaged file is written (the readers also look at names) → valid bytes
VALID = {"spec-1-60000-27021598150202075.fits": _to_bytes(_spec_lite()),
         "mwmStar-0.8.1-7.fits": _to_bytes(_mwm_star()),
         "apStar-1.0-apo25m-2M00000001+0000001.fits": _to_bytes(_apstar()),
         "general.fits": _to_bytes(_general())}

# Cards whose values decide sizes, offsets and decoding.
STRUCTURAL = (b"SIMPLE", b"XTENSION", b"BITPIX", b"NAXIS", b"NAXIS1", b"NAXIS2", b"NAXIS3", b"PCOUNT",
              b"GCOUNT", b"TFIELDS", b"THEAP", b"BSCALE", b"BZERO", b"EXTNAME", b"NPIXELS", b"NWAVE",
              b"CRVAL", b"CDELT", b"CRVAL1", b"CDELT1", b"FILETYPE", b"NVISITS")
STRUCTURAL_STEMS = (b"TFORM", b"TDIM", b"TTYPE", b"TSCAL", b"TZERO")


def _card_positions(data: bytes) -> list[int]:
    """Offsets of the value cards worth damaging (structural keywords and column descriptions)."""
    positions = []
    for start in range(0, len(data) - 80 + 1, 80):
        card = data[start:start + 80]
        keyword = card[:8].rstrip()
        if card[8:10] == b"= " and (keyword in STRUCTURAL or keyword.rstrip(b"0123456789") in STRUCTURAL_STEMS):
            positions.append(start)
    return positions


CARD_POSITIONS = {name: _card_positions(data) for name, data in VALID.items()}

# --------------------------------------------------------------------------- strategies
_EDGE_INTEGERS = [0, 1, -1, 2, 3, 8, 16, -32, -64, 7, 999, 1000, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63,
                  -2**63, 10**12, -10**12, 10**30, 10**69]
_TFORM_CODES = "LXBIJKAEDCMPQ"
card_values = st.one_of(
    st.sampled_from(_EDGE_INTEGERS).map(str),
    st.integers(-10**15, 10**15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x).upper()),
    st.builds(lambda n, code, tail: f"'{n}{code}{tail}'", st.sampled_from(["", "0", "1", "2", "24", "99999999999",
                                                                            "1000000000000", "-3"]),
              st.sampled_from(_TFORM_CODES + "ZY"), st.sampled_from(["", "()", "(100)", "(-1)", " junk"])),
    st.sampled_from(["'(3,2)'", "'(0)'", "'(2,3,4)'", "'(a,b)'", "'(99999999999,99999999999)'", "'()'",
                     "'BINTABLE'", "'IMAGE   '", "'TABLE'", "''", "T", "F", "'", "garbage", "", "1.5D300",
                     "(1, 2)", "'COADD'", "'BOSS/APO'", "'mwmVisit'", "'apStar'"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24).map(
        lambda t: "'" + t.replace("'", "''") + "'"),
)


def _card(keyword: str, value: str) -> bytes:
    return f"{keyword:<8}= {value:>20}".ljust(80)[:80].encode("ascii")


@st.composite
def damaged_files(draw) -> tuple[str, bytes]:
    """A valid file with one to three kinds of damage."""
    name = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[name])
    damages = draw(st.lists(st.sampled_from(["card", "card", "truncate", "flip", "splice"]), min_size=1, max_size=3))
    for damage in damages:
        if damage == "card" and CARD_POSITIONS[name]:
            start = draw(st.sampled_from(CARD_POSITIONS[name]))
            if start + 80 <= len(data):  # the keyword as it is now (another damage may have hit it)
                data[start:start + 80] = bytes(data[start:start + 8]) + _card("", draw(card_values))[8:]
        elif damage == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif damage == "flip" and data:
            for _ in range(draw(st.integers(1, 8))):
                position = draw(st.integers(0, len(data) - 1))
                data[position] ^= draw(st.integers(1, 255))
        elif damage == "splice" and data:
            start = draw(st.integers(0, len(data) - 1))
            del data[start:start + draw(st.integers(1, 6000))]
    payload = bytes(data)
    if draw(st.integers(0, 9)) == 0:  # one in ten gzipped: the gzip path reads the same bytes
        payload = gzip.compress(payload, compresslevel=1)
    return name, payload


@st.composite
def fits_like_files(draw) -> bytes:
    """Headers of random cards over a valid skeleton, then data: reaches past the structural checks.

    The random cards come first, so where they name a skeleton keyword they win (the first
    occurrence of a keyword counts); the skeleton fills in the rest.
    """
    hdus = []
    for index in range(draw(st.integers(1, 3))):
        table = index > 0 and draw(st.booleans())
        rows = draw(st.integers(0, 5))
        if index == 0:
            first, skeleton = _card("SIMPLE", "T"), [("BITPIX", "8"), ("NAXIS", "0")]
        elif table:
            first = _card("XTENSION", "'BINTABLE'")
            skeleton = [("BITPIX", "8"), ("NAXIS", "2"), ("NAXIS1", "10"), ("NAXIS2", str(rows)),
                        ("PCOUNT", "0"), ("GCOUNT", "1"), ("TFIELDS", "3"), ("TFORM1", "'E'"),
                        ("TFORM2", "'J'"), ("TFORM3", "'2A'"), ("TTYPE1", "'FLUX'"), ("TTYPE2", "'MJD'"),
                        ("TTYPE3", "'ID'")]
        else:
            first = _card("XTENSION", "'IMAGE   '")
            skeleton = [("BITPIX", "-32"), ("NAXIS", "2"), ("NAXIS1", "3"), ("NAXIS2", str(rows)),
                        ("PCOUNT", "0"), ("GCOUNT", "1")]
        keywords = st.sampled_from(["BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "TFIELDS",
                                    "TFORM1", "TFORM2", "TFORM3", "TTYPE1", "TTYPE2", "TDIM1", "TSCAL1",
                                    "TZERO2", "BSCALE", "BZERO", "EXTNAME", "XTENSION"])
        cards = [first]
        cards += [_card(keyword, value) for keyword, value in draw(st.lists(st.tuples(keywords, card_values),
                                                                            max_size=6))]
        cards += [_card(keyword, value) for keyword, value in skeleton]
        cards.append(b"END".ljust(80))
        header = b"".join(cards)
        header += b" " * (-len(header) % 2880)
        size = 10 * rows if table else (12 * rows if index else 0)
        data = draw(st.binary(min_size=size, max_size=size)) if draw(st.integers(0, 4)) else draw(
            st.binary(max_size=3000))  # mostly the size the skeleton declares, sometimes anything
        hdus.append(header + data + b"\0" * (-len(data) % 2880))
    return b"".join(hdus)


# --------------------------------------------------------------------------- the checks
class Hung(Exception):
    """An example ran past its time: a loop or a read sized by what a header claims."""


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`Hung` in the block after ``seconds`` (a deadline alone cannot stop a loop)."""
    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def bounded_memory(limit: int):
    """Fail when the block's peak of traced allocations (numpy's included) passes ``limit`` bytes."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak / 2**20:.1f} MiB while parsing a small file"


def exercise_native(path: Path) -> int:
    """Every operation of the native file model on every HDU; the number of values read."""
    values = 0
    with open_fits(path, "native") as handle:
        for index in range(handle.hdu_count()):
            header = handle.header(index)
            values += len(dict(header))
            handle.describe(index)
            rows = handle.nrows(index)
            if handle.is_table(index):
                for column in handle.columns(index)[:12]:
                    try:
                        values += handle.read_column(index, column).size
                        if rows:
                            values += len(handle.read_row(index, rows - 1, [column]))
                    except SpectrumError as exc:
                        if "variable-length" not in str(exc):  # a column the native reader refuses
                            raise
            elif handle.is_image(index) and rows:
                values += handle.read_image_row(index, 0).size + handle.read_image_row(index, rows - 1).size
    return values


def exercise_readers(path: Path) -> None:
    """The public calls, as the producer and the worker make them (native, astropy behind it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's second opinion warns about damaged files
        for instrument in ("boss", "apogee"):
            for slot in list_spectra(path, instrument, backend="native"):
                read_spectrum(path, slot.hdu, slot.row, backend="native")


def _only_project_errors(call, path: Path) -> None:
    try:
        call(path)
    except SpectrumError as exc:  # the project's own error, with a message: what a bad file must give
        event(f"refused: {type(exc).__name__}")
    else:
        event("read")  # --hypothesis-show-statistics: how many examples got past the checks


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_valid_files_read_cleanly(folder):
    """The files the other tests damage are read whole (else damage would prove nothing)."""
    for name, data in VALID.items():
        assert exercise_native(_write(folder, name, data)) > 0
        assert CARD_POSITIONS[name]
    exercise_readers(_write(folder, "spec-1-60000-27021598150202075.fits", VALID["spec-1-60000-27021598150202075.fits"]))


@settings(max_examples=_BUDGET, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=6000), st.binary(max_size=6000).map(lambda tail: b"SIMPLE  =" + tail)))
def test_random_bytes(folder, data):
    path = _write(folder, "random.fits", data)
    with time_limit(SECONDS_PER_EXAMPLE), bounded_memory(PEAK_BYTES):
        _only_project_errors(exercise_native, path)


@settings(max_examples=_BUDGET, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=fits_like_files())
def test_fits_like_headers(folder, data):
    path = _write(folder, "fitslike.fits", data)
    with time_limit(SECONDS_PER_EXAMPLE), bounded_memory(PEAK_BYTES):
        _only_project_errors(exercise_native, path)


@settings(max_examples=3 * _BUDGET, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged=damaged_files())
def test_damaged_files_native(folder, damaged):
    name, data = damaged
    path = _write(folder, name, data)
    with time_limit(SECONDS_PER_EXAMPLE), bounded_memory(PEAK_BYTES):
        _only_project_errors(exercise_native, path)


@settings(max_examples=_BUDGET, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged=damaged_files())
def test_damaged_files_through_the_readers(folder, damaged):
    """list_spectra/read_spectrum: native, with astropy's second opinion behind it."""
    name, data = damaged
    path = _write(folder, name, data)
    with time_limit(SECONDS_PER_EXAMPLE):
        _only_project_errors(exercise_readers, path)


def test_a_header_claiming_a_trillion_rows_is_refused_from_the_file_size(folder):
    data = VALID["mwmStar-0.8.1-7.fits"]
    start = next(p for p in CARD_POSITIONS["mwmStar-0.8.1-7.fits"] if data[p:p + 8] == b"NAXIS2  ")
    path = _write(folder, "mwmStar-0.8.1-7.fits", data[:start] + _card("NAXIS2", str(10**12)) + data[start + 80:])
    with bounded_memory(PEAK_BYTES), pytest.raises(SpectrumError, match="truncated: HDU 1 needs"):
        exercise_native(path)
    with pytest.raises(SpectrumError, match="truncated"):
        list_spectra(path, "boss")


def test_a_header_without_end_is_refused_without_holding_the_file(folder, monkeypatch):
    from workers.readers import header

    monkeypatch.setattr(header, "MAX_HEADER_BLOCKS", 3)
    cards = _card("SIMPLE", "T") + b"".join(_card(f"KEY{i}", str(i)) for i in range(200))
    path = _write(folder, "endless.fits", cards + b" " * (-len(cards) % 2880))
    with pytest.raises(SpectrumError, match="the header of HDU 0 has no END card in its first 8,640 bytes"):
        exercise_native(path)


def test_a_header_claiming_a_trillion_visits_costs_no_loop(folder):
    """apStar's NVISITS sizes nothing: the visits' JDn cards are looked up for the rows there are."""
    data = VALID["apStar-1.0-apo25m-2M00000001+0000001.fits"]
    start = data.index(b"NVISITS =")
    path = _write(folder, "apStar-1.0-apo25m-2M00000001+0000001.fits",
                  data[:start] + _card("NVISITS", str(10**12)) + data[start + 80:])
    with time_limit(SECONDS_PER_EXAMPLE):
        spectrum = read_spectrum(path, 1, 0)
    assert spectrum.meta["nvisits"] == 10**12 and spectrum.flux.size == 24
