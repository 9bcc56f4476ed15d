"""Whether a file has arrived whole: its structure, not its last close, says so.

A transfer can close a file before it is complete (scp, rsync without a temporary name,
an instrument writing in parts). A file is whole when every HDU's header ends, the sizes
its headers declare fit in its length, and, gzip-compressed, its stream ends. A file that
is whole but wrong (not FITS, a corrupt header) counts as arrived: its row will say why.
"""
from __future__ import annotations

from pathlib import Path

from workers.readers.errors import FitsFormatError, TruncatedFitsError


def why_incomplete(path: str | Path) -> str | None:
    """None when ``path`` holds a whole file; else why it is not (yet) whole.

    An empty file, a truncated structure, or a file that cannot be opened now
    (permissions still being set) are not whole: look again later.
    """
    from workers.readers.header import scan_headers
    from workers.readers.native import _open_data

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty so far"
        stream, size, _ = _open_data(path)
        with stream:
            scan_headers(path, stream, size)
    except TruncatedFitsError as exc:
        return str(exc)
    except FitsFormatError:
        return None  # whole, but not good FITS: the worker flags it
    except OSError as exc:  # gone, or not readable yet
        return f"cannot be opened now: {exc.strerror or exc}"
    return None
