"""Readers: SDSS spectrum files → :class:`~workers.spectrum.Spectrum`.

Three calls serve the engine and the CLI:

- :func:`detect_format` — ``"spec-lite"``, ``"mwmVisit"``, ``"mwmStar"``, ``"apStar"``,
  ``"lamostDR7"``, ``"lamostDR8"``, ``"gaiaRVS"`` or ``"gaiaXP"``;
- :func:`list_spectra` — the spectra a pipeline would take from a file (headers only,
  plus a small id column where the ids live in the table);
- :func:`read_spectrum` — one spectrum's pixels, identity and header photometry.

Errors (:mod:`workers.readers.errors`): :class:`~workers.spectrum.SpectrumError` for a bad
file or an invalid request (permanent; :class:`FitsFormatError` when the bytes are not
valid FITS, :class:`FormatMismatchError` when the file name and the content name different
products); :class:`TransientReadError` when the file is missing, not readable yet, or the OS
failed to read it (the queue retries). Nothing else escapes for a bad file.

Each call takes ``backend=`` (``"native"``, ``"astropy"`` or ``"fitsio"``; None means
:data:`DEFAULT_BACKEND`, ``"native"``). The readers never read the environment: the
setting lives in :attr:`workers.settings.Settings.fits_backend` and callers pass it on.
Gzipped files (``*.fits.gz``; recognised by content, not name) are read by every backend.

Modules:

- :mod:`~workers.readers.header` — FITS header cards and the walk over a file's HDUs;
- :mod:`~workers.readers.native` — the file model and specq's own table/image reader;
- :mod:`~workers.readers.backends` — astropy and fitsio, the backend choice, and the
  astropy cross-check behind the native backend;
- :mod:`~workers.readers.formats` — the table format → detector, lister, reader;
- :mod:`~workers.readers.spec_lite`, :mod:`~workers.readers.mwm`,
  :mod:`~workers.readers.apstar` — one per SDSS product; :mod:`~workers.readers.lamost` and
  :mod:`~workers.readers.gaia` (ECSV and Parquet tables as well as FITS) for the other
  sources BossNet covers; :mod:`~workers.readers.common`
  — what they share.
"""
from __future__ import annotations

import importlib.util
import operator
import os
import time
from pathlib import Path
from typing import Iterable

from workers.readers import gaia
from workers.readers.backends import BACKENDS, DEFAULT_BACKEND, open_fits, open_reference, with_file
from workers.readers.checksum import ChecksumError
from workers.readers.errors import FitsFormatError, FormatMismatchError, TransientReadError
from workers.readers.formats import PRODUCTS, detect
from workers.readers.native import FitsFile, SpectrumSlot
from workers.spectrum import INSTRUMENTS, Spectrum, SpectrumError

__all__ = ["ChecksumError", "BACKENDS", "DEFAULT_BACKEND", "INSTRUMENTS", "PRODUCTS", "FitsFormatError", "FormatMismatchError",
           "SpectrumError", "SpectrumSlot", "TransientReadError", "detect_format", "list_spectra",
           "measure_readers", "open_fits", "open_reference", "read_spectrum"]


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
        One of :data:`PRODUCTS`.

    Raises
    ------
    SpectrumError
        Not FITS, empty, truncated, or a layout none of the readers knows;
        FormatMismatchError when the file name and the content name different products.
    TransientReadError
        Missing or unreadable file.
    """
    if gaia.is_table_file(path):  # ECSV or Parquet: not FITS
        return gaia.open_table(path)[0]
    return with_file(path, backend, "", lambda handle: detect(handle).name)


def list_spectra(path: str | os.PathLike, instrument: str,
                 backend: str | None = None) -> list[SpectrumSlot]:
    """The spectra of ``path`` that a pipeline for ``instrument`` would take.

    Computed from headers (row counts), plus one small id column per MWM table
    (``spectrum_pk_id``, a visit's ``catalogid``): no pixels are read.

    Parameters
    ----------
    path : path-like
    instrument : {"boss", "apogee", "lamost", "gaia_rvs", "gaia_xp"}
    backend : {"astropy", "fitsio", "native"}, optional

    Returns
    -------
    list of SpectrumSlot
        spec-lite: HDU 1 row 0 (BOSS). mwmVisit: every row of HDUs 1–2 (BOSS).
        mwmStar: rows of HDUs 1–2 (BOSS) or 3–4 (APOGEE). apStar: HDU 1 row 0 (APOGEE).
        LAMOST: DR7 HDU 0 row 0, DR8 HDU 1 row 0. Gaia RVS/XP tables: HDU 1, every row.
        Empty when the file holds nothing for ``instrument``.

    Raises
    ------
    SpectrumError
        A bad file (FormatMismatchError: name and content disagree).
    TransientReadError
        Missing or unreadable file.
    """
    if instrument not in INSTRUMENTS:
        raise ValueError(f"instrument must be one of {INSTRUMENTS}, not {instrument!r}")

    if gaia.is_table_file(path):
        return gaia.table_slots(path, instrument)

    def listing(handle: FitsFile) -> list[SpectrumSlot]:
        return detect(handle).list_slots(handle, instrument)

    return with_file(path, backend, "", listing)


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

    if gaia.is_table_file(path):
        return gaia.table_read(path, hdu, row, rel)

    def reader(handle: FitsFile) -> Spectrum:
        return detect(handle).read(handle, hdu, row, rel)

    return with_file(path, backend, f", HDU {hdu} row {row}", reader)


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
                continue  # a file none of the readers can list: nothing to time
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
