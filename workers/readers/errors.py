"""The errors readers raise, and the one place library exceptions are translated into them.

::

    Exception
    ├── SpectrumError (workers.spectrum)  permanent: the spectrum becomes a flagged row
    │   ├── FitsFormatError               the bytes are not whole, valid FITS (not FITS,
    │   │   │                             truncated, corrupt header, impossible sizes, bad gzip)
    │   │   └── UnreadableStructureError  a size outside the standard's range, or too many HDUs
    │   ├── FormatMismatchError           the file name names one SDSS product, the content
    │   │                                 is another
    │   └── ChecksumError (checksum.py)   an HDU does not add up to its DATASUM/CHECKSUM
    └── TransientReadError                not readable *now* (missing, permission, I/O error):
                                          the queue retries

Every other :class:`~workers.spectrum.SpectrumError` a reader raises is about a valid FITS
file that does not hold what was asked (unknown layout, missing column, row out of range,
bad wavelength grid).
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from workers.spectrum import SpectrumError

__all__ = ["FitsFormatError", "FormatMismatchError", "SpectrumError", "TransientReadError", "TruncatedFitsError",
           "UnreadableStructureError", "reading"]


class TransientReadError(Exception):
    """The file could not be read *now* (missing, not readable yet, I/O error): retry later.

    Deliberately not a :class:`~workers.spectrum.SpectrumError`: a bad file is permanent,
    this is not.
    """


class FitsFormatError(SpectrumError):
    """The file is not whole, valid FITS: not FITS at all, truncated, a corrupt header,
    structural keywords (BITPIX, NAXISn, PCOUNT, TFORMn …) that are impossible or
    disagree with the file's size, or a corrupt gzip stream."""


class UnreadableStructureError(FitsFormatError):
    """The headers declare a structure no reader should attempt: a structural keyword
    (NAXIS, NAXISn, PCOUNT, GCOUNT) outside the FITS standard's range (NAXIS over 999, a
    negative size), or more HDUs than any spectrum file has. Final: astropy's attempt may
    not end (NAXIS1 = -1 has it list HDUs until memory runs out), so the native backend's
    second opinion is not asked."""


class TruncatedFitsError(FitsFormatError):
    """The file ends before its structure does (a header without END, a data unit longer
    than the file, a gzip stream without its end): a file still being written looks so."""


class FormatMismatchError(SpectrumError):
    """The file name says one SDSS product (``mwmStar-…``) and the content another."""


# OS errors that retrying cannot cure. EINVAL, EOVERFLOW and EFBIG come from a seek or read
# at an offset a header made up (astropy seeking past a header's 10**12-row table): the
# file's content, not the disk, so the same every time.
_PERMANENT_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP,
                     errno.EINVAL, errno.EOVERFLOW, errno.EFBIG}


def _oserror_to_transient_or_bad(path: Path, exc: OSError, where: str) -> Exception:
    """Classify an OSError: a real OS failure (errno set) is transient, a library's is not."""
    # The text names the reason, never a promise: on the last attempt it is the row's error.
    if isinstance(exc, FileNotFoundError):
        return TransientReadError(f"{path}: {_missing(Path(path))}")
    if isinstance(exc, PermissionError):
        return TransientReadError(f"{path}: permission denied")
    if exc.errno is not None and exc.errno not in _PERMANENT_ERRNOS:
        return TransientReadError(f"{path}: I/O error {exc.strerror or exc}")
    return SpectrumError(f"{path}{where}: not a readable FITS file ({exc})")


def _missing(path: Path) -> str:
    """Why a file is not there: a link to nothing, or no file at all."""
    try:
        return f"a broken link (to {os.readlink(path)})" if path.is_symlink() else "file not found"
    except OSError:
        return "file not found"


def _decoding_errors() -> tuple[type[BaseException], ...]:
    """What the FITS libraries raise on a malformed file (besides OSError)."""
    errors: list[type[BaseException]] = [ValueError, TypeError, KeyError, IndexError,
                                         EOFError, OverflowError]
    # Only astropy raises VerifyError, and only once it is imported: do not import it here.
    verify = sys.modules.get("astropy.io.fits.verify")
    if verify is not None:
        errors.append(verify.VerifyError)
    return tuple(errors)


class _Reading:
    """The context manager :func:`reading` returns (a class: entered for every file read,
    it costs less than a generator's)."""

    __slots__ = ("path", "where")

    def __init__(self, path: str | os.PathLike, where: str):
        self.path, self.where = path, where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, traceback) -> bool:
        if exc is None or isinstance(exc, (SpectrumError, TransientReadError)):
            return False
        if isinstance(exc, OSError):
            raise _oserror_to_transient_or_bad(Path(self.path), exc, self.where) from exc
        if isinstance(exc, _decoding_errors()):
            raise SpectrumError(f"{Path(self.path)}{self.where}: malformed FITS file "
                                f"({type(exc).__name__}: {exc})") from exc
        return False


def reading(path: str | os.PathLike, where: str = "") -> _Reading:
    """Translate library exceptions raised in the block into SpectrumError / TransientReadError.

    specq's own parser raises the project's errors itself; this is for what astropy,
    fitsio and the OS raise.

    Parameters
    ----------
    path : path-like
        The file, for the message.
    where : str
        Where in the file (e.g. ``", HDU 1 row 0"``), appended to the path in messages.
    """
    return _Reading(path, where)
