"""What the format readers (spec_lite, mwm, apstar) share: typed header values,
wavelength grids, and the checks whose messages name the file, HDU and row."""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from workers.readers.native import FitsFile
from workers.spectrum import SpectrumError, log10_grid

__all__ = ["check_hdu", "check_row", "check_wavelength", "header_float", "header_int", "header_str",
           "log_lambda_grid", "python_scalar", "require_columns", "wavelength_of_log10"]

_INTEGER_TEXT = re.compile(r"-?[0-9]+")  # what header_int reads from a string card


def header_float(header: Mapping[str, Any], *keys: str) -> float | None:
    """First of ``keys`` holding a finite number (APOGEE's -9999.99 sentinel counts as absent)."""
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if math.isfinite(value) and value > -9999.0:
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
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        # One optional sign, ASCII digits: lstrip("-").isdigit() let '--5' through to int(),
        # whose ValueError lost the whole file for one garbled ID card.
        if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
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
    """Vacuum wavelengths in Å of a log10-linear grid, validated: the shared read-only
    array of :func:`workers.spectrum.log10_grid`.

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
    if not (math.isfinite(start) and math.isfinite(step)) or step <= 0:
        raise SpectrumError(f"{path}{where}: invalid wavelength grid CRVAL={start} CDELT={step}")
    reference = 1.0 if crpix is None else float(crpix)
    wavelength = log10_grid(start, step, npix, reference)
    problem = _log_lambda_problem(float(start), float(step), int(npix), reference)
    if problem:
        raise SpectrumError(f"{path}{where}: {problem}")
    return wavelength


@functools.lru_cache(maxsize=64)
def _log_lambda_problem(start: float, step: float, npix: int, reference: float) -> str | None:
    """What is wrong with the grid of these numbers, checked once (every apStar shares one)."""
    return _grid_problem(log10_grid(start, step, npix, reference))


def wavelength_of_log10(path: Path, where: str, loglam: np.ndarray) -> np.ndarray:
    """Vacuum wavelengths in Å from a column of log10(Å) (``10 ** loglam``), validated; a copy."""
    wavelength, problem = _powers_of_ten(loglam.tobytes(), loglam.dtype.str, loglam.shape)
    if problem:
        raise SpectrumError(f"{path}{where}: {problem}")
    return wavelength.copy()


@functools.lru_cache(maxsize=16)
def _powers_of_ten(data: bytes, dtype: str, shape: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
    """``10 ** x`` in float64 for the array of these bytes, computed and checked once; read-only.

    The files of one survey share a handful of log-wavelength columns, and the power is
    by far the dearest step of reading one: the bytes are the key.
    """
    wavelength = 10.0 ** np.frombuffer(data, dtype).reshape(shape).astype(np.float64)
    wavelength.flags.writeable = False
    return wavelength, _grid_problem(wavelength)


def _grid_problem(wavelength: np.ndarray) -> str | None:
    """What is wrong with a wavelength grid (not finite, positive and increasing), or None."""
    if wavelength.size == 0:
        return "empty spectrum (0 pixels)"
    if not np.all(np.isfinite(wavelength)):
        return "the wavelength grid has non-finite values"
    if wavelength[0] <= 0 or np.any(np.diff(wavelength) <= 0):
        return "the wavelength grid is not positive and increasing"
    return None


def check_wavelength(path: Path, where: str, wavelength: np.ndarray) -> np.ndarray:
    """Raise SpectrumError unless the grid is finite, positive and increasing."""
    problem = _grid_problem(wavelength)
    if problem:
        raise SpectrumError(f"{path}{where}: {problem}")
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
