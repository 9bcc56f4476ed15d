"""The file model every reader uses, and specq's own (native) binary-table and image reader.

:class:`FitsFile` opens a file (decompressing a gzip file in memory), walks its headers
with :func:`~workers.readers.header.scan_headers` and offers the few operations the
format readers need — headers, row counts, column names, one table row, one column, one
image row — whatever the backend. :class:`NativeFits` implements the reads with numpy
alone, at the offsets the headers give; the astropy and fitsio backends are in
:mod:`workers.readers.backends`.

One module on purpose (over 500 lines): the header walk, the table layouts, the checksum
hook and the byte-range checks share one :class:`FitsFile`'s state, and every bound is
checked next to the read it guards.

Every size the native reader acts on is checked first: the structural keywords when the
headers are walked (the data units must fit in the file), the row width against the
columns' TFORMs, and every byte range against the data unit it belongs to. A damaged or
hostile file is a :class:`~workers.readers.errors.FitsFormatError`, never an allocation
or a loop sized by what a header claims. Every backend checks the FITS checksums of what
it reads here, with one check (:mod:`workers.readers.checksum`).

Over 500 lines on purpose: the file model and the native backend share the checks of
every size and offset, which are safest read in one place.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import re
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from workers.readers.checksum import check_hdu
from workers.readers.errors import FitsFormatError, TransientReadError, TruncatedFitsError
from workers.readers.header import MAX_NAXIS, Header, HduLayout, read_from, scan_headers
from workers.spectrum import SpectrumError

__all__ = ["FitsFile", "NativeFits", "SpectrumSlot", "fits_name"]

# Above this a whole-column read goes row by row instead of reading the whole table.
_WHOLE_TABLE_BYTES = 4 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# A gzipped file is held in memory decompressed: refuse one that inflates past this (a
# corrupt or hostile file must not exhaust a worker; SDSS spectrum files are far smaller).
_MAX_GUNZIPPED_BYTES = 4 << 30
_GUNZIP_CHUNK = 1 << 20  # small: each read allocates a buffer this size, even for a tiny file
# numpy's limit on the size of one record (a C int).
_MAX_ROW_BYTES = (1 << 31) - 1
# Data units are read into scratch buffers that each thread reuses from one file to the
# next: new memory for every unit costs more than the read itself (its pages are new).
_SCRATCH = threading.local()
_SCRATCH_MIN = 1 << 20  # the smallest buffer made
_SCRATCH_MAX = 64 << 20  # larger units are read into memory of their own, never kept


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


def fits_name(path: Path) -> str:
    """The file name without a trailing ``.gz``: what the SDSS naming patterns match."""
    name = path.name
    return name[:-3] if name.lower().endswith(".gz") else name


def _gunzip(path: Path, raw: BinaryIO) -> bytes:
    """The decompressed content of a gzip stream; FitsFormatError when it is not whole."""
    # Gathered in one growing buffer whose bytes getvalue() hands over without a copy: a
    # list of chunks joined at the end held the content twice at the peak.
    content = io.BytesIO()
    total = 0
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            # Chunked: read(n) would allocate n bytes up front.
            while chunk := unzipped.read(_GUNZIP_CHUNK):
                total += len(chunk)
                if total > _MAX_GUNZIPPED_BYTES:
                    raise FitsFormatError(f"{path}: gzip file decompresses to more than "
                                          f"{_MAX_GUNZIPPED_BYTES >> 20} MiB: refused")
                content.write(chunk)
    except EOFError as exc:
        raise TruncatedFitsError(f"{path}: gzip file is truncated ({exc})") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        # Before any OSError handler: BadGzipFile is an OSError, but a permanent one.
        raise FitsFormatError(f"{path}: corrupt gzip file ({exc})") from exc
    return content.getvalue()


def _open_data(path: Path) -> tuple[BinaryIO, int, bytes | None]:
    """Open ``path`` for reading: (stream, size, decompressed bytes or None).

    A gzip file (by its magic bytes, not its name) is decompressed into memory and the
    stream reads those bytes; any other file is read in place.
    """
    # Unbuffered: the reads are positioned (preadv) and sized by the FITS layout, so a
    # buffer would only be filled and thrown away. A remote file's own stream reads by ranges.
    stream = path.open("rb", buffering=0)
    try:
        descriptor = _descriptor(stream)
        if descriptor is not None:
            # At an offset, straight from the file: a buffered read would take 8 kB to give 2.
            compressed = os.pread(descriptor, len(_GZIP_MAGIC), 0) == _GZIP_MAGIC
        else:
            compressed = stream.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
        if not compressed:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(0)
            return stream, size, None
        stream.seek(0)
        with stream:
            data = _gunzip(path, stream)
    except BaseException:
        stream.close()  # also on KeyboardInterrupt: no leaked descriptor
        raise
    return io.BytesIO(data), len(data), data


# --------------------------------------------------------------------------- columns
_TFORM = re.compile(r"\s*(\d*)([LXBIJKAEDCMPQ])")
_TFORM_DTYPES = {"L": "S1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8",
                 "C": ">c8", "M": ">c16", "P": ">i4", "Q": ">i8"}
# An image's element type by its BITPIX.
_IMAGE_DTYPES = {bitpix: np.dtype(code) for bitpix, code in
                 ((8, "u1"), (16, ">i2"), (32, ">i4"), (64, ">i8"), (-32, ">f4"), (-64, ">f8"))}
_TDIM = re.compile(r"\(\s*\d+(\s*,\s*\d+)*\s*\)")


@dataclass(frozen=True)
class _Column:
    """One binary-table column as TFORMn/TDIMn/TSCALn/TZEROn declare it."""

    code: str  # the TFORM data-type letter
    base: str  # numpy type of one element
    shape: tuple[int, ...]  # elements per row ((), one scalar)
    width: int  # bytes per row
    scale: float | int
    zero: float | int

    def dtype(self) -> tuple:
        """The field's numpy (dtype[, shape]), for a record dtype."""
        return (self.base, self.shape) if self.shape else (self.base,)


def _column(header: Header, number: int, where: str) -> _Column:
    """Column ``number`` (1-based) of a table header; FitsFormatError for a format specq cannot lay out."""
    tform = header.get(f"TFORM{number}")
    match = _TFORM.match(tform) if isinstance(tform, str) else None
    if not match:
        raise FitsFormatError(f"{where}: unsupported column format TFORM{number} = {tform!r}")
    repeat = int(match.group(1)) if match.group(1) else 1
    code = match.group(2)
    scale, zero = _scaling(header, f"TSCAL{number}", f"TZERO{number}", where)
    if code == "A":
        return _Column(code, f"S{repeat}", (), repeat, scale, zero)
    if code == "X":
        size = (repeat + 7) // 8
        return _Column(code, "u1", (size,), size, scale, zero)
    if code in "PQ":  # variable-length array descriptor: two integers
        base = _TFORM_DTYPES[code]
        return _Column(code, base, (2,), 2 * np.dtype(base).itemsize, scale, zero)
    base = _TFORM_DTYPES[code]
    width = repeat * np.dtype(base).itemsize
    tdim = header.get(f"TDIM{number}")
    shape: tuple[int, ...] = (repeat,)
    if isinstance(tdim, str) and _TDIM.fullmatch(tdim.strip()):
        dims = tuple(int(d) for d in tdim.strip()[1:-1].split(","))
        if math.prod(dims) == repeat:
            shape = dims[::-1]  # FITS lists the fastest axis first
    if repeat == 1 and tdim is None:
        shape = ()
    return _Column(code, base, shape, width, scale, zero)


def _scaling(header: Header, scale_key: str, zero_key: str, where: str | Callable[[], str]
             ) -> tuple[float | int, float | int]:
    """A column's or image's (scale, zero); FitsFormatError when either is not a number.

    ``where`` names the HDU in the message: a callable is called only for one.
    """
    values = []
    for key, default in ((scale_key, 1), (zero_key, 0)):
        value = header.get(key)
        if value is None:
            value = default
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FitsFormatError(f"{where() if callable(where) else where}: {key} = {value!r} is not a number")
        values.append(value)
    return values[0], values[1]


def _scaled(values: np.ndarray, scale: float | int, zero: float | int) -> np.ndarray:
    """FITS linear scaling; the unsigned-integer convention gives unsigned integers."""
    if (scale == 1 and zero == 0) or values.dtype.kind not in "iufc":
        return values
    if values.dtype.kind == "i" and scale == 1 and zero == 2 ** (8 * values.dtype.itemsize - 1):
        return (values.astype(values.dtype.newbyteorder("=")).view(f"u{values.dtype.itemsize}")
                ^ np.array(zero, dtype=f"u{values.dtype.itemsize}"))
    with np.errstate(over="ignore", invalid="ignore"):  # a silly TSCAL makes inf, as in astropy
        return values * float(scale) + float(zero)


def _native(value, dtype: Any = None) -> np.ndarray:
    """A native-endian copy: detached from the file and safe to hand to torch.

    With ``dtype``, the copy is of that type, converted on the way (the same values as a
    native copy converted afterwards, without the second copy).
    """
    if dtype is not None:
        return np.asarray(value).astype(dtype)  # astype copies, always
    if isinstance(value, np.ndarray) and value.dtype.byteorder not in ("=", "|") and value.dtype.kind not in "SUO":
        return value.astype(value.dtype.newbyteorder("="))  # one copy, swapped on the way
    array = np.array(value)  # copies
    if array.dtype.byteorder not in ("=", "|") and array.dtype.kind not in "SUO":
        array = array.astype(array.dtype.newbyteorder("="))
    return array


# Column layouts already parsed, by what the column cards say (see Header.cards_key):
# the files of one SDSS product share them, and a wide table (spec-lite's SPALL, ~80
# columns) then costs one lookup instead of hundreds of card parses. Never mutated.
_LAYOUT_PREFIXES = ("TTYPE", "TFORM", "TDIM", "TSCAL", "TZERO", "TFIELDS")
_NAMES: dict[tuple, "_ColumnNames"] = {}
_COLUMNS: dict[tuple, tuple[list[_Column], int]] = {}  # the columns and the row width they add up to
_DTYPES: dict[tuple, np.dtype] = {}
_LAYOUTS_KEPT = 256  # layouts per cache (a worker reads a handful of products)


def _remember(cache: dict, key: tuple, value) -> None:
    if len(cache) >= _LAYOUTS_KEPT:
        cache.clear()
    cache[key] = value


@dataclass(frozen=True)
class _ColumnNames:
    """A table's column names (TTYPEn) as written, and the two ways readers look them up."""

    names: list[str]
    by_lower: dict[str, str]  # lower case -> the first column of that name in any case
    positions: dict[str, int]  # exact name -> the 0-based position of its first column
    lowered: frozenset[str]  # every name in lower case

    @classmethod
    def of(cls, names: list[str]) -> "_ColumnNames":
        by_lower: dict[str, str] = {}
        positions: dict[str, int] = {}
        for position, name in enumerate(names):
            by_lower.setdefault(name.lower(), name)
            positions.setdefault(name, position)
        return cls(names, by_lower, positions, frozenset(by_lower))


# --------------------------------------------------------------------------- files
class _Structure:
    """What a file's headers say, filled in as the readers ask: its HDUs, and per HDU its
    name, kind, axes, rows and table layout (see :meth:`FitsFile._structure`)."""

    __slots__ = ("layout", "tables", "columns", "layout_keys", "extnames", "xtensions", "axes", "rows",
                 "row_dtypes", "images", "notes", "verified")

    def __init__(self, layout: list[HduLayout]):
        self.layout = layout
        self.tables: dict[int, list[_Column]] = {}
        self.columns: dict[int, _ColumnNames] = {}
        self.layout_keys: dict[int, tuple | None] = {}
        self.extnames: dict[int, str] = {}
        self.xtensions: dict[int, Any] = {}
        self.axes: dict[tuple[int, str], int] = {}
        self.rows: dict[int, int] = {}
        self.row_dtypes: dict[int, np.dtype] = {}
        self.images: dict[int, tuple] = {}  # see NativeFits._image
        self.notes: dict[str, Any] = {}
        self.verified: dict[int, int] = {}  # HDU -> when its sums checked out (ns), in this version of a settled file


# The structures of the last files a thread opened, by file version: a file that holds many
# spectra (mwmVisit) is opened once per spectrum, one after another, and its headers are
# walked and parsed once. Per thread, as the parsing fills them in without locks.
_STRUCTURES = threading.local()
_STRUCTURES_KEPT = 4
# A file last changed (its ctime) longer ago than this is settled: a later write would give
# it a ctime of its own, even on a file system that keeps times to 2 s (FAT), so a version
# whose sums checked out once need not be summed again for another of its spectra read
# soon after (for _VERIFIED_FOR_NS).
_SETTLED_NS = 3_000_000_000
_VERIFIED_FOR_NS = 60_000_000_000


def settled_at(path: str | os.PathLike) -> float:
    """When (seconds since the epoch) the file as it is now counts as settled: from then on an
    HDU whose sums checked out is not summed again for its other spectra (see :class:`FitsFile`)."""
    return (os.stat(path).st_ctime_ns + _SETTLED_NS) / 1e9


def _same_headers(stream: BinaryIO, layout: list[HduLayout]) -> bool:
    """Whether the file still holds each HDU's header as ``layout`` has it, byte for byte."""
    descriptor = stream.fileno()
    for hdu in layout:
        stored = hdu.header_bytes
        if not stored or os.pread(descriptor, len(stored), hdu.data_start - len(stored)) != stored:
            return False
    return True


def _descriptor(stream: BinaryIO) -> int | None:
    """The OS file descriptor to read ``stream`` at offsets from (None: it has none, as a
    remote file's stream)."""
    if not hasattr(os, "preadv"):
        return None
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _file_identity(path: Path, stream: BinaryIO) -> tuple | None:
    """The version of an open local file (None: not one): its name, inode, size and times."""
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (io.UnsupportedOperation is both)
        return None
    if not hasattr(os, "pread"):
        return None
    return (str(path), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


class FitsFile:
    """An open FITS file: the operations the readers need, whatever the backend.

    Use :func:`workers.readers.backends.open_fits` to get one. Arrays returned are
    native-endian copies that do not refer to the file, so they stay valid after
    :meth:`close`.

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

    Parameters
    ----------
    path : Path
    verify : bool, optional
        Check the FITS checksums of the HDUs read; None: as
        :func:`workers.settings.verify_checksums` says (the default: on).

    With checksums verified, the first read from an HDU whose header has ``DATASUM`` or
    ``CHECKSUM``, whatever the backend, reads its whole data unit once and checks the sums
    over those bytes (and HDU 0's, whose header the readers use too): a mismatch is the
    same :class:`~workers.readers.checksum.ChecksumError`, naming the HDU and both sums,
    from every backend. Where a thread keeps a file's structure (the native backend, a local
    file) and the file was last changed over 3 s before it was opened, an HDU whose sums
    checked out is not summed again for a spectrum read from that version of the file in
    the next minute: an mwmVisit file's data unit is summed once, not once per visit.
    """

    backend = ""
    _shares_structure = False  # whether handles of one file version share what its headers say

    def __init__(self, path: Path, verify: bool | None = None):
        from workers.settings import verify_checksums

        self._verify = verify_checksums() if verify is None else verify
        self._units: dict[int, memoryview | None] = {}  # verified data units (None: no sums declared)
        self._scratch: list[bytearray] = []  # this file's scratch buffers, the one in use last
        self._scratch_used = 0  # bytes of the last one the units read so far hold
        self.data_reads = 0  # reads of HDU data so far (rows, columns, image rows)
        self.path = path
        self.name = fits_name(path)
        self._stream, self.size, self._memory = _open_data(path)
        self.compressed = self._memory is not None
        self._descriptor = _descriptor(self._stream) if self._memory is None else None
        self._settled = False  # set by _structure for a local file whose version can be kept
        self._identity: tuple | None = None
        self._opened_ns = 0
        self._unsummed: set[int] = set()  # HDUs read without summing: checked in this version before
        try:
            structure = self._structure()
        except BaseException:
            self.close()  # whatever the layout read opened, too
            raise
        self._structure_kept = structure
        self._layout = structure.layout
        self._tables = structure.tables
        self._columns = structure.columns
        self._layout_keys = structure.layout_keys
        self._extnames = structure.extnames
        self._xtensions = structure.xtensions
        self._axes = structure.axes
        self._rows = structure.rows

    def _structure(self) -> "_Structure":
        """This file's structure: the one kept for it while its headers are still those it was
        worked out from (each compared byte for byte), else its headers walked."""
        self._opened_ns = time.time_ns()  # before the file's times are read: a write in between is never settled
        identity = _file_identity(self.path, self._stream) if self._shares_structure and self._memory is None else None
        self._identity = identity
        self._settled = identity is not None and self._opened_ns - identity[-1] > _SETTLED_NS
        kept = getattr(_STRUCTURES, "kept", None)
        if identity is not None and kept is not None and identity in kept:
            structure = kept.pop(identity)
            if _same_headers(self._stream, structure.layout):
                kept[identity] = structure
                return structure
        structure = _Structure(self._read_layout())
        # Kept where the walk read nothing but headers: the HDUs end at the end of the file.
        last = structure.layout[-1]
        if identity is not None and last.data_start + last.data_size + (-last.data_size % 2880) >= self.size:
            if kept is None:
                kept = _STRUCTURES.kept = OrderedDict()
            kept[identity] = structure
            while len(kept) > _STRUCTURES_KEPT:
                kept.popitem(last=False)
        return structure

    def kept(self, key: str) -> Any:
        """What :meth:`keep` kept under ``key`` for this file (None: nothing)."""
        return self._structure_kept.notes.get(key)

    def keep(self, key: str, value: Any) -> None:
        """Keep ``value``, worked out from this file's headers and name alone (no data read),
        for the next readers of this version of the file."""
        self._structure_kept.notes[key] = value

    def _read_layout(self) -> list[HduLayout]:
        """Every HDU's header and data offsets; specq's own parser unless overridden."""
        return scan_headers(self.path, self._stream, self.size)

    # -- implemented by the data backends ----------------------------------------------
    def _read_row(self, index: int, row: int, columns: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def _read_column(self, index: int, column: str) -> np.ndarray:
        raise NotImplementedError

    def _read_image_row(self, index: int, row: int) -> np.ndarray:
        raise NotImplementedError

    def _close_backend(self) -> None:
        """Release what the backend opened (the headers' stream is closed by close())."""

    # -- checksums ------------------------------------------------------------------------
    def _scratch_view(self, count: int) -> memoryview:
        """``count`` bytes of scratch memory for this file's units (valid until close)."""
        if not self._scratch or self._scratch_used + count > len(self._scratch[-1]):
            kept = getattr(_SCRATCH, "buffers", [])
            fits = [buffer for buffer in kept if len(buffer) >= count]
            buffer = fits[0] if fits else bytearray(max(count, _SCRATCH_MIN))
            if fits:
                kept.remove(buffer)
            self._scratch.append(buffer)
            self._scratch_used = 0
        start = self._scratch_used
        self._scratch_used += count
        return memoryview(self._scratch[-1])[start:start + count]

    def _return_scratch(self) -> None:
        # The units are views of the scratch buffers: dropped before the buffers go back.
        self._units.clear()
        buffers, self._scratch = self._scratch, []
        if buffers:
            kept = getattr(_SCRATCH, "buffers", [])
            _SCRATCH.buffers = sorted(kept + buffers, key=len, reverse=True)[:2]  # the largest two

    def _read_at(self, start: int, count: int) -> memoryview:
        """``count`` bytes of the file (or of the decompressed bytes) at ``start``.

        A view of this file's scratch memory (valid until :meth:`close`), of the decompressed
        bytes of a gzip file, or, for a unit too large to keep a buffer for, of its own memory.
        """
        if not count:  # an empty table's unit: no buffer taken for it
            return memoryview(b"")
        if self._memory is not None:
            return memoryview(self._memory)[start:start + count]
        descriptor = self._descriptor
        if count > _SCRATCH_MAX:
            data = memoryview(read_from(self._stream, start, count))
            got = len(data)
        else:
            data = self._scratch_view(count)
            if descriptor is None:
                self._stream.seek(start)
            got = 0
            while got < count:
                # Straight into the scratch memory at the offset: no seek, no stream buffer.
                read = (os.preadv(descriptor, [data[got:]], start + got) if descriptor is not None
                        else self._stream.readinto(data[got:]))
                if not read:
                    break
                got += read
        if got != count:
            raise SpectrumError(f"{self.path}: file changed while reading (short read at byte {start})")
        return data

    def _header_start(self, index: int) -> int:
        if index == 0:
            return 0
        before = self._layout[index - 1]
        return before.data_start + before.data_size + (-before.data_size % 2880)

    def _verified_unit(self, index: int) -> memoryview | None:
        """HDU ``index``'s data unit once its sums check out; None when it declares none.

        Raises
        ------
        ChecksumError
            The HDU (or HDU 0) does not add up.
        """
        if index not in self._units:
            if index != 0 and 0 not in self._units:
                self._verified_unit(0)
            layout = self._layout[index]
            header = layout.header
            checked = self._structure_kept.verified.get(index)
            if checked is not None and self._opened_ns - checked < _VERIFIED_FOR_NS:
                self._units[index] = None  # checked in this version before: read as a unit without sums
                self._unsummed.add(index)
            elif header.get("DATASUM") is None and header.get("CHECKSUM") is None:
                self._units[index] = None
            else:
                head = b""
                if header.get("CHECKSUM"):
                    head = layout.header_bytes  # the header as the walk read it
                    if not head:
                        start = self._header_start(index)
                        head = self._read_at(start, layout.data_start - start)
                data = self._read_at(layout.data_start, layout.data_size)
                check_hdu(lambda: f"{self.path}: {self.describe(index)}", header, head, data)
                self._units[index] = data
                if self._settled:
                    self._structure_kept.verified[index] = self._opened_ns
        return self._units[index]

    def _check_unchanged(self, index: int) -> None:
        """After a read from an HDU not summed here: the file is still the version that was checked.

        Raises
        ------
        TransientReadError
            It changed since it was opened (written again): read it again later, and sum it then.
        """
        if index in self._unsummed and _file_identity(self.path, self._stream) != self._identity:
            raise TransientReadError(f"{self.path}: the file changed while it was read")

    def _check_sums(self, index: int) -> None:
        """Check HDU ``index``'s sums before the backend reads from it (when verifying)."""
        if self._verify:
            self._verified_unit(index)

    # -- shared behaviour -----------------------------------------------------------------
    def close(self) -> None:
        try:
            self._close_backend()
        finally:
            self._return_scratch()
            self._stream.close()
            # A gzip file's content (up to 4 GiB) goes now, not with the handle: a caller's
            # frame or a traceback may keep the handle while astropy's second opinion
            # decompresses the file again.
            self._memory = None

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
        name = self._extnames.get(index)
        if name is None:
            name = self.header(index).get("EXTNAME")
            if isinstance(name, str) and name.strip():
                name = name.strip()
            else:
                name = "PRIMARY" if index == 0 else ""
            self._extnames[index] = name
        return name

    def describe(self, index: int) -> str:
        """``HDU 1 (BOSS/APO)`` — for messages."""
        name = self.extname(index)
        return f"HDU {index} ({name})" if name else f"HDU {index}"

    def _xtension(self, index: int) -> Any:
        try:
            return self._xtensions[index]
        except KeyError:
            value = self._xtensions[index] = self.header(index).get("XTENSION")
            return value

    def is_table(self, index: int) -> bool:
        return self._xtension(index) == "BINTABLE"

    def is_image(self, index: int) -> bool:
        return index == 0 or self._xtension(index) == "IMAGE"

    def _axis(self, index: int, keyword: str) -> int:
        """A structural integer the header walk has already validated (0 when absent)."""
        try:
            return self._axes[index, keyword]
        except KeyError:
            value = self.header(index).get(keyword)
            value = self._axes[index, keyword] = value if isinstance(value, int) and not isinstance(value, bool) else 0
            return value

    def nrows(self, index: int) -> int:
        """Table rows, or image rows (1 for a 1-D image, 0 for an empty HDU).

        Raises
        ------
        FitsFormatError
            A table that is not 2-D, or whose rows are 0 bytes wide but counted (a row
            count no data backs).
        """
        try:
            return self._rows[index]
        except KeyError:
            rows = self._rows[index] = self._count_rows(index)  # kept only when it did not raise
            return rows

    def _count_rows(self, index: int) -> int:
        naxis = self._axis(index, "NAXIS")
        if self.is_table(index):
            if naxis != 2:
                raise FitsFormatError(f"{self.path}: {self.describe(index)} is a binary table "
                                      f"with NAXIS = {naxis}, not 2")
            rows = self._axis(index, "NAXIS2")
            if rows and not self._axis(index, "NAXIS1"):
                raise FitsFormatError(f"{self.path}: {self.describe(index)} claims {rows} rows "
                                      f"of 0 bytes")
            return rows
        if naxis == 0:
            return 0
        if naxis >= 2:
            return self._axis(index, "NAXIS2")
        return 1 if self._axis(index, "NAXIS1") > 0 else 0

    def _layout_key(self, index: int) -> tuple | None:
        """What a table's column cards say, as a key of the layouts already parsed (None: not cached)."""
        if index not in self._layout_keys:
            table = self.is_table(index)
            self._layout_keys[index] = self.header(index).cards_key(_LAYOUT_PREFIXES) if table else None
        return self._layout_keys[index]

    def _names(self, index: int) -> _ColumnNames:
        try:
            return self._columns[index]
        except KeyError:
            pass
        key = self._layout_key(index)
        known = _NAMES.get(key) if key is not None else None
        if known is not None:  # a table laid out like one already read (SDSS files share layouts)
            self._columns[index] = known
            return known
        hdr = self.header(index)
        count = hdr.get("TFIELDS", 0)
        if not self.is_table(index):
            count = 0
        elif isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_NAXIS:
            raise FitsFormatError(f"{self.path}: {self.describe(index)}: TFIELDS = {count!r} "
                                  f"is not a column count from 0 to {MAX_NAXIS}")
        names = self._columns[index] = _ColumnNames.of([str(hdr.get(f"TTYPE{i}", "")).strip()
                                                        for i in range(1, count + 1)])
        if key is not None:
            _remember(_NAMES, key, names)
        return names

    def columns(self, index: int) -> list[str]:
        """Column names of a table HDU as written (TTYPEn)."""
        return self._names(index).names

    def lower_columns(self, index: int) -> frozenset[str]:
        """The column names of a table HDU in lower case (worked out once per table layout)."""
        return self._names(index).lowered

    def find_column(self, index: int, *candidates: str) -> str | None:
        """The first of ``candidates`` present in the table, matched case-insensitively."""
        by_lower = self._names(index).by_lower
        for candidate in candidates:
            name = by_lower.get(candidate.lower())
            if name is not None:
                return name
        return None

    def _check_row(self, index: int, row: int) -> None:
        count = self.nrows(index)
        if not 0 <= row < count:
            raise SpectrumError(f"{self.path}: row {row} is out of range: {self.describe(index)} "
                                f"has {count} row{'' if count == 1 else 's'}")

    def _column_number(self, index: int, column: str) -> int:
        """0-based position of the (first) column named exactly ``column``."""
        try:
            return self._names(index).positions[column]
        except KeyError:
            raise SpectrumError(f"{self.path}: {self.describe(index)} has no column {column}") from None

    def read_row(self, index: int, row: int, columns: list[str]) -> dict[str, np.ndarray]:
        """One row of a table: ``{column: value}`` for the named (exact) columns."""
        for name in columns:
            self._column_number(index, name)
        self._check_row(index, row)
        self.data_reads += 1
        self._check_sums(index)
        return {name: _native(value) for name, value in self._read_row(index, row, columns).items()}

    def read_column(self, index: int, column: str, dtype: Any = None) -> np.ndarray:
        """A whole (small, scalar) column of a table; as ``dtype`` where given (one copy, not two)."""
        self._column_number(index, column)
        self.nrows(index)  # checks the table's shape first
        self.data_reads += 1
        self._check_sums(index)
        return _native(self._read_column(index, column), dtype)

    def read_image_row(self, index: int, row: int, dtype: Any = None) -> np.ndarray:
        """Row ``row`` of a 2-D image, or the whole of a 1-D image (``row`` 0); as ``dtype``
        where given (one copy, not two)."""
        if not self.is_image(index):
            raise SpectrumError(f"{self.path}: {self.describe(index)} is not an image")
        self._check_row(index, row)
        self.data_reads += 1
        self._check_sums(index)
        return _native(self._read_image_row(index, row), dtype)

    # -- the table layout, for the native backend -----------------------------------------
    def _table(self, index: int) -> list[_Column]:
        """The columns of table ``index``, checked to add up to its row width (NAXIS1)."""
        if index not in self._tables:
            where = f"{self.path}: {self.describe(index)}"
            hdr = self.header(index)
            key = self._layout_key(index)
            known = _COLUMNS.get(key) if key is not None else None
            if known is None:
                table = [_column(hdr, number, where) for number in range(1, len(self.columns(index)) + 1)]
                known = (table, sum(column.width for column in table))
                if key is not None:
                    _remember(_COLUMNS, key, known)
            table, width = known
            naxis1 = self._axis(index, "NAXIS1")
            if width != naxis1:
                raise FitsFormatError(f"{where}: columns add up to {width} bytes a row, NAXIS1 says {naxis1}")
            if width > _MAX_ROW_BYTES:
                raise FitsFormatError(f"{where}: rows of {width} bytes are too wide to read")
            self._tables[index] = table
        return self._tables[index]


class NativeFits(FitsFile):
    """Reads the bytes the headers point at: one positioned read per row, into the file's
    scratch memory (:meth:`FitsFile._read_at`).

    Plain reads, no memory map, for the reason given in
    :class:`~workers.readers.backends.AstropyFits`.

    With checksums verified, every later read of an HDU summed by this handle is served
    from the data unit :class:`FitsFile` read to check its sums: no byte is read twice. An
    HDU checked in this version of the file before is read directly, and the file's
    version checked again after each read.
    """

    backend = "native"
    _shares_structure = True

    def __init__(self, path: Path, verify: bool | None = None):
        super().__init__(path, verify)
        self._row_dtypes = self._structure_kept.row_dtypes
        self._images = self._structure_kept.images

    def _bytes(self, index: int, offset: int, count: int) -> memoryview:
        """``count`` bytes at ``offset`` within HDU ``index``'s data unit (checked before reading)."""
        layout = self._layout[index]
        if offset < 0 or count < 0 or offset + count > layout.data_size:
            raise FitsFormatError(f"{self.path}: {self.describe(index)}: bytes {offset}..{offset + count} "
                                  f"lie outside its data unit of {layout.data_size} bytes")
        unit = self._verified_unit(index) if self._verify else None
        if unit is not None:
            return unit[offset:offset + count]
        # Into this file's scratch memory (one positioned read, no new buffer a spectrum): every
        # public read copies what it returns out of it.
        data = self._read_at(layout.data_start + offset, count)
        self._check_unchanged(index)
        return data

    def _row_dtype(self, index: int) -> np.dtype:
        """The record dtype of a row; fields named by position, so any TTYPE (blank, repeated) works."""
        if index not in self._row_dtypes:
            table = self._table(index)
            key = self._layout_key(index)
            dtype = _DTYPES.get(key) if key is not None else None
            if dtype is None:
                dtype = np.dtype([(f"c{i}", *column.dtype()) for i, column in enumerate(table)])
                if key is not None:
                    _remember(_DTYPES, key, dtype)
            self._row_dtypes[index] = dtype
        return self._row_dtypes[index]

    def _decode(self, index: int, number: int, values: np.ndarray) -> np.ndarray:
        """Apply what FITS says about a column's bytes: logicals, TZERO/TSCAL."""
        column = self._table(index)[number]
        if column.code == "L":
            return values == b"T"
        if column.code in "PQ":
            raise SpectrumError(f"{self.path}: {self.describe(index)}: column "
                                f"{self.columns(index)[number]} is a variable-length array, "
                                f"which the native backend does not read")
        if column.code in "AX":
            return values
        return _scaled(values, column.scale, column.zero)

    def _read_row(self, index, row, columns):
        dtype = self._row_dtype(index)
        record = np.frombuffer(self._bytes(index, row * dtype.itemsize, dtype.itemsize), dtype)
        out = {}
        for name in columns:
            number = self._column_number(index, name)
            out[name] = self._decode(index, number, record[f"c{number}"][0])
        return out

    def _read_column(self, index, column):
        dtype = self._row_dtype(index)
        number = self._column_number(index, column)
        field_name = f"c{number}"
        count = self.nrows(index)
        if dtype.itemsize * count <= _WHOLE_TABLE_BYTES:
            table = np.frombuffer(self._bytes(index, 0, dtype.itemsize * count), dtype)
            return self._decode(index, number, table[field_name])
        # Wide tables (many visits): read just this column's bytes in each row.
        field_dtype, offset = dtype.fields[field_name][:2]
        values = [np.frombuffer(self._bytes(index, row * dtype.itemsize + offset, field_dtype.itemsize),
                                field_dtype)[0] for row in range(count)]
        return self._decode(index, number, np.array(values, dtype=field_dtype))

    def _image(self, index: int) -> tuple[np.dtype, int, float | int, float | int]:
        """An image HDU's element type, row length (NAXIS1), BSCALE and BZERO, worked out once."""
        try:
            return self._images[index]
        except KeyError:
            pass
        hdr = self.header(index)
        dtype = _IMAGE_DTYPES[hdr["BITPIX"]]
        scale, zero = _scaling(hdr, "BSCALE", "BZERO", lambda: f"{self.path}: {self.describe(index)}")
        image = self._images[index] = (dtype, self._axis(index, "NAXIS1"), scale, zero)
        return image

    def _read_image_row(self, index, row):
        dtype, width, scale, zero = self._image(index)
        values = np.frombuffer(self._bytes(index, row * width * dtype.itemsize, width * dtype.itemsize), dtype)
        return _scaled(values, scale, zero)
