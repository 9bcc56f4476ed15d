"""Readers: SDSS spectrum files → :class:`~workers.spectrum.Spectrum`.

Three calls serve the engine and the CLI:

- :func:`detect_format` — ``"spec-lite"``, ``"mwmVisit"``, ``"mwmStar"`` or ``"apStar"``;
- :func:`list_spectra` — the spectra a pipeline would take from a file (headers only,
  plus a small id column where the ids live in the table);
- :func:`read_spectrum` — one spectrum's pixels, identity and header photometry.

Errors: :class:`~workers.spectrum.SpectrumError` for a bad file or an invalid request
(permanent); :class:`TransientReadError` when the file is missing, not readable yet, or
the OS failed to read it (the queue retries). Nothing else escapes for a bad file.

Headers are always parsed by specq itself (one pass over the file, which also catches
truncation); three interchangeable backends read the data: ``"astropy"`` (the
reference, always available), ``"fitsio"`` (optional) and ``"native"`` (numpy reads of
the bytes the headers point at). They give identical spectra (tests/test_readers.py
checks it); :func:`measure_readers` times them. Each call takes ``backend=``;
:data:`DEFAULT_BACKEND` (used when it is None) is ``"native"`` unless the environment
variable ``SPECQ_FITS_BACKEND`` names another when the package is imported.

Gzipped files (``*.fits.gz``; recognised by content, not name) are read by every
backend, decompressed in memory.

Safety net: when the native backend raises SpectrumError, the same call is made again
with astropy reading everything, headers included. If astropy succeeds its result is
returned and a warning naming the native error is logged (once per file): the file
shows a gap in specq's own parser. If astropy fails too, the native error stands.
TransientReadError is never retried this way (the queue retries it).
"""
from __future__ import annotations

import importlib.util
import logging
import operator
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from workers.readers import apstar, mwm, spec_lite
from workers.readers.fits_backend import (BACKENDS, FitsFile, SpectrumSlot, TransientReadError,
                                          open_fits, open_reference, reading, resolve_backend)
from workers.spectrum import Spectrum, SpectrumError

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "FORMATS", "INSTRUMENTS", "SpectrumSlot",
           "TransientReadError", "detect_format", "list_spectra", "measure_readers",
           "read_spectrum"]

FORMATS = ("spec-lite", "mwmVisit", "mwmStar", "apStar")
INSTRUMENTS = ("boss", "apogee")

# Per spectrum on synthetic files (measure_readers, 2-core VM, apStar .. spec-lite):
# astropy 3-70 ms, fitsio 1.4-15 ms, native 0.8-5 ms; all three give identical spectra.
DEFAULT_BACKEND = os.environ.get("SPECQ_FITS_BACKEND", "").strip().lower() or "native"
if DEFAULT_BACKEND not in BACKENDS:
    raise ImportError(f"SPECQ_FITS_BACKEND={DEFAULT_BACKEND!r}: use one of {BACKENDS}")

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# Files the safety net has already warned about (bounded: a worker runs for weeks).
_RESCUED: OrderedDict[str, None] = OrderedDict()
_RESCUED_LIMIT = 10_000
_RESCUED_LOCK = threading.Lock()

# FILETYPE values (a card some SDSS products carry) → our format names.
_FILETYPES = {"spec-lite": "spec-lite", "speclite": "spec-lite", "spec": "spec-lite",
              "mwmvisit": "mwmVisit", "mwmstar": "mwmStar", "apstar": "apStar", "asstar": "apStar"}
# Last resort: the SDSS file-name conventions.
_NAME_PATTERNS = ((re.compile(r"spec-\d+-\d+-\d+\.fits", re.I), "spec-lite"),
                  (re.compile(r"mwmVisit-.+\.fits", re.I), "mwmVisit"),
                  (re.compile(r"mwmStar-.+\.fits", re.I), "mwmStar"),
                  (re.compile(r"a[ps]Star-.+\.fits", re.I), "apStar"))


def _detect(handle: FitsFile) -> str:
    """The format of an open file: FILETYPE card, then HDU layout, then file name."""
    filetype = handle.header(0).get("FILETYPE")
    if isinstance(filetype, str) and filetype.strip().lower() in _FILETYPES:
        return _FILETYPES[filetype.strip().lower()]
    if mwm.looks_like(handle):
        return mwm.kind(handle)
    if spec_lite.looks_like(handle):
        return spec_lite.FORMAT
    if apstar.looks_like(handle):
        return apstar.FORMAT
    for pattern, fmt in _NAME_PATTERNS:
        if pattern.fullmatch(handle.name):
            return fmt
    layout = ", ".join(handle.describe(i) for i in range(handle.hdu_count()))
    raise SpectrumError(f"{handle.path}: unknown file layout ({layout}): expected a spec-lite, "
                        f"mwmVisit, mwmStar or apStar file")


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
    except TransientReadError:
        raise  # the file went away or the disk failed: the queue retries the whole call
    except SpectrumError:
        return False, None
    except Exception:  # deliberately broad: the fallback must never turn a clean SpectrumError into a crash
        log.debug("%s: astropy's second opinion failed unexpectedly", path, exc_info=True)
        return False, None


def _with_file(path: str | os.PathLike, backend: str | None, where: str,
               action: Callable[[FitsFile], _T]) -> _T:
    """Open ``path`` with ``backend`` and apply ``action``, behind the native backend's safety net."""
    name = resolve_backend(backend)
    try:
        with open_fits(path, name) as handle, reading(path, where):
            return action(handle)
    except SpectrumError as native_error:
        if name != "native":
            raise
        rescued, result = _second_opinion(path, where, action)
        if not rescued:
            raise  # astropy cannot read it either: the native error is the answer
        _warn_once(path, native_error)
        return result


def detect_format(path: str | os.PathLike, backend: str | None = None) -> str:
    """Which SDSS product ``path`` is.

    Parameters
    ----------
    path : path-like
    backend : {"astropy", "fitsio", "native"}, optional
        Default :data:`DEFAULT_BACKEND`.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    SpectrumError
        Not FITS, empty, truncated, or a layout none of the readers knows.
    TransientReadError
        Missing or unreadable file.
    """
    return _with_file(path, backend, "", _detect)


def list_spectra(path: str | os.PathLike, instrument: str,
                 backend: str | None = None) -> list[SpectrumSlot]:
    """The spectra of ``path`` that a pipeline for ``instrument`` would take.

    Computed from headers (row counts), plus one small id column per MWM table
    (``spectrum_pk_id``, a visit's ``catalogid``): no pixels are read.

    Parameters
    ----------
    path : path-like
    instrument : {"boss", "apogee"}
    backend : {"astropy", "fitsio", "native"}, optional

    Returns
    -------
    list of SpectrumSlot
        spec-lite: HDU 1 row 0 (BOSS). mwmVisit: every row of HDUs 1–2 (BOSS).
        mwmStar: rows of HDUs 1–2 (BOSS) or 3–4 (APOGEE). apStar: HDU 1 row 0 (APOGEE).
        Empty when the file holds nothing for ``instrument``.

    Raises
    ------
    SpectrumError
        A bad file, or APOGEE visits asked of an mwmVisit file (not valid AstroNN input).
    TransientReadError
        Missing or unreadable file.
    """
    if instrument not in INSTRUMENTS:
        raise ValueError(f"instrument must be one of {INSTRUMENTS}, not {instrument!r}")

    def listing(handle: FitsFile) -> list[SpectrumSlot]:
        fmt = _detect(handle)
        if fmt == spec_lite.FORMAT:
            return spec_lite.list_slots(handle, instrument)
        if fmt == apstar.FORMAT:
            return apstar.list_slots(handle, instrument)
        return mwm.list_slots(handle, fmt, instrument)

    return _with_file(path, backend, "", listing)


def read_spectrum(path: str | os.PathLike, hdu: int, row: int, rel_path: str | None = None,
                  backend: str | None = None) -> Spectrum:
    """Read one spectrum.

    Parameters
    ----------
    path : path-like
        The file to open.
    hdu, row : int
        Where the spectrum is (as :func:`list_spectra` gives it).
    rel_path : str, optional
        Stored as ``Spectrum.path`` (the reference's path under the data root);
        default ``str(path)``.
    backend : {"astropy", "fitsio", "native"}, optional
        Default :data:`DEFAULT_BACKEND`; all give the same arrays.

    Returns
    -------
    Spectrum
        Wavelength (float64, vacuum Å), flux (float32); BOSS: ``ivar``; APOGEE: ``error``
        and ``bitmask`` (mwmStar also ``ivar``); ids; ``meta`` with the header
        photometry (``k_mag``, ``ebv``, ``plx``, ``e_plx`` … where the file has them)
        and ``format``.

    Raises
    ------
    SpectrumError
        Bad file or invalid address (missing HDU, row out of range, missing columns,
        inconsistent lengths, bad wavelength grid); the message names file, HDU and row.
    TransientReadError
        Missing or unreadable file, or an I/O error.
    """
    hdu, row = operator.index(hdu), operator.index(row)
    rel = str(path) if rel_path is None else str(rel_path)

    def reader(handle: FitsFile) -> Spectrum:
        fmt = _detect(handle)
        if fmt == spec_lite.FORMAT:
            return spec_lite.read(handle, hdu, row, rel)
        if fmt == apstar.FORMAT:
            return apstar.read(handle, hdu, row, rel)
        return mwm.read(handle, fmt, hdu, row, rel)

    return _with_file(path, backend, f", HDU {hdu} row {row}", reader)


def measure_readers(paths: Iterable[str | os.PathLike], repeat: int = 3,
                    backends: Iterable[str] | None = None) -> dict[str, float]:
    """Seconds per spectrum read, for each backend, over every spectrum of ``paths``.

    Each file is listed for both instruments and each listed spectrum read ``repeat``
    times per backend (the listing is not timed). Backends that are not installed are
    left out.

    Parameters
    ----------
    paths : iterable of path-like
    repeat : int
    backends : iterable of str, optional
        Default: all of :data:`BACKENDS` that are installed.

    Returns
    -------
    dict
        ``{backend: seconds per spectrum}``.
    """
    if backends is None:
        backends = [b for b in BACKENDS if b != "fitsio" or importlib.util.find_spec("fitsio") is not None]
    targets: list[tuple[Path, int, int]] = []
    for path in paths:
        for instrument in INSTRUMENTS:
            try:
                slots = list_spectra(path, instrument, backend="astropy")
            except SpectrumError:
                continue  # e.g. APOGEE visits of an mwmVisit: nothing a pipeline reads
            targets.extend((Path(path), slot.hdu, slot.row) for slot in slots)
    if not targets:
        raise ValueError("measure_readers: no readable spectra in the given paths")
    timings: dict[str, float] = {}
    for backend in backends:
        start = time.perf_counter()
        for _ in range(repeat):
            for path, hdu, row in targets:
                read_spectrum(path, hdu, row, backend=backend)
        timings[backend] = (time.perf_counter() - start) / (repeat * len(targets))
    return timings
