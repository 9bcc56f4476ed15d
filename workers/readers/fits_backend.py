"""The FITS access layer every reader goes through: two backends, one behaviour.

A reader never touches astropy or fitsio directly. It opens a file with
:func:`open_fits`, which checks the path, sniffs the FITS signature and hands back a
:class:`FitsFile` whose few methods (headers, one table row, one column, one image row)
behave the same under both backends. :func:`reading` turns what the libraries raise
into the two errors the queue understands:

- :class:`~workers.spectrum.SpectrumError` — the file is bad (not FITS, truncated,
  missing HDU or column...): permanent, never retried;
- :class:`TransientReadError` — the file is missing, not readable yet, or the disk
  failed: the queue retries.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from workers.spectrum import SpectrumError

BACKENDS = ("astropy", "fitsio")

# FITS files start with this card; anything else is not FITS at all.
_FITS_SIGNATURE = b"SIMPLE  ="
_FITS_BLOCK = 2880
# OS errors that retrying cannot cure.
_PERMANENT_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}


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


def _resolve_backend(backend: str | None) -> str:
    if backend is None:
        from workers.readers import DEFAULT_BACKEND  # late: the package picks the default

        return DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"unknown FITS backend {backend!r}: use one of {BACKENDS}")
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
    try:
        from astropy.io.fits.verify import VerifyError
    except ImportError:  # astropy is always installed, but the translation must not need it
        pass
    else:
        errors.append(VerifyError)
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


def header_to_dict(cards) -> dict[str, Any]:
    """Header cards as ``{KEYWORD: value}``; first occurrence wins, commentary cards dropped.

    Parameters
    ----------
    cards : iterable of (keyword, value)
    """
    out: dict[str, Any] = {}
    for key, value in cards:
        key = (key or "").strip().upper()
        if not key or key in ("COMMENT", "HISTORY", "CONTINUE") or key in out:
            continue
        if isinstance(value, str):
            value = value.rstrip()
        elif value is not None and not isinstance(value, (bool, int, float, complex)):
            value = None  # astropy's Undefined: a card without a value
        out[key] = value
    return out


def expected_data_size(header: dict[str, Any]) -> int:
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


class FitsFile:
    """An open FITS file: the operations the readers need, whatever the backend.

    Use :func:`open_fits` to get one. Arrays returned are native-endian copies that do
    not refer to the file, so they stay valid after :meth:`close`.

    Attributes
    ----------
    path : Path
    size : int
        File size in bytes when opened.
    backend : str
    """

    backend = ""

    def __init__(self, path: Path, size: int):
        self.path = path
        self.size = size
        self._headers: dict[int, dict[str, Any]] = {}

    # -- implemented by the backends ---------------------------------------------
    def hdu_count(self) -> int:
        raise NotImplementedError

    def _read_header(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def _data_start(self, index: int) -> int:
        raise NotImplementedError

    def _read_row(self, index: int, row: int, columns: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _read_column(self, index: int, column: str) -> np.ndarray:
        raise NotImplementedError

    def _read_image_row(self, index: int, row: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- shared behaviour -----------------------------------------------------------
    def __enter__(self) -> "FitsFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def header(self, index: int) -> dict[str, Any]:
        """The header of HDU ``index`` as a dict (cached)."""
        if index not in self._headers:
            self._headers[index] = self._read_header(index)
        return self._headers[index]

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
        return self.header(index).get("XTENSION") in ("BINTABLE", "TABLE")

    def is_image(self, index: int) -> bool:
        hdr = self.header(index)
        return index == 0 or hdr.get("XTENSION") == "IMAGE"

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
        hdr = self.header(index)
        count = int(hdr.get("TFIELDS", 0) or 0)
        return [str(hdr.get(f"TTYPE{i}", "")).strip() for i in range(1, count + 1)]

    def find_column(self, index: int, *candidates: str) -> str | None:
        """The first of ``candidates`` present in the table, matched case-insensitively."""
        by_lower = {name.lower(): name for name in self.columns(index)}
        for candidate in candidates:
            if candidate.lower() in by_lower:
                return by_lower[candidate.lower()]
        return None

    def check_complete(self, index: int) -> None:
        """Raise SpectrumError when the HDU's data run past the end of the file."""
        end = self._data_start(index) + expected_data_size(self.header(index))
        if end > self.size:
            raise SpectrumError(
                f"{self.path}: file is truncated: {self.describe(index)} needs {end} bytes, "
                f"the file has {self.size}")

    def read_row(self, index: int, row: int, columns: list[str]) -> dict[str, np.ndarray]:
        """One row of a table: ``{column: value}`` for the named (exact) columns."""
        self.check_complete(index)
        return {name: _native(value) for name, value in self._read_row(index, row, columns).items()}

    def read_column(self, index: int, column: str) -> np.ndarray:
        """A whole (small, scalar) column of a table."""
        self.check_complete(index)
        return _native(self._read_column(index, column))

    def read_image_row(self, index: int, row: int) -> np.ndarray:
        """Row ``row`` of a 2-D image, or the whole of a 1-D image (``row`` 0)."""
        self.check_complete(index)
        return _native(self._read_image_row(index, row))


def _native(value) -> np.ndarray:
    """A native-endian copy: detached from the file and safe to hand to torch."""
    array = np.array(value)  # copies
    if array.dtype.byteorder not in ("=", "|") and array.dtype.kind not in "SUO":
        array = array.astype(array.dtype.newbyteorder("="))
    return array


class _AstropyFits(FitsFile):
    backend = "astropy"

    def __init__(self, path: Path, size: int):
        super().__init__(path, size)
        from astropy.io import fits

        # memmap off on purpose: every spectrum is copied out anyway, the files are small
        # (one spectrum to a few MB), and a mapping of a file on network storage turns a
        # file replaced or truncated under a worker into SIGBUS instead of an exception.
        # Lazy loading parses only the headers we ask for.
        self._hdul = fits.open(path, memmap=False, lazy_load_hdus=True,
                               do_not_scale_image_data=False)

    def hdu_count(self) -> int:
        return len(self._hdul)

    def _read_header(self, index: int) -> dict[str, Any]:
        header = self._hdul[index].header
        return header_to_dict((card.keyword, card.value) for card in header.cards)

    def _data_start(self, index: int) -> int:
        return int(self._hdul.fileinfo(index)["datLoc"])

    def _read_row(self, index, row, columns):
        data = self._hdul[index].data
        return {name: data.field(name)[row] for name in columns}

    def _read_column(self, index, column):
        return self._hdul[index].data.field(column)

    def _read_image_row(self, index, row):
        hdu = self._hdul[index]
        if int(self.header(index).get("NAXIS", 0)) == 1:
            return hdu.section[:]
        return hdu.section[row]  # reads just that row, even with memmap off

    def close(self) -> None:
        self._hdul.close()


class _FitsioFits(FitsFile):
    backend = "fitsio"

    def __init__(self, path: Path, size: int):
        super().__init__(path, size)
        import fitsio

        self._fits = fitsio.FITS(str(path), "r")

    def hdu_count(self) -> int:
        return len(self._fits)

    def _read_header(self, index: int) -> dict[str, Any]:
        header = self._fits[index].read_header()
        return header_to_dict((rec.get("name"), rec.get("value")) for rec in header.records())

    def _data_start(self, index: int) -> int:
        return int(self._fits[index].get_offsets()["data_start"])

    def _read_row(self, index, row, columns):
        data = self._fits[index].read(rows=[row], columns=list(columns))
        return {name: data[name][0] for name in columns}

    def _read_column(self, index, column):
        return self._fits[index].read_column(column)

    def _read_image_row(self, index, row):
        hdu = self._fits[index]
        if int(self.header(index).get("NAXIS", 0)) == 1:
            return hdu.read()
        return hdu[row:row + 1, :][0]

    def close(self) -> None:
        self._fits.close()


def _sniff(path: Path) -> int:
    """Check the path is a readable, non-empty FITS file; return its size in bytes."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(len(_FITS_SIGNATURE))
    except OSError as exc:
        raise _oserror_to_transient_or_bad(path, exc, "") from exc
    if size == 0:
        raise SpectrumError(f"{path}: empty file (0 bytes), not a FITS file")
    if head != _FITS_SIGNATURE:
        raise SpectrumError(f"{path}: not a FITS file (it does not start with 'SIMPLE  =')")
    if size < _FITS_BLOCK:
        raise SpectrumError(f"{path}: file is truncated ({size} bytes, less than one FITS header block)")
    return size


def open_fits(path: str | os.PathLike, backend: str | None = None) -> FitsFile:
    """Open ``path`` for reading with the named backend (None: the package default).

    Raises
    ------
    TransientReadError
        The file is missing or not readable (yet), or the OS failed to read it.
    SpectrumError
        The file is empty, not FITS, or malformed.
    """
    backend = _resolve_backend(backend)
    path = Path(path)
    size = _sniff(path)
    with reading(path):
        handle = _FitsioFits(path, size) if backend == "fitsio" else _AstropyFits(path, size)
        try:
            if handle.hdu_count() < 1:
                raise SpectrumError(f"{path}: no HDU could be read")
        except BaseException:
            handle.close()
            raise
    return handle


def header_float(header: dict[str, Any], *keys: str) -> float | None:
    """First of ``keys`` holding a finite number (APOGEE's -9999.99 sentinel counts as absent)."""
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if np.isfinite(value) and value > -9999.0:
            return value
    return None


def header_int(header: dict[str, Any], *keys: str) -> int | None:
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


def header_str(header: dict[str, Any], *keys: str) -> str | None:
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
    loglam = start + step * (np.arange(npix, dtype=np.float64) + 1.0 - reference)
    return check_wavelength(path, where, 10.0 ** loglam)


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
        hint = " (the file looks truncated)" if handle.size % _FITS_BLOCK else ""
        raise SpectrumError(f"{handle.path}: HDU {index} does not exist: the file has {count} HDUs{hint}")


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


def synthetic_truth(primary: dict[str, Any], table: dict[str, Any] | None = None,
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
