"""FITS checksums (``DATASUM``, ``CHECKSUM``): the 32-bit ones'-complement sum of a unit's bytes.

The FITS standard (section 4.4.2.7 and appendix J) defines both: ``DATASUM`` is the sum of
the data unit's 32-bit big-endian words with end-around carry, as a decimal string;
``CHECKSUM`` is chosen so that the whole HDU, header and data, sums to negative zero
(all ones). The words are added into 64 bits and the carries folded afterwards, which
is the same sum: one vectorised pass over bytes the reader holds anyway (numpy's, or a
numba kernel's in a process that has read enough to win back loading it).

Writers of every kind (astropy, fitsio, SDSS's Astra) add both keywords; a file whose
HDUs lack them is read as before. Every reading backend checks them through
:class:`workers.readers.native.FitsFile`: the native one over the bytes it then reads
from, astropy and fitsio over the HDU's bytes read once before they read it their way.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from workers.spectrum import SpectrumError

__all__ = ["ChecksumError", "NEGATIVE_ZERO", "check_hdu", "ones_complement_sum"]

NEGATIVE_ZERO = 0xFFFFFFFF
_MASK = 0xFFFFFFFF
# numpy sums a process's first _COMPILED_AFTER_BYTES; after that, a unit from _COMPILED_BYTES
# on loads the compiled kernel (:func:`_compiled_sum`), which then sums every unit (a tenth
# of numpy's time on large units, a third on small ones). Loading it (numba, its cache)
# costs a process ~0.7 s of CPU, won back over some 10 GB summed (seconds of a busy reader):
# a short run (a command, a test) never loads it, a worker that reads on does.
_COMPILED_BYTES = 64 << 10
_COMPILED_AFTER_BYTES = 256 << 20
_numpy_summed = 0  # bytes numpy has summed in this process (threads may race: a count, not a total)
_compiled = None  # the kernel, once loaded
_LITTLE_ENDIAN = sys.byteorder == "little"  # the kernel swaps the words' bytes: on such hosts only
_FOLD_WORDS = 1 << 24  # words the kernel adds at a time: their sum stays far below 2**64


class ChecksumError(SpectrumError):
    """An HDU's bytes do not add up to its ``DATASUM`` or ``CHECKSUM``: changed on disk or in
    transfer. Permanent, and never read past (no other backend makes the bytes right)."""


def ones_complement_sum(data, initial: int = 0) -> int:
    """The 32-bit ones'-complement sum of ``data`` (bytes-like) added to ``initial``.

    A length that is not a multiple of 4 counts as padded with zero bytes (FITS pads with
    zeros, so the padding never changes the sum).
    """
    global _numpy_summed

    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % 4
    if _LITTLE_ENDIAN and (_compiled is not None or (whole >= _COMPILED_BYTES
                                                     and _numpy_summed >= _COMPILED_AFTER_BYTES)):
        total = _big_endian_sum(np.frombuffer(view[:whole], dtype=np.uint32)) + initial
    else:
        # Up to 2**32 words of < 2**32 each fit in 64 bits: the carries are folded once at the end.
        total = int(np.add.reduce(np.frombuffer(view[:whole], dtype=">u4"), dtype=np.uint64)) + initial
        _numpy_summed += whole
    if whole < len(view):
        total += int.from_bytes(bytes(view[whole:]).ljust(4, b"\0"), "big")
    while total > _MASK:
        total = (total & _MASK) + (total >> 32)
    return total


def _big_endian_word_sum(words):
    """The sum (64 bits, no carry folded) of big-endian words read in a little-endian host's
    order, as uint32: numba's kernel of :func:`ones_complement_sum` (see :func:`_compiled_sum`)."""
    # Each word is swapped back by shifts and masks, which the compiler turns into vector byte
    # swaps. numpy's own sum of ">u4" converts every word through a buffer first, at a tenth
    # of the speed.
    total = np.uint64(0)
    for i in range(words.size):
        word = words[i]
        total += (((word & np.uint32(0xFF)) << np.uint32(24)) | ((word & np.uint32(0xFF00)) << np.uint32(8))
                  | ((word >> np.uint32(8)) & np.uint32(0xFF00)) | (word >> np.uint32(24)))
    return total


def _compiled_sum():
    """:func:`_big_endian_word_sum` compiled by numba (or loaded from numba's cache), once a process."""
    global _compiled

    if _compiled is None:
        import numba

        try:
            _compiled = numba.njit(nogil=True, cache=True)(_big_endian_word_sum)
        except RuntimeError:  # nowhere numba may keep its cache (a read-only install, no home): compiled each run
            _compiled = numba.njit(nogil=True)(_big_endian_word_sum)
    return _compiled


def _big_endian_sum(words: np.ndarray) -> int:
    """The sum of ``words`` (big-endian, read as native ``uint32``) with its carries folded
    once per block: within 64 bits whatever the count."""
    kernel = _compiled_sum()
    if words.size <= _FOLD_WORDS:
        return int(kernel(words))
    total = 0
    for start in range(0, words.size, _FOLD_WORDS):
        total += int(kernel(words[start:start + _FOLD_WORDS]))
        total = (total & _MASK) + (total >> 32)
    return total


def _declared(header, key: str):
    value = header.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _text(where: str | Callable[[], str]) -> str:
    return where() if callable(where) else where


def check_hdu(where: str | Callable[[], str], header, header_bytes, data) -> None:
    """Check one HDU's ``DATASUM`` and ``CHECKSUM`` (each only where present).

    Parameters
    ----------
    where : str or callable
        The file and HDU, for the message (``spec.fits: HDU 1 (COADD)``); a callable
        returning it is called only for a message (most HDUs add up).
    header : mapping
        The parsed header.
    header_bytes : bytes-like
        The header as stored (its 2880-byte blocks), needed for ``CHECKSUM`` only.
    data : bytes-like
        The data unit (without its padding).

    Raises
    ------
    ChecksumError
        Naming the HDU and both sums.
    """
    datasum, checksum = _declared(header, "DATASUM"), _declared(header, "CHECKSUM")
    if datasum is None and checksum is None:
        return
    data_sum = ones_complement_sum(data)
    if datasum is not None:
        try:
            declared = int(datasum)
        except ValueError:
            raise ChecksumError(f"{_text(where)}: DATASUM = {datasum!r} is not a number") from None
        if declared != data_sum:
            raise ChecksumError(f"{_text(where)}: checksum mismatch: DATASUM says {declared}, "
                                f"the data unit sums to {data_sum}")
    if checksum is not None:
        total = ones_complement_sum(header_bytes, data_sum)
        if total != NEGATIVE_ZERO:
            raise ChecksumError(f"{_text(where)}: checksum mismatch: CHECKSUM {checksum!r} makes the HDU sum to "
                                f"{total}, not {NEGATIVE_ZERO}")
