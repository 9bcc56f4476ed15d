"""The header fast paths read exactly what the card-by-card parse reads.

A header read from a file (:meth:`Header.from_bytes`) is looked up through the keyword
columns of its cards, found with array operations, and its values are remembered by card
text across files; a header built from a list of cards goes through the card-by-card
parse. For any cards at all — plain, lower case, repeated, commentary, HIERARCH,
CONTINUE, an early ``= ``, odd bytes — both give the same keys, values and order. The
END card and the data size the header walk works out are checked the same way against
their plain definitions.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from workers.readers.errors import FitsFormatError
from workers.readers.header import _end_card, _structural_cards, Header, expected_data_size, scan_headers

CARD = 80
BLOCK = 2880
# What str.rstrip() takes off: END followed by these and nothing else is an END card.
BLANKS = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"

KEYWORDS = st.sampled_from(["NAXIS", "NAXIS1", "NAXIS2", "BITPIX", "TFORM1", "TTYPE1", "EXTNAME", "DATASUM",
                            "CHECKSUM", "OBJ", "ra", "Dec", "A-B_C", "K", "", "COMMENT", "HISTORY", "END",
                            "CONTINUE", "HIERARCH", "LONGKEYWORD", "  AB", "NAXIS ", "ÄB"])
VALUES = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=False).map(repr),
                   st.sampled_from(["T", "F", "'text'", "'it''s'", "'long&'", "''", "1.5D3", "(1, 2)", "", "/ c"]),
                   st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))


@st.composite
def cards(draw, plain: bool = False) -> str:
    """One 80-character card: a value card in one of the forms headers take, or anything
    (``plain``: an upper-case value card or a commentary card, what the fast path takes)."""
    kinds = ["value", "commentary"] if plain else ["value", "value", "value", "early", "hierarch", "continue",
                                                   "commentary", "raw"]
    kind = draw(st.sampled_from(kinds))
    keyword = draw(KEYWORDS.filter(lambda key: key.isascii() and key == key.upper()) if plain else KEYWORDS)
    value = draw(VALUES)
    if kind == "value":
        card = f"{keyword:<8}= {value:>20}"
    elif kind == "early":  # "= " before column 9, as some writers put it
        card = f"{keyword[:6]}= {value}"
    elif kind == "hierarch":
        card = f"HIERARCH {keyword} LEVEL = {value}"
    elif kind == "continue":
        card = f"CONTINUE  {value}"
    elif kind == "commentary":
        card = f"{draw(st.sampled_from(['COMMENT', 'HISTORY', '']))!s:<8}{value}"
    else:
        card = draw(st.text(st.characters(min_codepoint=9, max_codepoint=126), max_size=CARD))
    return card[:CARD].ljust(CARD)


def test_plain_cards_take_the_fast_path():
    fast, _ = both([f"{'NAXIS':<8}= {2:>20}".ljust(CARD), f"{'COMMENT':<8}x".ljust(CARD)])
    assert fast._plain_offsets() == {"NAXIS": 0}


def both(card_list: list[str]) -> tuple[Header, Header]:
    """The header as read from a file (the fast path) and as built card by card from the
    text that file's bytes read as (a byte outside ASCII is a replacement character)."""
    data = "".join(card_list).encode("latin-1")
    text = data.decode("ascii", "replace")
    return Header.from_bytes(data), Header([text[at:at + CARD] for at in range(0, len(text), CARD)])


ANY_HEADER = st.one_of(st.lists(cards(plain=True), max_size=40), st.lists(cards(), max_size=40))


@given(card_list=ANY_HEADER, asked=st.lists(KEYWORDS, max_size=10))
@example(card_list=[f"{'  AB':<8}= {1:>20}".ljust(CARD)], asked=["AB", "  AB"])  # blanks before a keyword
@example(card_list=[f"{'NAXIS':<8}= {1:>20}".ljust(CARD), f"{'NAXIS':<8}= {2:>20}".ljust(CARD)],
         asked=["NAXIS", "naxis", "NAXIS "])  # the first of two wins; a trailing blank is no keyword
@example(card_list=[f"{'':<8}= {1:>20}".ljust(CARD), f"{'COMMENT':<8}= {1:>20}".ljust(CARD)],
         asked=["", "COMMENT"])  # cards of no value
def test_a_header_read_from_bytes_is_the_card_by_card_parse(card_list, asked):
    fast, slow = both(card_list)
    for keyword in [*asked, *Header(card_list)]:
        assert fast.get(keyword, "absent") == slow.get(keyword, "absent"), keyword
        assert (keyword in fast) == (keyword in slow), keyword
        assert fast.get(keyword.lower(), "absent") == slow.get(keyword.lower(), "absent"), keyword
    assert list(fast) == list(slow)
    assert len(fast) == len(slow)


@given(card_list=ANY_HEADER)
def test_values_remembered_across_headers_are_each_headers_own(card_list):
    # The second header of the same cards is served from the values remembered for the first.
    first, slow = both(card_list)
    second, _ = both(card_list)
    for keyword in slow:
        assert first.get(keyword) == slow.get(keyword) == second.get(keyword)


@given(block=st.lists(st.sampled_from([b"END", b"END     ", b" ", b"\t", b"\x1c", b"\n", b"EXTEND", b"E", b"X",
                                       b" " * CARD, b"\0"]), max_size=400))
def test_the_end_card_is_found_where_the_standard_puts_it(block):
    data = (b"".join(block) + b" " * BLOCK)[:BLOCK]
    expected = next((at for at in range(0, BLOCK, CARD)
                     if data[at:at + 3] == b"END" and not data[at + 3:at + 8].strip(BLANKS)), None)
    assert _end_card(data) == expected


@given(card_list=st.lists(cards(), max_size=60))
@example(card_list=["XTENSION= 'BINTABLE'".ljust(CARD), "BITPIX  =                    8".ljust(CARD),
                    "NAXIS   =                    0".ljust(CARD), "COMMENT NAXIS is here".ljust(CARD)])
def test_the_structural_cards_are_those_whose_first_five_characters_name_them(card_list):
    data = "".join(card_list).encode("latin-1", "replace")
    expected = [data[at:at + CARD] for at in range(0, len(data), CARD)
                if data[at:at + 5] in (b"BITPI", b"NAXIS", b"PCOUN", b"GCOUN")]
    # The possessive form matches wrongly before Python 3.11.5: the walk takes the greedy one there.
    for possessive in (False, True) if sys.version_info >= (3, 11, 5) else (False,):
        assert [card for card in _structural_cards(possessive).findall(data) if card] == expected


@given(naxis=st.integers(0, 3), sizes=st.lists(st.integers(0, 40), min_size=3, max_size=3),
       bitpix=st.sampled_from([8, 16, 32, 64, -32, -64, 12]), pcount=st.integers(-2, 30),
       extra=st.lists(cards(), max_size=12))
def test_the_data_size_of_the_walk_is_the_headers(naxis, sizes, bitpix, pcount, extra):
    card_list = [f"{'SIMPLE':<8}= {'T':>20}".ljust(CARD), f"{'BITPIX':<8}= {bitpix:>20}".ljust(CARD),
                 f"{'NAXIS':<8}= {naxis:>20}".ljust(CARD)]
    card_list += [f"{f'NAXIS{axis + 1}':<8}= {sizes[axis]:>20}".ljust(CARD) for axis in range(naxis)]
    card_list += [f"{'PCOUNT':<8}= {pcount:>20}".ljust(CARD), *extra, "END".ljust(CARD)]
    header = "".join(card_list).encode("latin-1")
    header += b" " * (-len(header) % BLOCK)
    text = header.decode("ascii", "replace")
    try:
        expected = expected_data_size(Header([text[at:at + CARD] for at in range(0, len(card_list) * CARD - CARD, CARD)]))
    except FitsFormatError as error:
        expected = error
    data = header + b"\0" * (expected if isinstance(expected, int) else 0)
    stream, size = io.BytesIO(data), len(data)
    if isinstance(expected, FitsFormatError):
        with pytest.raises(FitsFormatError):
            scan_headers(Path("f.fits"), stream, size)
        return
    try:
        layout = scan_headers(Path("f.fits"), stream, size)
    except FitsFormatError as error:
        # An END among the extra cards ends the header earlier: then the cards before it decide.
        assert any(card.startswith("END") for card in extra), error
        return
    if not any(card.startswith("END") for card in extra):
        assert layout[0].data_size == expected


def walk_block_by_block(data: bytes, limit: int) -> tuple[int, int] | str:
    """The first header's (END's offset, bytes of its blocks), one block at a time as the
    FITS standard reads it, or why it is refused (the start of the message)."""
    position = 0
    while True:
        block = data[position:position + BLOCK]
        if len(block) < BLOCK:
            return f"file is truncated: the header of HDU 0 ends at byte {position + len(block)},"
        position += BLOCK
        if position > limit * BLOCK:
            return "the header of HDU 0 has no END card"
        at = next((at for at in range(0, BLOCK, CARD)
                   if block[at:at + 3] == b"END" and not block[at + 3:at + 8].strip(BLANKS)), None)
        if at is not None:
            return position - BLOCK + at, position


# Up to 20 blocks of cards: more than the walk reads ahead at once (16).
@given(cards_before_end=st.integers(0, 20 * BLOCK // CARD), has_end=st.booleans(), cut=st.integers(0, 22 * BLOCK),
       limit=st.integers(1, 22))
@example(cards_before_end=40, has_end=True, cut=22 * BLOCK, limit=1)  # END in the block past the limit
@example(cards_before_end=40, has_end=True, cut=22 * BLOCK, limit=2)  # END in the last block allowed
@example(cards_before_end=600, has_end=True, cut=22 * BLOCK, limit=16)  # END in block 17: past what is read ahead
@example(cards_before_end=600, has_end=True, cut=22 * BLOCK, limit=17)
@example(cards_before_end=600, has_end=False, cut=17 * BLOCK + 100, limit=22)  # cut in a later read
def test_the_walk_takes_a_header_block_by_block(cards_before_end, has_end, cut, limit):
    from workers.readers import header as module

    cards_text = [f"{'SIMPLE':<8}= {'T':>20}", f"{'BITPIX':<8}= {8:>20}", f"{'NAXIS':<8}= {0:>20}"]
    cards_text += [f"{f'KEY{i}':<8}= {i:>20}" for i in range(cards_before_end)] + (["END"] if has_end else [])
    data = "".join(card.ljust(CARD) for card in cards_text).encode("ascii")
    data = (data + b" " * (-len(data) % BLOCK))[:max(cut, CARD)]
    expected = walk_block_by_block(data, limit)
    saved = module.MAX_HEADER_BLOCKS
    module.MAX_HEADER_BLOCKS = limit
    try:
        layout = scan_headers(Path("f.fits"), io.BytesIO(data), len(data))
    except FitsFormatError as error:
        assert isinstance(expected, str) and expected in str(error), (expected, str(error))
        return
    finally:
        module.MAX_HEADER_BLOCKS = saved
    assert not isinstance(expected, str), expected
    end, stored = expected
    assert layout[0].data_start == stored and layout[0].header_bytes == data[:stored]
    assert len(layout[0].header) == 3 + cards_before_end == end // CARD
