"""specq's own FITS writer for the synthetic files: cards, images, binary tables, checksums.

Every HDU carries ``DATASUM`` and ``CHECKSUM`` as the SDSS products Astra writes do (Astra
adds them to every HDU), computed as the FITS standard defines them (appendix J); apStar
files, which the APOGEE reduction writes without them (``apStar.yaml``), carry none unless
``write_apstar(checksums=True)``. Files are written
atomically (temporary name in the same folder, then rename), so a watcher never sees half
a file.
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from workers.readers.checksum import ones_complement_sum

# A small FITS writer of our own: astropy needs ~50 ms to build one wide table (card
# objects, ColDefs), which made a 50-file data set take ~15 s; writing the cards and the
# big-endian bytes directly takes ~2 ms and gives exact control over every TFORM/TDIM
# (e.g. the 0-length pixel columns of astra's empty HDUs). The tests read every file
# back with astropy (with verification) and fitsio.
_BLOCK = 2880
_BITPIX = {"u1": 8, "i2": 16, "i4": 32, "i8": 64, "f4": -32, "f8": -64}
_DTYPES = {"K": ">i8", "J": ">i4", "I": ">i2", "E": ">f4", "D": ">f8", "B": "u1"}


def _format_value(value: Any) -> str:
    """A header value in FITS fixed format (20 columns for numbers and logicals)."""
    if value is None:
        return " " * 20  # an undefined value, as astra writes for missing photometry
    if isinstance(value, (bool, np.bool_)):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):>20}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise ValueError(f"FITS headers cannot hold {value}")
        return f"{repr(float(value)).upper():>20}"
    text = str(value).replace("'", "''")
    return f"{chr(39) + f'{text:<8}' + chr(39):<20}"


def _card(keyword: str, value: Any, comment: str = "") -> str:
    if len(keyword) > 8:
        raise ValueError(f"FITS keyword {keyword!r} is longer than 8 characters")
    card = f"{keyword:<8}= {_format_value(value)}"
    if len(card) > 80:
        raise ValueError(f"header value of {keyword} does not fit one card")
    if comment:
        card = f"{card} / {comment}"[:80]
    return card.ljust(80)


class _Header:
    """Ordered header cards; ``header[key] = value`` or ``(value, comment)`` like astropy."""

    def __init__(self, cards: Iterable[tuple[str, Any, str]] = ()):
        self._cards: dict[str, tuple[Any, str]] = {}
        for keyword, value, comment in cards:
            self[keyword] = (value, comment)

    def __setitem__(self, keyword: str, value: Any) -> None:
        comment = ""
        if isinstance(value, tuple):
            value, comment = value
        self._cards[keyword.upper()] = (value, comment)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self._cards

    def to_bytes(self) -> bytes:
        text = "".join(_card(key, value, comment) for key, (value, comment) in self._cards.items())
        text += "END".ljust(80)
        return _pad(text.encode("ascii"), b" ")


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % _BLOCK)


class _HDU:
    """A header plus the bytes of its data unit."""

    def __init__(self, header: _Header, data: bytes = b"", checksums: bool = True):
        self.header = header
        self.data = data
        self.checksums = checksums

    def to_bytes(self) -> bytes:
        """The HDU as stored, with its ``DATASUM`` and ``CHECKSUM`` cards (as Astra writes every
        HDU) unless ``checksums`` is off (as the APOGEE reduction writes apStar files)."""
        data = _pad(self.data, b"\0")
        if not self.checksums:
            return self.header.to_bytes() + data
        datasum = ones_complement_sum(data)
        # CHECKSUM is found with its value set to sixteen '0's, then encoded so the HDU sums to -0.
        self.header["CHECKSUM"] = ("0" * 16, "HDU checksum")
        self.header["DATASUM"] = (str(datasum), "data unit checksum")
        total = ones_complement_sum(self.header.to_bytes(), datasum)
        self.header["CHECKSUM"] = (_encode_checksum(~total & 0xFFFFFFFF), "HDU checksum")
        return self.header.to_bytes() + data


# Punctuation the ASCII encoding of a checksum avoids (FITS standard, appendix J).
_PUNCTUATION = (*range(0x3A, 0x41), *range(0x5B, 0x61))


def _encode_checksum(value: int) -> str:
    """A 32-bit value as the 16 characters of a ``CHECKSUM`` card (FITS standard, appendix J).

    Each byte is spread over four characters from ``'0'`` whose sum is the byte plus four
    ``'0'``s, nudged in pairs off punctuation; the string is rotated by one because the
    card's value starts one byte before a 4-byte boundary.
    """
    spread = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        chars = [byte // 4 + 0x30] * 4
        chars[0] += byte % 4
        moved = True
        while moved:
            moved = False
            for bad in _PUNCTUATION:
                for j in (0, 2):
                    if chars[j] == bad or chars[j + 1] == bad:
                        chars[j] += 1
                        chars[j + 1] -= 1
                        moved = True
        for j in range(4):
            spread[4 * j + i] = chars[j]
    return bytes(spread[(i + 15) % 16] for i in range(16)).decode("ascii")


def _primary_hdu() -> _HDU:
    return _HDU(_Header([("SIMPLE", True, "conforms to FITS standard"), ("BITPIX", 8, "array data type"),
                         ("NAXIS", 0, "number of array dimensions"), ("EXTEND", True, "")]))


def _image_hdu(array: np.ndarray | None) -> _HDU:
    """An IMAGE extension (None: an empty one)."""
    if array is None:
        return _HDU(_Header([("XTENSION", "IMAGE", "Image extension"), ("BITPIX", 8, ""), ("NAXIS", 0, ""),
                             ("PCOUNT", 0, ""), ("GCOUNT", 1, "")]))
    array = np.asarray(array)
    kind = f"{array.dtype.kind}{array.dtype.itemsize}"
    cards = [("XTENSION", "IMAGE", "Image extension"), ("BITPIX", _BITPIX[kind], "array data type"),
             ("NAXIS", array.ndim, "number of array dimensions")]
    cards += [(f"NAXIS{axis}", size, "") for axis, size in enumerate(reversed(array.shape), start=1)]
    cards += [("PCOUNT", 0, "number of parameters"), ("GCOUNT", 1, "number of groups")]
    big_endian = array.astype(array.dtype.newbyteorder(">"), copy=False)
    return _HDU(_Header(cards), np.ascontiguousarray(big_endian).tobytes())


def _table(spec: str, nrows: int, values: dict[str, Any], npix: int = 0, name: str | None = None,
           units: dict[str, str] | None = None) -> _HDU:
    """A binary table from a ``name:TFORM`` spec (the data model's columns, in order).

    ``{n}`` in a TFORM is the pixel count. Numeric/logical TFORMs with an explicit repeat
    get a TDIM (as the SDSS files have). A zero-row table gets 1-character strings and
    0-length arrays, as astra writes them. Missing values are zeros / blanks.
    """
    fields, tforms, tdims, fill = [], [], [], []
    for item in spec.split():
        column, tform = item.split(":")
        is_pixels = "{n}" in tform
        tform = tform.replace("{n}", str(npix if nrows else 0))
        code = tform.lstrip("0123456789")
        repeat_text = tform[: len(tform) - len(code)]
        repeat = int(repeat_text) if repeat_text else 1
        if nrows == 0 and repeat_text and code not in "AL":
            repeat, tform = 0, f"0{code}"  # astra's empty tables: 0-length arrays
        if code == "A":
            if nrows == 0 and column != "date_obs":
                repeat, tform = 1, "1A"
            fields.append((column, f"S{repeat}"))
        elif code == "L":
            fields.append((column, "S1", (repeat,)) if repeat_text else (column, "S1"))
        else:
            fields.append((column, _DTYPES[code], (repeat,)) if (repeat_text or is_pixels)
                          else (column, _DTYPES[code]))
        tforms.append(tform)
        tdims.append(f"({repeat})" if (repeat_text or is_pixels) and code != "A" else None)
        fill.append((column, code))
    table = np.zeros(nrows, dtype=np.dtype(fields))
    for column, code in fill:
        if code == "L":
            truth = np.zeros(table[column].shape, dtype=bool)
            if values.get(column) is not None:
                truth[...] = np.broadcast_to(np.asarray(values[column], dtype=bool), truth.shape)
            table[column] = np.where(truth, b"T", b"F")  # FITS logicals are 'T'/'F' bytes
        elif values.get(column) is not None and nrows:
            target = table[column]
            target[...] = np.broadcast_to(np.asarray(values[column], dtype=target.dtype), target.shape)
    cards = [("XTENSION", "BINTABLE", "binary table extension"), ("BITPIX", 8, "array data type"),
             ("NAXIS", 2, "number of array dimensions"), ("NAXIS1", table.dtype.itemsize, "length of dimension 1"),
             ("NAXIS2", nrows, "length of dimension 2"), ("PCOUNT", 0, "number of group parameters"),
             ("GCOUNT", 1, "number of groups"), ("TFIELDS", len(fields), "number of table fields")]
    for number, ((column, _), tform, tdim) in enumerate(zip(fill, tforms, tdims), start=1):
        cards += [(f"TTYPE{number}", column, ""), (f"TFORM{number}", tform, "")]
        if units and units.get(column):
            cards.append((f"TUNIT{number}", units[column], ""))
        if tdim:
            cards.append((f"TDIM{number}", tdim, ""))
    if name:
        cards.append(("EXTNAME", name, "extension name"))
    return _HDU(_Header(cards), table.tobytes())


def _atomic_write(path: str | os.PathLike, hdus: list[_HDU]) -> Path:
    """Write the HDUs to a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and not *.fits, so a watcher globbing *.fits ignores it until the rename.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            for hdu in hdus:
                handle.write(hdu.to_bytes())
        os.replace(temporary, path)  # atomic on POSIX within one filesystem
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%y-%m-%d %H:%M:%S")
