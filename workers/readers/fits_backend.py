"""The FITS access layer every reader goes through: one file model, three data backends.

A reader never touches astropy or fitsio directly. :func:`open_fits` checks the path,
walks the file's headers itself (fast, exact about truncation, and identical whatever
the backend) and hands back a :class:`FitsFile` whose few methods — headers, one table
row, one column, one image row — behave the same under every backend:

- ``"astropy"``: astropy.io.fits (always installed; the reference);
- ``"fitsio"``: the cfitsio wrapper (optional);
- ``"native"``: reads the bytes at the offsets the headers give, with numpy only.

Gzipped files (recognised by their first two bytes, whatever their name) are
decompressed into memory once when opened; the headers and the native and astropy
backends then work on those bytes (cfitsio decompresses the file itself).

:func:`open_reference` opens a file with astropy for the headers too: the independent
second opinion the package consults when the native backend rejects a file.

:func:`reading` turns what the libraries raise into the two errors the queue understands:

- :class:`~workers.spectrum.SpectrumError` — the file is bad (not FITS, truncated,
  missing HDU or column...): permanent, never retried;
- :class:`TransientReadError` — the file is missing, not readable yet, or the disk
  failed: the queue retries.
"""
from __future__ import annotations

import functools

import errno
import gzip
import importlib.util
import io
import os
import re
import sys
import zlib
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from workers.spectrum import SpectrumError

BACKENDS = ("astropy", "fitsio", "native")

_FITS_BLOCK = 2880
_CARD = 80
# OS errors that retrying cannot cure.
_PERMANENT_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}
# Above this a whole-column read goes row by row instead of reading the whole table.
_WHOLE_TABLE_BYTES = 4 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# A gzipped file is held in memory decompressed: refuse one that inflates past this (a
# corrupt or hostile file must not exhaust a worker; SDSS spectrum files are far smaller).
_MAX_GUNZIPPED_BYTES = 4 << 30
_GUNZIP_CHUNK = 16 << 20


class TransientReadError(Exception):
    """The file could not be read *now* (missing, not readable yet, I/O error): retry later.

    Deliberately not a :class:`~workers.spectrum.SpectrumError`: a bad file is permanent,
    this is not.
    """


@dataclass(frozen=True)
class SpectrumSlot:
    """Where one spectrum lives in a file, and who it belongs to.

    Parameters
    ----------
    hdu, row : int
        HDU index and row (table row or image row) of the spectrum.
    is_visit : bool
        True for a single-visit spectrum, False for a combined one.
    ids : dict
        Known identifiers (``sdss_id``, ``catalogid``, ``spectrum_pk``, ``apogee_id``).
    """

    hdu: int
    row: int
    is_visit: bool
    ids: dict[str, Any] = field(default_factory=dict, hash=False)


def resolve_backend(backend: str | None) -> str:
    """The backend to use: ``backend``, or the package default when None.

    Raises
    ------
    ValueError
        An unknown backend, or fitsio when it is not installed.
    """
    if backend is None:
        from workers.readers import DEFAULT_BACKEND  # late: the package picks the default

        backend = DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"unknown FITS backend {backend!r}: use one of {BACKENDS}")
    if backend == "fitsio" and importlib.util.find_spec("fitsio") is None:
        raise ValueError("FITS backend 'fitsio' needs the fitsio package (pip install 'specq[fitsio]')")
    return backend


def _oserror_to_transient_or_bad(path: Path, exc: OSError, where: str) -> Exception:
    """Classify an OSError: a real OS failure (errno set) is transient, a library's is not."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        what = "file not found" if isinstance(exc, FileNotFoundError) else "permission denied"
        return TransientReadError(f"{path}: {what} (will retry)")
    if exc.errno is not None and exc.errno not in _PERMANENT_ERRNOS:
        return TransientReadError(f"{path}: I/O error {exc.strerror or exc} (will retry)")
    return SpectrumError(f"{path}{where}: not a readable FITS file ({exc})")


def _decoding_errors() -> tuple[type[BaseException], ...]:
    """What the FITS libraries raise on a malformed file (besides OSError)."""
    errors: list[type[BaseException]] = [ValueError, TypeError, KeyError, IndexError,
                                         EOFError, OverflowError]
    # Only astropy raises VerifyError, and only once it is imported: do not import it here.
    verify = sys.modules.get("astropy.io.fits.verify")
    if verify is not None:
        errors.append(verify.VerifyError)
    return tuple(errors)


@contextmanager
def reading(path: str | os.PathLike, where: str = "") -> Iterator[None]:
    """Translate library exceptions raised in the block into SpectrumError / TransientReadError.

    Parameters
    ----------
    path : path-like
        The file, for the message.
    where : str
        Where in the file (e.g. ``", HDU 1 row 0"``), appended to the path in messages.
    """
    path = Path(path)
    try:
        yield
    except (SpectrumError, TransientReadError):
        raise
    except OSError as exc:
        raise _oserror_to_transient_or_bad(path, exc, where) from exc
    except _decoding_errors() as exc:
        raise SpectrumError(f"{path}{where}: malformed FITS file ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- headers
_INTEGER = re.compile(r"[+-]?\d+")


def parse_card_value(text: str) -> Any:
    """The value of a FITS header card from the text after ``= `` (None when undefined).

    Strings lose their quotes and trailing blanks (``''`` is a quote); ``T``/``F`` are
    bools; integers and reals (``E`` or ``D`` exponent) are numbers; complex values and
    anything unreadable give None.
    """
    text = text.lstrip()
    if not text:
        return None
    if text[0] == "'":
        end = text.find("'", 1)
        if end > 0 and text[end + 1:end + 2] != "'":  # the common case: no doubled quote inside
            return text[1:end].rstrip()
        chars, i = [], 1
        while i < len(text):
            if text[i] == "'":
                if text[i + 1:i + 2] == "'":
                    chars.append("'")
                    i += 2
                    continue
                break
            chars.append(text[i])
            i += 1
        return "".join(chars).rstrip()
    value = text.split("/", 1)[0].strip()
    if value in ("T", "F"):
        return value == "T"
    if _INTEGER.fullmatch(value):
        return int(value)
    try:
        return float(value.replace("D", "E").replace("d", "e"))
    except ValueError:
        return None


# Keywords whose cards carry no value (astropy's "special" keywords).
_NO_VALUE_KEYWORDS = {"", "COMMENT", "HISTORY", "END", "CONTINUE"}


def _keyword_and_value(card: str) -> tuple[str, str] | None:
    """Split a value card into (keyword as astropy names it, text after the indicator).

    Follows astropy's leniency so that any header astropy reads parses here too:
    lower-case keywords (upper-cased), ``= `` earlier than column 9, and HIERARCH cards
    (``HIERARCH ESO DET CHIP = 3`` → ``ESO DET CHIP``, case kept as astropy does).
    None for commentary, blank and CONTINUE cards and anything without a value.
    """
    head = card[:8].strip().upper()
    if head in _NO_VALUE_KEYWORDS:
        return None
    if head == "HIERARCH" and card[8:9] == " " and "=" in card:
        name, text = card[9:].split("=", 1)
        name = name.strip()
        return (name, text) if name else None
    indicator = card.find("= ")
    if not 0 <= indicator <= 8:
        return None
    name = card[:indicator].strip().upper()
    if name in _NO_VALUE_KEYWORDS:
        return None
    return name, card[indicator + 2:]


def _join_long_string(first: str, continuations: Iterable[str]) -> str:
    """A long string from its card and its CONTINUE cards (each piece loses a trailing ``&``)."""
    pieces = [first]
    for text in continuations:
        piece = parse_card_value(text)
        if not isinstance(piece, str):
            break  # not a continued string after all: keep what came before, as astropy does
        pieces.append(piece)
    return "".join(piece[:-1] if piece.endswith("&") else piece for piece in pieces)


# A card whose "= " starts before column 9 (a lenient short keyword), read on one line per card.
_EARLY_INDICATOR = re.compile(r"^[^\n]{0,7}= ", re.MULTILINE)


def _plain(cards: list[str]) -> bool:
    """True when no card needs the lenient per-card rules (HIERARCH, CONTINUE, an early "= ")."""
    text = "\n".join(cards)
    return "HIERARCH" not in text and "CONTINUE" not in text and not _EARLY_INDICATOR.search(text)


class Header(Mapping):
    """An HDU's header cards, ``{KEYWORD: value}``; values are parsed when first asked for.

    Keys are looked up case-insensitively and iterate under the names astropy gives them
    (upper case; HIERARCH names as written). The first occurrence of a keyword wins;
    long strings are joined from their CONTINUE cards; commentary cards (COMMENT,
    HISTORY, blank, anything without a value) are left out.
    """

    def __init__(self, cards: Iterable[str] = ()):
        # Parsed on first use: a file's headers are all walked to find its HDUs, but a
        # reader looks into two or three of them.
        self._cards: list[str] | None = list(cards)
        # KEY -> (value text, texts of the CONTINUE cards that follow it)
        self._raw: dict[str, tuple[str, list[str]]] = {}
        self._names: dict[str, str] = {}
        self._parsed: dict[str, Any] = {}

    def _index(self) -> None:
        if self._cards is None:
            return
        cards, self._cards = self._cards, None
        if not cards:  # nothing to index (a header built by from_values has its values already)
            return
        if _plain(cards):
            # Every value card has its "= " in columns 9-10 and nothing needs joining: one
            # pass in comprehensions (first occurrence wins, so build from the end).
            raw = {c[:8].rstrip().upper(): c for c in reversed(cards) if c[8:10] == "= "}
            for key in _NO_VALUE_KEYWORDS.intersection(raw):
                del raw[key]
            self._raw = {key: (card[10:], []) for key, card in reversed(raw.items())}
            self._names = {key: key for key in self._raw}
            return
        current: list[str] | None = None  # the CONTINUE list of the last value card
        for card in cards:
            if card[:8] == "CONTINUE":
                if current is not None:
                    current.append(card[8:])
                continue
            current = None
            split = _keyword_and_value(card)
            if split is None:
                continue
            name, text = split
            key = name.upper()
            if key in self._raw:
                continue
            current = []
            self._raw[key] = (text, current)
            self._names[key] = name

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Header":
        """A header of already-parsed values (e.g. taken from astropy)."""
        header = cls()
        for name, value in values.items():
            key = name.upper()
            if key not in header._names:
                header._names[key] = name
                header._raw[key] = ("", [])
                header._parsed[key] = value
        return header

    def __getitem__(self, keyword: str) -> Any:
        if self._cards is not None:
            self._index()
        key = keyword.upper()
        try:
            return self._parsed[key]
        except KeyError:
            pass
        text, continuations = self._raw[key]
        value = parse_card_value(text)
        if continuations and isinstance(value, str):
            value = _join_long_string(value, continuations)
        self._parsed[key] = value
        return value

    def get(self, keyword: str, default: Any = None) -> Any:
        # Mapping.get, without its extra call layer: readers ask for hundreds of keys a file.
        try:
            return self[keyword]
        except KeyError:
            return default

    def __contains__(self, keyword: object) -> bool:
        self._index()
        return isinstance(keyword, str) and keyword.upper() in self._raw

    def __iter__(self):
        self._index()
        return iter(self._names.values())

    def __len__(self) -> int:
        self._index()
        return len(self._raw)


def expected_data_size(header: Mapping[str, Any]) -> int:
    """Bytes of the HDU's data unit as its header declares them (padding excluded)."""
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 0:
        return 0
    count = 1
    for axis in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{axis}", 0) or 0)
    bytes_per_value = abs(int(header.get("BITPIX", 8) or 8)) // 8
    gcount = int(header.get("GCOUNT", 1) or 1)
    pcount = int(header.get("PCOUNT", 0) or 0)
    return bytes_per_value * gcount * (pcount + count)


@dataclass
class _HduLayout:
    header: Header
    data_start: int
    data_size: int


_STRUCTURAL_PREFIXES = {"BITPI", "NAXIS", "PCOUN", "GCOUN"}


def _scan(path: Path, stream, size: int) -> list[_HduLayout]:
    """Walk every header of the file; SpectrumError for anything that is not whole FITS."""
    if size == 0:
        raise SpectrumError(f"{path}: empty file (0 bytes), not a FITS file")
    hdus: list[_HduLayout] = []
    offset = 0
    while offset < size:
        stream.seek(offset)
        cards: list[str] = []
        position = offset
        while True:
            block = stream.read(_FITS_BLOCK)
            if position == offset and not hdus and not block.startswith(b"SIMPLE  ="):
                raise SpectrumError(f"{path}: not a FITS file (it does not start with 'SIMPLE  =')")
            if position == offset and hdus and not block.startswith(b"XTENSION="):
                if not block.strip(b"\0") and _only_zeros(stream):
                    return hdus  # zero padding after the last HDU: astropy accepts it, so do we
                raise SpectrumError(f"{path}: corrupt file: bytes after HDU {len(hdus) - 1} "
                                    f"are not a FITS extension")
            if len(block) < _FITS_BLOCK:
                raise SpectrumError(f"{path}: file is truncated: the header of HDU {len(hdus)} "
                                    f"ends at byte {position + len(block)}, the file has {size}")
            position += _FITS_BLOCK
            text = block.decode("ascii", "replace")
            block_cards = [text[i:i + _CARD] for i in range(0, _FITS_BLOCK, _CARD)]
            end = next((i for i, card in enumerate(block_cards) if card[:8].rstrip() == "END"), None)
            cards.extend(block_cards if end is None else block_cards[:end])
            if end is not None:
                break
        header = Header(cards)
        # The data size needs only the structural cards: parse just those now.
        data_size = expected_data_size(Header(c for c in cards if c[:5] in _STRUCTURAL_PREFIXES))
        if position + data_size > size:
            raise SpectrumError(f"{path}: file is truncated: HDU {len(hdus)} needs "
                                f"{position + data_size} bytes, the file has {size}")
        hdus.append(_HduLayout(header, position, data_size))
        offset = position + data_size + (-data_size % _FITS_BLOCK)
    return hdus


def _only_zeros(stream) -> bool:
    """Whether the stream holds nothing but NUL bytes from its position on."""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return True
        if chunk.strip(b"\0"):
            return False


def fits_name(path: Path) -> str:
    """The file name without a trailing ``.gz``: what the SDSS naming patterns match."""
    name = path.name
    return name[:-3] if name.lower().endswith(".gz") else name


def _gunzip(path: Path, raw: BinaryIO) -> bytes:
    """The decompressed content of a gzip stream; SpectrumError when it is not whole."""
    chunks: list[bytes] = []
    total = 0
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            # Chunked: read(n) would allocate n bytes up front.
            while chunk := unzipped.read(_GUNZIP_CHUNK):
                total += len(chunk)
                if total > _MAX_GUNZIPPED_BYTES:
                    raise SpectrumError(f"{path}: gzip file decompresses to more than "
                                        f"{_MAX_GUNZIPPED_BYTES >> 20} MiB: refused")
                chunks.append(chunk)
    except EOFError as exc:
        raise SpectrumError(f"{path}: gzip file is truncated ({exc})") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        # Before any OSError handler: BadGzipFile is an OSError, but a permanent one.
        raise SpectrumError(f"{path}: corrupt gzip file ({exc})") from exc
    return b"".join(chunks)


def _open_data(path: Path) -> tuple[BinaryIO, int, bytes | None]:
    """Open ``path`` for reading: (stream, size, decompressed bytes or None).

    A gzip file (by its magic bytes, not its name) is decompressed into memory and the
    stream reads those bytes; any other file is read in place.
    """
    stream = open(path, "rb")
    try:
        compressed = stream.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
        stream.seek(0)
        if not compressed:
            return stream, os.fstat(stream.fileno()).st_size, None
        with stream:
            data = _gunzip(path, stream)
    except BaseException:
        stream.close()  # also on KeyboardInterrupt: no leaked descriptor
        raise
    return io.BytesIO(data), len(data), data


# --------------------------------------------------------------------------- files
_TFORM = re.compile(r"\s*(\d*)([LXBIJKAEDCMPQ])")
_TFORM_DTYPES = {"L": "S1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8",
                 "C": ">c8", "M": ">c16", "P": ">i4", "Q": ">i8"}


def _column_dtype(tform: str, tdim: Any) -> tuple:
    """The numpy (dtype, shape) of one binary-table column from its TFORM/TDIM."""
    match = _TFORM.match(tform or "")
    if not match:
        raise SpectrumError(f"unsupported column format TFORM = {tform!r}")
    repeat = int(match.group(1)) if match.group(1) else 1
    code = match.group(2)
    if code == "A":
        return (f"S{repeat}",)
    if code == "X":
        return ("u1", ((repeat + 7) // 8,))
    if code in "PQ":  # variable-length array descriptor: two integers
        return (_TFORM_DTYPES[code], (2,))
    shape: tuple[int, ...] = (repeat,)
    if isinstance(tdim, str) and tdim.strip().startswith("("):
        dims = tuple(int(d) for d in tdim.strip()[1:-1].split(",") if d.strip())
        if dims and int(np.prod(dims)) == repeat:
            shape = dims[::-1]  # FITS lists the fastest axis first
    if repeat == 1 and tdim is None:
        return (_TFORM_DTYPES[code],)
    return (_TFORM_DTYPES[code], shape)


class FitsFile:
    """An open FITS file: the operations the readers need, whatever the backend.

    Use :func:`open_fits` to get one. Arrays returned are native-endian copies that do
    not refer to the file, so they stay valid after :meth:`close`.

    Attributes
    ----------
    path : Path
    name : str
        The file name less a ``.gz`` suffix (what naming conventions are matched against).
    size : int
        Size in bytes of the FITS data when opened (decompressed, for a gzip file).
    compressed : bool
        Whether the file is gzipped.
    backend : str
    """

    backend = ""

    def __init__(self, path: Path):
        self.path = path
        self.name = fits_name(path)
        self._row_dtypes: dict[int, np.dtype] = {}
        self._columns: dict[int, list[str]] = {}
        self._columns_by_lower: dict[int, dict[str, str]] = {}
        self._stream, self.size, self._memory = _open_data(path)
        self.compressed = self._memory is not None
        try:
            self._layout = self._read_layout()
        except BaseException:
            self.close()  # whatever the layout read opened, too
            raise

    def _read_layout(self) -> list[_HduLayout]:
        """Every HDU's header and data offsets; specq's own parser unless overridden."""
        return _scan(self.path, self._stream, self.size)

    # -- implemented by the data backends ----------------------------------------------
    def _read_row(self, index: int, row: int, columns: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def _read_column(self, index: int, column: str) -> np.ndarray:
        raise NotImplementedError

    def _read_image_row(self, index: int, row: int) -> np.ndarray:
        raise NotImplementedError

    def _close_backend(self) -> None:
        """Release what the backend opened (the headers' stream is closed by close())."""

    # -- shared behaviour -----------------------------------------------------------------
    def close(self) -> None:
        try:
            self._close_backend()
        finally:
            self._stream.close()

    def __enter__(self) -> "FitsFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def hdu_count(self) -> int:
        return len(self._layout)

    def header(self, index: int) -> Header:
        """The header of HDU ``index``."""
        return self._layout[index].header

    def extname(self, index: int) -> str:
        """EXTNAME of HDU ``index`` (``PRIMARY`` for HDU 0 without one, else ``""``)."""
        name = self.header(index).get("EXTNAME")
        if isinstance(name, str) and name.strip():
            return name.strip()
        return "PRIMARY" if index == 0 else ""

    def describe(self, index: int) -> str:
        """``HDU 1 (BOSS/APO)`` — for messages."""
        name = self.extname(index)
        return f"HDU {index} ({name})" if name else f"HDU {index}"

    def is_table(self, index: int) -> bool:
        return self.header(index).get("XTENSION") == "BINTABLE"

    def is_image(self, index: int) -> bool:
        return index == 0 or self.header(index).get("XTENSION") == "IMAGE"

    def nrows(self, index: int) -> int:
        """Table rows, or image rows (1 for a 1-D image, 0 for an empty HDU)."""
        hdr = self.header(index)
        naxis = int(hdr.get("NAXIS", 0) or 0)
        if naxis == 0:
            return 0
        if self.is_table(index) or naxis >= 2:
            return int(hdr.get("NAXIS2", 0) or 0)
        return 1 if int(hdr.get("NAXIS1", 0) or 0) > 0 else 0

    def columns(self, index: int) -> list[str]:
        """Column names of a table HDU as written (TTYPEn)."""
        if index not in self._columns:
            hdr = self.header(index)
            count = int(hdr.get("TFIELDS", 0) or 0)
            self._columns[index] = [str(hdr.get(f"TTYPE{i}", "")).strip() for i in range(1, count + 1)]
        return self._columns[index]

    def find_column(self, index: int, *candidates: str) -> str | None:
        """The first of ``candidates`` present in the table, matched case-insensitively."""
        if index not in self._columns_by_lower:
            self._columns_by_lower[index] = {name.lower(): name for name in self.columns(index)}
        by_lower = self._columns_by_lower[index]
        for candidate in candidates:
            if candidate.lower() in by_lower:
                return by_lower[candidate.lower()]
        return None

    def read_row(self, index: int, row: int, columns: list[str]) -> dict[str, np.ndarray]:
        """One row of a table: ``{column: value}`` for the named (exact) columns."""
        return {name: _native(value) for name, value in self._read_row(index, row, columns).items()}

    def read_column(self, index: int, column: str) -> np.ndarray:
        """A whole (small, scalar) column of a table."""
        return _native(self._read_column(index, column))

    def read_image_row(self, index: int, row: int) -> np.ndarray:
        """Row ``row`` of a 2-D image, or the whole of a 1-D image (``row`` 0)."""
        return _native(self._read_image_row(index, row))

    # -- raw access, for the native backend -------------------------------------------------
    def _bytes(self, offset: int, count: int) -> bytes:
        self._stream.seek(offset)
        data = self._stream.read(count)
        if len(data) != count:
            raise SpectrumError(f"{self.path}: file changed while reading (short read at byte {offset})")
        return data

    def _row_dtype(self, index: int) -> np.dtype:
        if index not in self._row_dtypes:
            hdr = self.header(index)
            fields = []
            for number, name in enumerate(self.columns(index), start=1):
                fields.append((name, *_column_dtype(hdr.get(f"TFORM{number}"), hdr.get(f"TDIM{number}"))))
            dtype = np.dtype(fields)
            if dtype.itemsize != int(hdr.get("NAXIS1", 0) or 0):
                raise SpectrumError(f"{self.path}: {self.describe(index)}: columns add up to "
                                    f"{dtype.itemsize} bytes a row, NAXIS1 says {hdr.get('NAXIS1')}")
            self._row_dtypes[index] = dtype
        return self._row_dtypes[index]

    def _decode_column(self, index: int, column: str, values: np.ndarray) -> np.ndarray:
        """Apply what FITS says about a column's bytes: logicals, TZERO/TSCAL."""
        hdr = self.header(index)
        number = self.columns(index).index(column) + 1
        code = _TFORM.match(hdr.get(f"TFORM{number}") or "").group(2)
        if code == "L":
            return values == b"T"
        if code in "PQ":
            raise SpectrumError(f"{self.path}: {self.describe(index)}: column {column} is a "
                                f"variable-length array, which the native backend does not read")
        return _scaled(values, hdr.get(f"TSCAL{number}"), hdr.get(f"TZERO{number}"))


def _scaled(values: np.ndarray, scale: Any, zero: Any) -> np.ndarray:
    """FITS linear scaling; the unsigned-integer convention gives unsigned integers."""
    scale = 1 if scale is None else scale
    zero = 0 if zero is None else zero
    if scale == 1 and zero == 0:
        return values
    if values.dtype.kind == "i" and scale == 1 and zero == 2 ** (8 * values.dtype.itemsize - 1):
        return (values.astype(values.dtype.newbyteorder("=")).view(f"u{values.dtype.itemsize}")
                ^ np.array(zero, dtype=f"u{values.dtype.itemsize}"))
    return values * float(scale) + float(zero)


def _native(value) -> np.ndarray:
    """A native-endian copy: detached from the file and safe to hand to torch."""
    array = np.array(value)  # copies
    if array.dtype.byteorder not in ("=", "|") and array.dtype.kind not in "SUO":
        array = array.astype(array.dtype.newbyteorder("="))
    return array


class _NativeFits(FitsFile):
    """Reads the bytes the headers point at: one seek and one read per row.

    Plain reads, no memory map, for the reason given in :class:`_AstropyFits`.
    """

    backend = "native"

    def _read_row(self, index, row, columns):
        layout = self._layout[index]
        dtype = self._row_dtype(index)
        record = np.frombuffer(self._bytes(layout.data_start + row * dtype.itemsize, dtype.itemsize), dtype)
        return {name: self._decode_column(index, name, record[name][0]) for name in columns}

    def _read_column(self, index, column):
        layout = self._layout[index]
        dtype = self._row_dtype(index)
        count = self.nrows(index)
        if dtype.itemsize * count <= _WHOLE_TABLE_BYTES:
            table = np.frombuffer(self._bytes(layout.data_start, dtype.itemsize * count), dtype)
            return self._decode_column(index, column, table[column])
        # Wide tables (many visits): read just this column's bytes in each row.
        offset = dtype.fields[column][1]
        field_dtype = dtype.fields[column][0]
        values = [np.frombuffer(self._bytes(layout.data_start + row * dtype.itemsize + offset,
                                            field_dtype.itemsize), field_dtype)[0] for row in range(count)]
        return self._decode_column(index, column, np.array(values, dtype=field_dtype))

    def _read_image_row(self, index, row):
        layout, hdr = self._layout[index], self.header(index)
        bitpix = int(hdr.get("BITPIX"))
        dtype = np.dtype({8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[bitpix])
        width = int(hdr.get("NAXIS1"))
        values = np.frombuffer(self._bytes(layout.data_start + row * width * dtype.itemsize,
                                           width * dtype.itemsize), dtype)
        return _scaled(values, hdr.get("BSCALE"), hdr.get("BZERO"))


class _AstropyFits(FitsFile):
    backend = "astropy"

    def __init__(self, path: Path):
        self._hdul = None  # before the base class reads the layout (a subclass opens it there)
        super().__init__(path)

    def _astropy(self):
        if self._hdul is None:
            from astropy.io import fits

            # memmap off on purpose: every spectrum is copied out anyway, the files are
            # small (one spectrum to a few MB), and a mapping of a file on network storage
            # turns a file replaced or truncated under a worker into SIGBUS instead of an
            # exception. Lazy loading parses only the HDUs up to the one we read.
            # A gzip file is already decompressed in memory: hand astropy those bytes.
            source = self.path if self._memory is None else io.BytesIO(self._memory)
            self._hdul = fits.open(source, memmap=False, lazy_load_hdus=True)
        return self._hdul

    def _read_row(self, index, row, columns):
        data = self._astropy()[index].data
        return {name: data.field(name)[row] for name in columns}

    def _read_column(self, index, column):
        return self._astropy()[index].data.field(column)

    def _read_image_row(self, index, row):
        hdu = self._astropy()[index]
        if int(self.header(index).get("NAXIS", 0)) == 1:
            return hdu.section[:]
        return hdu.section[row]  # reads just that row, even with memmap off

    def _close_backend(self) -> None:
        if self._hdul is not None:
            self._hdul.close()


def _astropy_header(header) -> Header:
    """An astropy header as a :class:`Header`: first occurrences, plain values, no commentary."""
    from astropy.io.fits.verify import VerifyError

    values: dict[str, Any] = {}
    seen: set[str] = set()
    for card in header.cards:
        name = card.keyword.strip()  # astropy keeps a blank in "KEY = 1" (indicator in column 5)
        if name.upper() in _NO_VALUE_KEYWORDS or name.upper() in seen:
            continue
        seen.add(name.upper())
        try:
            value = card.value
        except (VerifyError, ValueError):
            value = None  # a card astropy cannot parse: as if undefined, like ours
        values[name] = value if isinstance(value, (str, bool, int, float)) else None
    return Header.from_values(values)


class _AstropyReference(_AstropyFits):
    """astropy end to end, headers and layout included: independent of specq's parser.

    The second opinion consulted when the native backend rejects a file. It is as
    strict as specq about truncation (every data unit must be whole, and an extension
    header cut short is not taken for trailing junk) but otherwise accepts what astropy
    accepts.
    """

    def _read_layout(self) -> list[_HduLayout]:
        hdul = self._astropy()
        layout: list[_HduLayout] = []
        for index in range(len(hdul)):  # len() parses every header
            header = _astropy_header(hdul[index].header)
            start = int(hdul.fileinfo(index)["datLoc"])
            size = expected_data_size(header)
            if start + size > self.size:
                raise SpectrumError(f"{self.path}: file is truncated: HDU {index} needs "
                                    f"{start + size} bytes, the file has {self.size}")
            layout.append(_HduLayout(header, start, size))
        if not layout:
            raise SpectrumError(f"{self.path}: astropy found no HDU")
        # astropy stops quietly at a header it cannot read: a cut-off extension is truncation.
        end = layout[-1].data_start + layout[-1].data_size
        self._stream.seek(end + (-end % _FITS_BLOCK))
        if self._stream.read(len(b"XTENSION=")) == b"XTENSION=":
            raise SpectrumError(f"{self.path}: file is truncated or corrupt: HDU {len(layout)} "
                                f"cannot be read")
        return layout


class _FitsioFits(FitsFile):
    backend = "fitsio"

    def __init__(self, path: Path):
        self._fits = None  # before the base class reads the layout
        super().__init__(path)

    def _fitsio(self):
        if self._fits is None:
            import fitsio

            # cfitsio recognises and decompresses a gzip file itself.
            self._fits = fitsio.FITS(str(self.path), "r")
        return self._fits

    def _read_row(self, index, row, columns):
        data = self._fitsio()[index].read(rows=[row], columns=list(columns))
        return {name: data[name][0] for name in columns}

    def _read_column(self, index, column):
        return self._fitsio()[index].read_column(column)

    def _read_image_row(self, index, row):
        hdu = self._fitsio()[index]
        if int(self.header(index).get("NAXIS", 0)) == 1:
            return hdu.read()
        return hdu[row:row + 1, :][0]

    def _close_backend(self) -> None:
        if self._fits is not None:
            self._fits.close()


_BACKEND_CLASSES = {"astropy": _AstropyFits, "fitsio": _FitsioFits, "native": _NativeFits}


def open_fits(path: str | os.PathLike, backend: str | None = None) -> FitsFile:
    """Open ``path`` for reading with the named backend (None: the package default).

    Every header is read and checked here: a file that is empty, not FITS, or shorter
    than its headers say fails now, whichever HDU is wanted later.

    Raises
    ------
    TransientReadError
        The file is missing or not readable (yet), or the OS failed to read it.
    SpectrumError
        The file is empty, not FITS, or malformed.
    """
    backend_class = _BACKEND_CLASSES[resolve_backend(backend)]
    path = Path(path)
    with reading(path):
        return backend_class(path)


def open_reference(path: str | os.PathLike) -> FitsFile:
    """Open ``path`` with astropy for the headers as well as the data.

    Unlike :func:`open_fits` with ``"astropy"``, nothing of specq's own header parser is
    used: this is the independent reading the native backend is checked against.

    Raises
    ------
    TransientReadError, SpectrumError
        As :func:`open_fits`.
    """
    path = Path(path)
    with reading(path):
        return _AstropyReference(path)


def header_float(header: Mapping[str, Any], *keys: str) -> float | None:
    """First of ``keys`` holding a finite number (APOGEE's -9999.99 sentinel counts as absent)."""
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if np.isfinite(value) and value > -9999.0:
            return value
    return None


def header_int(header: Mapping[str, Any], *keys: str) -> int | None:
    """First of ``keys`` holding an integer (or an integral string); None when none does."""
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and np.isfinite(value) and value == int(value):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value.strip())
    return None


def header_str(header: Mapping[str, Any], *keys: str) -> str | None:
    """First of ``keys`` holding a non-blank string."""
    for key in keys:
        value = header.get(key)
        if isinstance(value, str) and value.strip() and value.strip().lower() not in ("none", "null"):
            return value.strip()
    return None


def log_lambda_grid(path: Path, where: str, start: float | None, step: float | None,
                    npix: int, crpix: float | None = None) -> np.ndarray:
    """Vacuum wavelengths in Å of a log10-linear grid, validated.

    Parameters
    ----------
    start, step : float or None
        CRVAL (log10 Å at the reference pixel) and CDELT (log10 Å per pixel).
    npix : int
    crpix : float, optional
        1-based reference pixel (FITS convention); default 1.
    """
    if start is None or step is None:
        raise SpectrumError(f"{path}{where}: no wavelength grid (CRVAL/CDELT missing from the header)")
    if not (np.isfinite(start) and np.isfinite(step)) or step <= 0:
        raise SpectrumError(f"{path}{where}: invalid wavelength grid CRVAL={start} CDELT={step}")
    reference = 1.0 if crpix is None else float(crpix)
    # A copy of the cached grid is ~20x cheaper than the power; callers own their arrays.
    return check_wavelength(path, where, _log_lambda_grid(float(start), float(step), int(npix), reference).copy())


@functools.lru_cache(maxsize=64)
def _log_lambda_grid(start: float, step: float, npix: int, reference: float) -> np.ndarray:
    """The grid for these parameters, computed once (every apStar shares one); read-only."""
    wavelength = 10.0 ** (start + step * (np.arange(npix, dtype=np.float64) + 1.0 - reference))
    wavelength.flags.writeable = False
    return wavelength


def check_wavelength(path: Path, where: str, wavelength: np.ndarray) -> np.ndarray:
    """Raise SpectrumError unless the grid is finite, positive and increasing."""
    if wavelength.size == 0:
        raise SpectrumError(f"{path}{where}: empty spectrum (0 pixels)")
    if not np.all(np.isfinite(wavelength)):
        raise SpectrumError(f"{path}{where}: the wavelength grid has non-finite values")
    if wavelength[0] <= 0 or np.any(np.diff(wavelength) <= 0):
        raise SpectrumError(f"{path}{where}: the wavelength grid is not positive and increasing")
    return wavelength


def check_row(handle: FitsFile, index: int, row: int) -> None:
    """Raise SpectrumError unless ``row`` exists in HDU ``index``."""
    count = handle.nrows(index)
    if not 0 <= row < count:
        noun = "row" if count == 1 else "rows"
        raise SpectrumError(
            f"{handle.path}: row {row} is out of range: {handle.describe(index)} has {count} {noun}")


def check_hdu(handle: FitsFile, index: int) -> None:
    """Raise SpectrumError unless HDU ``index`` exists."""
    count = handle.hdu_count()
    if not 0 <= index < count:
        raise SpectrumError(f"{handle.path}: HDU {index} does not exist: the file has {count} HDUs")


def require_columns(handle: FitsFile, index: int, where: str, **wanted: tuple[str, ...]) -> dict[str, str]:
    """Resolve required columns (any case); SpectrumError naming the missing ones.

    Parameters
    ----------
    **wanted
        ``role=(candidate names...)``, e.g. ``flux=("FLUX",)``.

    Returns
    -------
    dict
        ``role -> column name as written in the file``.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    for role, candidates in wanted.items():
        name = handle.find_column(index, *candidates)
        if name is None:
            missing.append("/".join(candidates))
        else:
            found[role] = name
    if missing:
        raise SpectrumError(
            f"{handle.path}{where}: {handle.describe(index)} has no column {', '.join(missing)} "
            f"(columns: {', '.join(handle.columns(index)) or 'none'})")
    return found


def python_scalar(value) -> Any:
    """A numpy scalar/0-d array as a plain Python value (ints, floats, stripped str)."""
    array = np.asarray(value)
    if array.ndim:
        return None
    if array.dtype.kind == "f" and array.dtype.itemsize == 4 and np.isfinite(array):
        # The shortest decimal that is this float32 (0.1789, not 0.17890000343322754).
        return float(str(np.float32(array)))
    item = array.item()
    if isinstance(item, bytes):
        item = item.decode("ascii", "replace")
    if isinstance(item, str):
        item = item.strip()
        return item or None
    return item


# specq's synthetic files carry their true labels: (meta key, file-level card, per-row stem).
_TRUTH_CARDS = (("syn_teff", "SYNTEFF", "SYNTE"), ("syn_logg", "SYNLOGG", "SYNLG"),
                ("syn_fe_h", "SYNFEH", "SYNFE"), ("syn_v_r", "SYNVR", "SYNVR"),
                ("syn_snr", "SYNSNR", "SYNSN"), ("syn_fakemag", "SYNFMAG", "SYNFM"))


def synthetic_truth(primary: Mapping[str, Any], table: Mapping[str, Any] | None = None,
                    row: int | None = None) -> dict[str, Any]:
    """The labels a specq synthetic file was made with; empty for real data.

    File-level cards (``SYNTEFF`` …) sit in the primary header; in multi-row tables each
    row has its own cards in the table header (``SYNTE000``, ``SYNVR003`` …).
    """
    if primary.get("SPECQSYN") is not True:
        return {}
    truth: dict[str, Any] = {"synthetic": True}
    for key, card, stem in _TRUTH_CARDS:
        value = None
        if table is not None and row is not None and row < 1000:
            value = header_float(table, f"{stem}{row:03d}")
        if value is None:
            value = header_float(primary, card)
        if value is not None:
            truth[key] = value
    return truth
