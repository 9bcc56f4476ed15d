"""FITS headers as specq reads them: cards → values, and the walk over a file's HDUs.

:func:`scan_headers` reads every header of a file in one pass and checks the structural
keywords (BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT) against the FITS rules and against the
file's size *before* anything is read at the offsets they give: a damaged or hostile
header (a table claiming 10**12 rows, a negative PCOUNT) is a :class:`FitsFormatError`,
never an allocation or a loop of that size. :class:`Header` parses values lazily and
follows astropy's leniency (lower-case keywords, HIERARCH, CONTINUE), so any header astropy
reads parses here too.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from workers.readers.errors import FitsFormatError, TruncatedFitsError, UnreadableStructureError

__all__ = ["BITPIX_BYTES", "FITS_BLOCK", "MAX_HDUS", "MAX_NAXIS", "NO_VALUE_KEYWORDS", "Header", "HduLayout", "expected_data_size", "parse_card_value", "scan_headers"]

FITS_BLOCK = 2880
_CARD = 80
# BITPIX values the FITS standard allows, and the element size each means.
BITPIX_BYTES = {8: 1, 16: 2, 32: 4, 64: 8, -32: 4, -64: 8}
MAX_NAXIS = 999  # the FITS standard's limit on NAXIS (and on TFIELDS)
# A header longer than this (360,000 cards; SDSS headers have hundreds) is refused rather
# than held in memory: a file of junk after 'SIMPLE  =' has no END card to stop at.
MAX_HEADER_BLOCKS = 10_000
# HDUs a file may have (SDSS, LAMOST and Gaia spectrum files have a dozen at most). Empty
# HDUs cost a block each and gzip to nothing: a few MB would otherwise make millions of them,
# each a header kept in memory, and astropy's second opinion walk them for minutes.
MAX_HDUS = 1000

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
NO_VALUE_KEYWORDS = {"", "COMMENT", "HISTORY", "END", "CONTINUE"}


def _keyword_and_value(card: str) -> tuple[str, str] | None:
    """Split a value card into (keyword as astropy names it, text after the indicator).

    Follows astropy's leniency so that any header astropy reads parses here too:
    lower-case keywords (upper-cased), ``= `` earlier than column 9, and HIERARCH cards
    (``HIERARCH ESO DET CHIP = 3`` → ``ESO DET CHIP``, case kept as astropy does).
    None for commentary, blank and CONTINUE cards and anything without a value.
    """
    head = card[:8].strip().upper()
    if head in NO_VALUE_KEYWORDS:
        return None
    if head == "HIERARCH" and card[8:9] == " " and "=" in card:
        name, text = card[9:].split("=", 1)
        name = name.strip()
        return (name, text) if name else None
    indicator = card.find("= ")
    if not 0 <= indicator <= 8:
        return None
    name = card[:indicator].strip().upper()
    if name in NO_VALUE_KEYWORDS:
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
    if "HIERARCH" in text or "CONTINUE" in text:
        return False
    # Only a card without "= " in columns 9-10 can have an early one: search just those.
    return not _EARLY_INDICATOR.search("\n".join([c for c in cards if c[8:10] != "= "]))


def _card_columns(data: bytes, width: int) -> np.ndarray:
    """The first ``width`` characters of every card of ``data``, as fixed-width bytes (a view)."""
    return np.ndarray((len(data) // _CARD,), dtype=f"S{width}", buffer=data, strides=(_CARD,))


# NO_VALUE_KEYWORDS as the keyword columns of a card hold them.
_PADDED_NO_VALUE = frozenset(key.ljust(8).encode() for key in NO_VALUE_KEYWORDS)
_ABSENT = object()  # a keyword not looked up yet
_NO_CARD = object()  # looked up: the header has no such keyword


class _Keywords:
    """Where the keywords of a header of plain cards are, worked out from its cards' first
    ten columns alone (keyword, value indicator) and shared by every header that has them.

    Attributes
    ----------
    offsets : dict
        The keyword columns (8 bytes) -> the offset of the first value card of that keyword.
    by_name : dict
        The same offsets by keyword as a lookup names it (the columns less trailing blanks):
        a lookup is then one dict access, without padding the name it is given.
    """

    def __init__(self, heads: bytes):
        columns = np.frombuffer(heads, np.uint8).reshape(-1, 10)
        value = (columns[:, 8] == ord("=")) & (columns[:, 9] == ord(" "))
        keys = columns[value, :8].copy().view("S8").ravel().tolist()
        starts = (np.flatnonzero(value) * _CARD).tolist()
        self.offsets = dict(zip(reversed(keys), reversed(starts)))  # the first occurrence wins
        for key in _PADDED_NO_VALUE.intersection(self.offsets):
            del self.offsets[key]
        # Plain keyword columns are printable ASCII, so a blank is the only trailing whitespace.
        self.by_name = {key.decode("ascii").rstrip(" "): start for key, start in self.offsets.items()}
        self._keywords = columns[:, :8]
        self._spans: dict[tuple[str, ...], tuple[int, int] | None] = {}

    def span(self, prefixes: tuple[str, ...]) -> tuple[int, int] | None:
        """Offsets from the first card whose keyword starts with one of ``prefixes`` to the
        end of the last one; None when there is none."""
        if prefixes not in self._spans:
            keywords = np.ascontiguousarray(self._keywords).view("S8").ravel()
            starts = np.zeros(len(keywords), dtype=bool)
            for prefix in prefixes:
                starts |= keywords.astype(f"S{len(prefix)}") == prefix.encode()
            found = np.flatnonzero(starts)
            self._spans[prefixes] = (int(found[0]) * _CARD, (int(found[-1]) + 1) * _CARD) if found.size else None
        return self._spans[prefixes]


# By the first ten columns of every card (None: not plain). Bounded: a worker runs for weeks.
_KEYWORDS: dict[bytes, _Keywords | None] = {}
_KEYWORDS_KEPT = 256


def _plain_keywords(data: bytes) -> _Keywords | None:
    """The keywords of a header of plain cards; None for any other header.

    The same as the plain branch of :meth:`Header._index` finds where it applies: whole
    cards, none that needs the lenient rules (see :func:`_plain`), keyword columns of
    upper-case printable ASCII (so blanks are the only whitespace a keyword loses and it
    is its own upper case). None sends a header there.
    """
    if len(data) % _CARD or b"\n" in data or b"HIERARCH" in data or b"CONTINUE" in data:
        return None
    heads = _card_columns(data, 10).tobytes()
    try:
        return _KEYWORDS[heads]
    except KeyError:
        pass
    keywords = np.frombuffer(heads, np.uint8).reshape(-1, 10)[:, :8]
    # Outside " " .. DEL (the subtraction wraps), lower case, or an "=" that could start an early "= ".
    odd = ((keywords - np.uint8(32)) > 95) | ((keywords - np.uint8(ord("a"))) < 26) | (keywords == ord("="))
    found = None if odd.any() else _Keywords(heads)
    if len(_KEYWORDS) >= _KEYWORDS_KEPT:
        _KEYWORDS.clear()
    _KEYWORDS[heads] = found
    return found


class Header(Mapping):
    """An HDU's header cards, ``{KEYWORD: value}``; values are parsed when first asked for.

    Keys are looked up case-insensitively and iterate under the names astropy gives them
    (upper case; HIERARCH names as written). The first occurrence of a keyword wins;
    long strings are joined from their CONTINUE cards; commentary cards (COMMENT,
    HISTORY, blank, anything without a value) are left out.

    A header read from a file (:meth:`from_bytes`) whose cards are all plain is looked up
    through the offsets of its keywords (:func:`_plain_keywords`), worked out with array
    operations and shared by the headers laid out alike: no header, however wide, is
    split into cards by a Python loop.
    """

    def __init__(self, cards: Iterable[str] = ()):
        # Parsed on first use: a file's headers are all walked to find its HDUs, but a
        # reader looks into two or three of them.
        self._cards: list[str] | None = list(cards)
        self._bytes: bytes | None = None  # the cards as read (from_bytes)
        self._keywords: _Keywords | None = None  # see _plain_keywords
        self._offsets: dict[str, int] | None = None  # its offsets, by keyword
        self._decided = False  # whether _keywords has been tried
        self._raw: dict[str, str] = {}  # KEY -> value text
        self._continued: dict[str, list[str]] = {}  # KEY -> texts of the CONTINUE cards after it
        self._names: dict[str, str] = {}  # KEY -> the name astropy gives it, where not KEY itself
        self._parsed: dict[str, Any] = {}
        self._from_values = False

    @classmethod
    def from_bytes(cls, data: bytes) -> "Header":
        """A header from its cards as read (80 bytes a card, END excluded)."""
        header = cls()
        header._bytes = data
        return header

    def _plain_offsets(self) -> dict[bytes, int] | None:
        if not self._decided:
            self._decided = True
            if self._bytes is not None and self._cards is not None:
                self._keywords = _plain_keywords(self._bytes)
                self._offsets = None if self._keywords is None else self._keywords.by_name
        return self._offsets

    def _index(self) -> None:
        if self._cards is None:
            return
        cards, self._cards = self._cards, None
        if self._bytes is not None:
            text = self._bytes.decode("ascii", "replace")
            cards = [text[i:i + _CARD] for i in range(0, len(text), _CARD)]
        if not cards:  # nothing to index (a header built by from_values has its values already)
            return
        if _plain(cards):
            # Every value card has its "= " in columns 9-10 and nothing needs joining: one
            # pass in a comprehension (first occurrence wins, so build from the end).
            raw = {c[:8].rstrip().upper(): c[10:] for c in reversed(cards) if c[8:10] == "= "}
            for key in NO_VALUE_KEYWORDS.intersection(raw):
                del raw[key]
            self._raw = dict(reversed(raw.items()))
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
            current = self._continued[key] = []
            self._raw[key] = text
            if name != key:
                self._names[key] = name

    def cards_key(self, prefixes: tuple[str, ...]) -> tuple | None:
        """A key standing for what the cards whose keyword starts with one of ``prefixes`` say.

        Two headers with the same key give the same value for every such keyword, so
        what is parsed from them (a table's column layout) can be kept under it and
        reused. None for a header built from parsed values (:meth:`from_values`), which
        has no card text.
        """
        if self._plain_offsets() is not None:
            # Every such card lies between the first and the last card that starts with a
            # prefix: that stretch of the header, as written.
            span = self._keywords.span(prefixes)
            return ("cards", b"" if span is None else self._bytes[span[0]:span[1]])
        self._index()
        if self._from_values:
            return None
        continued = self._continued
        return ("values", tuple((key, text, tuple(continued.get(key, ()))) for key, text in self._raw.items()
                                if key.startswith(prefixes)))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Header":
        """A header of already-parsed values (e.g. taken from astropy)."""
        header = cls()
        header._from_values = True
        for name, value in values.items():
            key = name.upper()
            if key not in header._raw:
                header._names[key] = name
                header._raw[key] = ""
                header._parsed[key] = value
        return header

    def __getitem__(self, keyword: str) -> Any:
        key = keyword.upper()
        value = self._parsed.get(key, _ABSENT)
        if value is _ABSENT:
            value = self._value(key)
        if value is _NO_CARD:
            raise KeyError(keyword)
        return value

    def get(self, keyword: str, default: Any = None) -> Any:
        # Mapping.get, without its extra call layers: readers ask for hundreds of keys a file.
        key = keyword.upper()
        value = self._parsed.get(key, _ABSENT)
        if value is _ABSENT:
            offsets = self._offsets if self._decided else self._plain_offsets()
            if offsets is not None:  # _value's plain branch, here: most first lookups take it
                at = offsets.get(key)
                value = self._parsed[key] = _NO_CARD if at is None else _plain_value(self._bytes[at + 10:at + _CARD])
            else:
                value = self._value(key)
        return default if value is _NO_CARD else value

    def _value(self, key: str) -> Any:
        """The parsed value of ``key`` (upper case), or _NO_CARD; kept either way."""
        offsets = self._offsets if self._decided else self._plain_offsets()
        if offsets is not None:
            at = offsets.get(key)  # a name no plain card can hold (too long, blanks) is not among them
            value = _NO_CARD if at is None else _plain_value(self._bytes[at + 10:at + _CARD])
        else:
            if self._cards is not None:
                self._index()
            text = self._raw.get(key)
            if text is None:
                value = _NO_CARD
            else:
                value = parse_card_value(text)
                continuations = self._continued.get(key)
                if continuations and isinstance(value, str):
                    value = _join_long_string(value, continuations)
        self._parsed[key] = value
        return value

    def __contains__(self, keyword: object) -> bool:
        if not isinstance(keyword, str):
            return False
        offsets = self._plain_offsets()
        if offsets is not None:
            return keyword.upper() in offsets
        self._index()
        return keyword.upper() in self._raw

    def __iter__(self):
        self._index()
        names = self._names
        return iter([names.get(key, key) for key in self._raw])

    def __len__(self) -> int:
        self._index()
        return len(self._raw)


# Values of plain cards already parsed, by the card's text after "= ": the files of one
# product repeat most of their cards (BITPIX, TFORMn, EXTNAME …). Values are immutable.
_CARD_VALUES: dict[bytes, Any] = {}
_CARD_VALUES_KEPT = 4096


def _plain_value(text: bytes) -> Any:
    """:func:`parse_card_value` of a plain card's text after "= ", remembered."""
    try:
        return _CARD_VALUES[text]
    except KeyError:
        pass
    value = parse_card_value(text.decode("ascii", "replace"))
    if len(_CARD_VALUES) >= _CARD_VALUES_KEPT:
        _CARD_VALUES.clear()
    _CARD_VALUES[text] = value
    return value


def _structural_int(header: Mapping[str, Any], keyword: str, where: str, *, default: int | None = None,
                    minimum: int = 0, maximum: int | None = None) -> int:
    """A structural keyword's value: an integer within bounds, else FitsFormatError."""
    value = header.get(keyword, default)
    if value is None:
        raise FitsFormatError(f"{where}: the mandatory keyword {keyword} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise FitsFormatError(f"{where}: {keyword} = {value!r} is not an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise UnreadableStructureError(f"{where}: {keyword} = {value} is out of range (must be {bounds})")
    return value


def expected_data_size(header: Mapping[str, Any], where: str = "header") -> int:
    """Bytes of the HDU's data unit as its header declares them (padding excluded).

    Parameters
    ----------
    header : mapping
    where : str
        Names the HDU in messages (e.g. ``"f.fits: HDU 2"``).

    Raises
    ------
    FitsFormatError
        BITPIX, NAXIS or NAXISn missing or invalid, or PCOUNT/GCOUNT negative or not integers.
    """
    bitpix = header.get("BITPIX")
    if bitpix is None:  # no such card, or one whose value reads as nothing (garbled bytes)
        raise FitsFormatError(f"{where}: the mandatory keyword BITPIX is missing" if "BITPIX" not in header
                              else f"{where}: the BITPIX card holds no readable value")
    if isinstance(bitpix, bool) or bitpix not in BITPIX_BYTES:
        raise FitsFormatError(f"{where}: BITPIX = {bitpix!r} is not one of {sorted(BITPIX_BYTES)}")
    naxis = _structural_int(header, "NAXIS", where, maximum=MAX_NAXIS)
    if naxis == 0:
        return 0
    count = 1
    for axis in range(1, naxis + 1):
        count *= _structural_int(header, f"NAXIS{axis}", where)
    gcount = _structural_int(header, "GCOUNT", where, default=1)
    pcount = _structural_int(header, "PCOUNT", where, default=0)
    return BITPIX_BYTES[bitpix] * gcount * (pcount + count)


@dataclass
class HduLayout:
    """One HDU: its header and where its data unit lies in the file."""

    header: Header
    data_start: int
    data_size: int
    header_bytes: bytes = b""  # the header as stored (its blocks), where the walk kept it


# The cards whose first five characters are these (as written), in one pass a card at a
# time, then empty matches at the end. On whole cards (a multiple of 80 bytes) the repeat
# never gives a card back, so possessive and greedy find the same cards; possessive is ~15 %
# faster, and matches wrongly before Python 3.11.5 (CPython gh-100061, gh-106052: no card at
# all, in ~0.1 s a header).
def _structural_cards(possessive: bool) -> re.Pattern:
    repeat = b"*+" if possessive else b"*"
    return re.compile(rb"(?s)(?:(?!BITPI|NAXIS|PCOUN|GCOUN).{80})" + repeat + rb"((?=BITPI|NAXIS|PCOUN|GCOUN).{80}|\Z)")


_STRUCTURAL_CARDS = _structural_cards(possessive=sys.version_info >= (3, 11, 5))
# Data sizes already worked out, by the structural cards that give them: the HDUs of one
# SDSS product mostly share them. Bounded (a worker runs for weeks).
_DATA_SIZES: dict[bytes, int] = {}
_DATA_SIZES_KEPT = 1024
# What str.rstrip() takes off a card read as ASCII text: an END card's keyword is END and these.
_BLANKS = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


# An END card: from a card's first column, END and five of _BLANKS (what rstrip() takes off);
# the cards before it are skipped 80 bytes at a time, in C.
_END_CARD = re.compile(rb"(?s)(?:.{80})*?END[ \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f]{5}")


def _end_card(blocks: bytes | memoryview) -> int | None:
    """Where the first END card of header blocks starts (a multiple of 80), or None."""
    if isinstance(blocks, bytes):
        # The few places "END" occurs at all (EXTEND, comments, the END card), found by a
        # byte search: cheaper than stepping through the cards, and the same first card.
        at = blocks.find(b"END")
        while at >= 0:
            if at % _CARD == 0:
                blanks = blocks[at + 3:at + 8]
                if len(blanks) == 5 and not blanks.strip(_BLANKS):
                    return at
            at = blocks.find(b"END", at + 1)
        return None
    found = _END_CARD.match(blocks)
    return None if found is None else found.end() - 8


def scan_headers(path: Path, stream: BinaryIO, size: int) -> list[HduLayout]:
    """Walk every header of the file; FitsFormatError for anything that is not whole FITS.

    Parameters
    ----------
    path : Path
        For messages.
    stream : binary file
        Positioned anywhere; read from byte 0.
    size : int
        Bytes in the stream: every data unit must end within it.

    Returns
    -------
    list of HduLayout
    """
    if size == 0:
        raise FitsFormatError(f"{path}: empty file (0 bytes), not a FITS file")
    hdus: list[HduLayout] = []
    read_block = _block_reader(stream)
    offset = 0
    while offset < size:
        position = offset
        # Two blocks in one read: a header that runs into its second (a primary header
        # with a few dozen keywords) needs no second read.
        block = read_block(position, 2)
        if not hdus and not block.startswith(b"SIMPLE  ="):
            raise FitsFormatError(f"{path}: not a FITS file (it does not start with 'SIMPLE  =')")
        if hdus and not block.startswith(b"XTENSION="):
            if not block.strip(b"\0"):
                stream.seek(position + len(block))
                if _only_zeros(stream):
                    return hdus  # zero padding after the last HDU: astropy accepts it, so do we
            raise FitsFormatError(f"{path}: corrupt file: bytes after HDU {len(hdus) - 1} "
                                  f"are not a FITS extension")
        if len(hdus) == MAX_HDUS:  # another extension (zero padding after the last is fine)
            raise UnreadableStructureError(f"{path}: more than {MAX_HDUS} HDUs: not a spectrum file")
        at = _end_card(block) if len(block) == FITS_BLOCK else None
        if at is not None:  # most headers: END in their first block
            stored, end = block, at
            position += FITS_BLOCK
        else:
            stored, end, position = _long_header(path, read_block, block, offset, position, size, len(hdus))
        data = stored[:len(stored) - FITS_BLOCK + end]  # the cards before END
        header = Header.from_bytes(data)
        # The data size needs only the structural cards: parse just those now.
        cards = _STRUCTURAL_CARDS.findall(data)
        known = b"".join(cards)  # whole cards, so the joined bytes stand for them
        data_size = _DATA_SIZES.get(known)
        if data_size is None:
            structural = tuple([card.decode("ascii", "replace") for card in cards if card])
            data_size = expected_data_size(_plain_values(structural) or Header(structural), f"{path}: HDU {len(hdus)}")
            if len(_DATA_SIZES) >= _DATA_SIZES_KEPT:
                _DATA_SIZES.clear()
            _DATA_SIZES[known] = data_size
        if position + data_size > size:
            raise TruncatedFitsError(f"{path}: file is truncated: HDU {len(hdus)} needs "
                                  f"{position + data_size} bytes, the file has {size}")
        hdus.append(HduLayout(header, position, data_size, stored))
        offset = position + data_size + (-data_size % FITS_BLOCK)
    return hdus


def _long_header(path: Path, read_block: Callable, block: bytes, offset: int, position: int, size: int,
                 number: int) -> tuple[bytes, int, int]:
    """A header that starts with ``block`` at ``position`` and goes on past it: (its blocks,
    where its END card starts in the last one, the offset after them).

    Raises
    ------
    FitsFormatError, TruncatedFitsError
        No END card within :data:`MAX_HEADER_BLOCKS`, or the file ends first.
    """
    blocks: list[bytes | memoryview] = []
    run: bytes | memoryview = block
    while True:
        # The whole blocks at hand from here are searched for END at once (a short block
        # is the end of the file); the blocks up to END's are this header's.
        whole = len(run) // FITS_BLOCK
        at = _end_card(run)
        found = at is not None and at < whole * FITS_BLOCK
        taken = at // FITS_BLOCK + 1 if found else whole
        if position - offset + taken * FITS_BLOCK > MAX_HEADER_BLOCKS * FITS_BLOCK:
            raise FitsFormatError(f"{path}: corrupt file: the header of HDU {number} has no END "
                                  f"card in its first {MAX_HEADER_BLOCKS * FITS_BLOCK:,} bytes")
        blocks.append(run[:taken * FITS_BLOCK])
        position += taken * FITS_BLOCK
        if found:
            return b"".join(blocks), at - (taken - 1) * FITS_BLOCK, position
        if len(run) % FITS_BLOCK or not run:
            raise TruncatedFitsError(f"{path}: file is truncated: the header of HDU {number} "
                                     f"ends at byte {position + len(run) % FITS_BLOCK}, the file has {size}")
        run = read_block(position, _READ_AHEAD, True)


def _plain_values(cards: tuple[str, ...]) -> dict[str, Any] | None:
    """``{KEYWORD: value}`` of upper-case cards with "= " in columns 9-10, as a :class:`Header`
    of them reads; None when one of them needs the lenient rules (the Header then decides)."""
    if any(c[8:10] != "= " for c in cards):
        return None
    texts = {c[:8].rstrip(): c[10:] for c in reversed(cards)}  # the first occurrence wins
    return {key: parse_card_value(text) for key, text in texts.items()}


_READ_AHEAD = 16  # blocks read at once past a header's first (a wide table's header has a dozen)


def _block_reader(stream: BinaryIO) -> Callable[[int, int], bytes]:
    """``read(offset, ahead, run=False)``: the block at ``offset`` (shorter at the end of the
    file); with ``run``, every byte read from ``offset`` on (a view).

    Where the block is not among those read last, ``ahead`` blocks are read from
    ``offset`` in one call, for the blocks after it: one ``pread`` where the stream is a
    file (no seek), else a seek and a read (decompressed bytes in memory, a remote file).
    """
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        descriptor = None
    if descriptor is not None and hasattr(os, "pread"):
        read_at = functools.partial(_pread, descriptor)
    else:
        read_at = functools.partial(read_from, stream)
    last = [0, b""]  # where the bytes read last start, and they

    def read(offset: int, ahead: int = 1, run: bool = False) -> bytes | memoryview:
        start, data = last
        if not start <= offset <= start + len(data) - FITS_BLOCK:
            start, data = last[:] = offset, read_at(offset, FITS_BLOCK * ahead)
        if run:  # every byte read from offset on, not copied
            return memoryview(data)[offset - start:]
        return data[offset - start:offset - start + FITS_BLOCK]

    return read


def read_from(stream: BinaryIO, start: int, count: int) -> bytes:
    """``count`` bytes of ``stream`` from ``start``, fewer only at its end (an unbuffered
    stream may return part of a read: the rest is asked for)."""
    stream.seek(start)
    data = stream.read(count)
    while 0 < len(data) < count:
        more = stream.read(count - len(data))
        if not more:
            break
        data += more
    return data


def _pread(descriptor: int, offset: int, count: int) -> bytes:
    """``count`` bytes of an open file at ``offset`` without moving its position, fewer only at its end."""
    data = os.pread(descriptor, count, offset)
    while 0 < len(data) < count:  # a short read before the end (not from a local disk, but allowed)
        more = os.pread(descriptor, count - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _only_zeros(stream: BinaryIO) -> bool:
    """Whether the stream holds nothing but NUL bytes from its position on."""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return True
        if chunk.strip(b"\0"):
            return False
