"""The three data backends, how one is chosen, and the astropy cross-check behind the native one.

:func:`open_fits` opens a file with a named backend. Whatever the backend, the headers are
walked by specq's own parser (:mod:`workers.readers.header`); the backends differ in how
the data are read:

- ``"native"``: numpy reads of the bytes the headers point at (:mod:`workers.readers.native`);
- ``"astropy"``: astropy.io.fits (always installed; the reference);
- ``"fitsio"``: the cfitsio wrapper (optional).

Every backend checks the FITS checksums (``DATASUM``, ``CHECKSUM``) of the HDUs it reads
with the one check of :class:`~workers.readers.native.FitsFile`, so a mismatch is the same
error, naming the HDU and both sums, whichever backend (or the astropy second opinion)
reads the file; ``SPECQ_VERIFY_CHECKSUMS=0`` turns it off for all of them.

The backend is named by the caller: :class:`workers.settings.Settings` reads it once
(``SPECQ_FITS_BACKEND`` or ``fits_backend`` in specq.toml) and producers and workers pass
it on; None means :data:`DEFAULT_BACKEND`. Nothing here reads the environment.

:func:`open_reference` opens a file with astropy for the headers too: the independent
second opinion :func:`with_file` consults when the native backend rejects a file. If
astropy reads it, its result is used and a warning naming the native error is logged
once per file (the file shows a gap in specq's parser); if astropy fails too, the native
error stands. A TransientReadError is never retried this way (the queue retries it).
"""
from __future__ import annotations

import importlib.util
import io
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, TypeVar

from workers.readers.checksum import ChecksumError
from workers.readers.errors import FitsFormatError, TransientReadError, UnreadableStructureError, reading
from workers.readers.header import FITS_BLOCK, NO_VALUE_KEYWORDS, Header, HduLayout, expected_data_size
from workers.readers.native import FitsFile, NativeFits
from workers.spectrum import SpectrumError

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "AstropyFits", "FitsioFits", "open_fits", "open_reference",
           "resolve_backend", "with_file"]

# workers.settings.FITS_BACKENDS lists the same names (settings are checked without importing
# the readers; a test keeps the two equal).
BACKENDS = ("astropy", "fitsio", "native")
DEFAULT_BACKEND = "native"

log = logging.getLogger("workers.readers")
_T = TypeVar("_T")


def resolve_backend(backend: str | None) -> str:
    """The backend to use: ``backend``, or :data:`DEFAULT_BACKEND` when None.

    Raises
    ------
    ValueError
        An unknown backend, or fitsio when it is not installed.
    """
    if backend is None:
        backend = DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"unknown FITS backend {backend!r}: use one of {BACKENDS}")
    if backend == "fitsio" and importlib.util.find_spec("fitsio") is None:
        raise ValueError("FITS backend 'fitsio' needs the fitsio package (pip install 'specq[fitsio]')")
    return backend


class AstropyFits(FitsFile):
    """specq's headers, astropy's data reads."""

    backend = "astropy"

    def __init__(self, path: Path, verify: bool | None = None):
        self._hdul = None  # before the base class reads the layout (a subclass opens it there)
        super().__init__(path, verify)

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
        if self._axis(index, "NAXIS") == 1:
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
        if name.upper() in NO_VALUE_KEYWORDS or name.upper() in seen:
            continue
        seen.add(name.upper())
        try:
            value = card.value
        except (VerifyError, ValueError):
            value = None  # a card astropy cannot parse: as if undefined, like ours
        values[name] = value if isinstance(value, (str, bool, int, float)) else None
    return Header.from_values(values)


class AstropyReference(AstropyFits):
    """astropy end to end, headers and layout included: independent of specq's parser.

    The second opinion consulted when the native backend rejects a file. It is as
    strict as specq about truncation (every data unit must be whole, and an extension
    header cut short is not taken for trailing junk) but otherwise accepts what astropy
    accepts.
    """

    def _read_layout(self) -> list[HduLayout]:
        hdul = self._astropy()
        layout: list[HduLayout] = []
        for index in range(len(hdul)):  # len() parses every header
            hdu = hdul[index]
            header = _astropy_header(hdu.header)
            # The HDU's own fileinfo: HDUList.fileinfo(i) looks over every HDU (and prints
            # every header) each time, minutes for a file of thousands of empty HDUs.
            start = int(hdu.fileinfo()["datLoc"])
            size = expected_data_size(header, f"{self.path}: HDU {index}")
            if start + size > self.size:
                raise FitsFormatError(f"{self.path}: file is truncated: HDU {index} needs "
                                      f"{start + size} bytes, the file has {self.size}")
            layout.append(HduLayout(header, start, size))
        if not layout:
            raise FitsFormatError(f"{self.path}: astropy found no HDU")
        # astropy stops quietly at a header it cannot read: a cut-off extension is truncation.
        end = layout[-1].data_start + layout[-1].data_size
        self._stream.seek(end + (-end % FITS_BLOCK))
        if self._stream.read(len(b"XTENSION=")) == b"XTENSION=":
            raise FitsFormatError(f"{self.path}: file is truncated or corrupt: HDU {len(layout)} "
                                  f"cannot be read")
        return layout


class FitsioFits(FitsFile):
    """specq's headers, cfitsio's data reads."""

    backend = "fitsio"

    def __init__(self, path: Path, verify: bool | None = None):
        self._fits = None  # before the base class reads the layout
        super().__init__(path, verify)

    def _fitsio(self):
        if self._fits is None:
            import fitsio

            # cfitsio recognises and decompresses a gzip file itself.
            self._fits = fitsio.FITS(os.fspath(self.path), "r")  # fspath: a remote file is fetched first
        return self._fits

    def _read_row(self, index, row, columns):
        data = self._fitsio()[index].read(rows=[row], columns=list(columns))
        return {name: data[name][0] for name in columns}

    def _read_column(self, index, column):
        return self._fitsio()[index].read_column(column)

    def _read_image_row(self, index, row):
        hdu = self._fitsio()[index]
        if self._axis(index, "NAXIS") == 1:
            return hdu.read()
        return hdu[row:row + 1, :][0]

    def _close_backend(self) -> None:
        if self._fits is not None:
            self._fits.close()


_BACKEND_CLASSES = {"astropy": AstropyFits, "fitsio": FitsioFits, "native": NativeFits}


def open_fits(path: str | os.PathLike, backend: str | None = None) -> FitsFile:
    """Open ``path`` for reading with the named backend (None: :data:`DEFAULT_BACKEND`).

    Every header is read and checked here: a file that is empty, not FITS, or shorter
    than its headers say fails now, whichever HDU is wanted later.

    Raises
    ------
    TransientReadError
        The file is missing or not readable (yet), or the OS failed to read it.
    SpectrumError
        The file is empty, not FITS, or malformed (:class:`FitsFormatError`).
    """
    backend_class = _BACKEND_CLASSES[resolve_backend(backend)]
    path = path if isinstance(path, Path) else Path(path)  # a remote file's path stays one
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
    path = path if isinstance(path, Path) else Path(path)
    with reading(path):
        return AstropyReference(path)


# --------------------------------------------------------------------------- the safety net
# Files the safety net has already warned about (bounded: a worker runs for weeks).
_RESCUED: OrderedDict[str, None] = OrderedDict()
_RESCUED_LIMIT = 10_000
_RESCUED_LOCK = threading.Lock()


def _warn_once(path: str | os.PathLike, error: SpectrumError) -> None:
    """Log that astropy read a file the native backend rejected, once per file."""
    key = os.fspath(path)
    with _RESCUED_LOCK:
        if key in _RESCUED:
            return
        _RESCUED[key] = None
        if len(_RESCUED) > _RESCUED_LIMIT:
            _RESCUED.popitem(last=False)
    log.warning("%s: the native FITS reader failed (%s); used astropy's reading instead. "
                "Please report this file: specq's parser should handle it.", key, error)


def _second_opinion(path: str | os.PathLike, where: str, action: Callable[[FitsFile], _T]) -> tuple[bool, Any]:
    """``(True, result)`` of ``action`` on an astropy-only opening of ``path``, else ``(False, None)``."""
    try:
        with open_reference(path) as handle, reading(path, where):
            return True, action(handle)
    except (TransientReadError, ChecksumError):
        # The file went away or the disk failed: the queue retries the whole call. Or astropy
        # reads it and its bytes do not add up: that is the answer, not the native error.
        raise
    except SpectrumError:
        return False, None
    except Exception:  # deliberately broad: the fallback must never turn a clean SpectrumError into a crash
        log.debug("%s: astropy's second opinion failed unexpectedly", path, exc_info=True)
        return False, None


def with_file(path: str | os.PathLike, backend: str | None, where: str, action: Callable[[FitsFile], _T]) -> _T:
    """Open ``path`` with ``backend`` and apply ``action``, behind the native backend's safety net.

    Parameters
    ----------
    path : path-like
    backend : str or None
        None: :data:`DEFAULT_BACKEND`.
    where : str
        Where in the file the action looks (``", HDU 1 row 0"``), for messages.
    action : callable
        Takes the open :class:`~workers.readers.native.FitsFile`.
    """
    name = resolve_backend(backend)
    try:
        with open_fits(path, name) as handle, reading(path, where):
            return action(handle)
    except ChecksumError:
        raise  # the bytes changed since they were written: no other reading makes them right
    except UnreadableStructureError:
        raise  # no reader lays it out, and astropy's attempt may never end (see the class)
    except SpectrumError as native_error:
        if name != "native":
            raise
        rescued, result = _second_opinion(path, where, action)
        if not rescued:
            raise  # astropy cannot read it either: the native error is the answer
        _warn_once(path, native_error)
        return result
