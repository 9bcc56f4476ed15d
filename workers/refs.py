"""`SpectrumRef`: what a producer enqueues — a spectrum's address, never its pixels.

A reference names a file relative to the data root, the HDU and row inside it, the
ids where known and optionally per-star photometry. Workers resolve it against their
own data root, so hosts may mount the data at different paths, and a reference can
never reach outside that root.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ID_KEYS = ("sdss_id", "catalogid", "spectrum_pk", "apogee_id", "gaia_dr3_source_id")
# The result store keys a row by "path:hdu:row" in 512 characters: a longer path could
# not be written, and its spectrum would be lost, so it is refused up front.
MAX_PATH_CHARS = 480
# HDU and row numbers: the result store keeps them as 32-bit integers.
MAX_INDEX = 2**31 - 1


class RefError(ValueError):
    """A reference is malformed or points outside the data root."""


@dataclass(frozen=True)
class SpectrumRef:
    """The address of one spectrum.

    Parameters
    ----------
    path : str
        POSIX path relative to the data root.
    hdu, row : int or None
        Where the spectrum lives in the file. None for a file the producer could not
        open: the worker then records why, so even that file ends as one result row.
    ids : dict
        ``sdss_id``, ``catalogid``, ``spectrum_pk``, ``apogee_id`` where known.
    photometry : dict
        Optional per-star values for the pipelines that read them: the keys are the
        registered pipelines' ``message_extras`` (AstroNN's ``k_mag``, ``ebv``, ``plx``,
        ``e_plx``, which win over a source catalog and the file header).
    local_file : str, optional
        ``specq run`` only: the file to read, named on its command line. ``path`` is
        then the name the user gave (kept as given, outside the data root too) and
        nothing is confined to the data root. Such a reference never travels in a
        message (:meth:`to_json` refuses it, :meth:`from_json` cannot make one).
    """

    path: str
    hdu: int | None = None
    row: int | None = None
    ids: Mapping[str, Any] = field(default_factory=dict)
    photometry: Mapping[str, float] = field(default_factory=dict)
    local_file: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.local_file is None:
            object.__setattr__(self, "path", normalize_path(self.path))
        elif not isinstance(self.path, str) or not self.path or "\x00" in self.path:
            raise RefError(f"a local reference needs a name, got {self.path!r}")
        if (self.hdu is None) != (self.row is None):
            raise RefError(f"{self.path}: give both hdu and row (one spectrum) or neither (the whole file), "
                           f"not hdu={self.hdu!r} and row={self.row!r}")
        for name in ("hdu", "row"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise RefError(f"{name} must be a non-negative integer, got {value!r}")
                if value > MAX_INDEX:
                    raise RefError(f"{name} {value} is out of range (at most {MAX_INDEX}, the result store's "
                                   f"32-bit integers)")
        unknown = set(self.ids) - set(ID_KEYS)
        if unknown:
            raise RefError(f"unknown id field(s) {sorted(unknown)}; expected some of {ID_KEYS}")
        for k, v in self.ids.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, str))):
                raise RefError(f"id {k} must be an integer or a string, got {v!r}")
        if self.photometry:
            from workers.registry import message_extras  # the specs: numpy, no torch

            known = message_extras()
            unknown = set(self.photometry) - set(known)
            if unknown:
                raise RefError(f"unknown photometry field(s) {sorted(unknown)}; expected some of {known}")
        for k, v in self.photometry.items():
            if v is not None and not isinstance(v, (int, float)):
                raise RefError(f"photometry {k} must be a number, got {v!r}")

    @property
    def key(self) -> str:
        """Canonical spectrum key: ``path:hdu:row`` (``*`` where unknown)."""
        hdu = "*" if self.hdu is None else self.hdu
        row = "*" if self.row is None else self.row
        return f"{self.path}:{hdu}:{row}"

    def to_json(self) -> dict:
        """A JSON-safe dict (what travels in a task message)."""
        if self.local_file is not None:
            raise RefError(f"{self.path}: a reference to a local file (specq run) cannot be sent")
        # Built field by field, not by dataclasses.asdict (a deep copy): a producer sends
        # thousands a second, and the values are ints, strings and floats.
        d: dict[str, Any] = {"path": self.path, "hdu": self.hdu, "row": self.row}
        if self.ids:
            d["ids"] = dict(self.ids)
        photometry = {k: (None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                      for k, v in self.photometry.items()}
        if photometry:
            d["photometry"] = photometry
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SpectrumRef":
        """Validate a dict from a message; `RefError` on anything malformed."""
        if not isinstance(data, Mapping):
            raise RefError(f"a spectrum reference must be an object, got {type(data).__name__}")
        unknown = set(data) - {"path", "hdu", "row", "ids", "photometry"}
        if unknown:
            raise RefError(f"unknown reference field(s) {sorted(unknown)}")
        if "path" not in data or not isinstance(data["path"], str):
            raise RefError("a spectrum reference needs a string 'path'")
        ids, photometry = data.get("ids") or {}, data.get("photometry") or {}
        if not isinstance(ids, Mapping) or not isinstance(photometry, Mapping):
            raise RefError("'ids' and 'photometry' must be objects")
        return cls(path=data["path"], hdu=data.get("hdu"), row=data.get("row"), ids=dict(ids),
                   photometry=dict(photometry))

    def resolve(self, data_root: str | os.PathLike) -> Path:
        """The file on this host; `RefError` if it would leave ``data_root`` (symlinks included).

        A local reference (``specq run``) is its ``local_file``, wherever that is.
        """
        if self.local_file is not None:
            return Path(self.local_file)
        return confine(self.path, data_root)


def check_text(path: str) -> None:
    """`RefError` for a name with bytes that are not UTF-8 (Linux allows them: Python holds
    them as lone surrogates): messages, result stores and text files hold names as UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        try:  # bytes of a file name as \xNN; any other lone surrogate (from JSON) as \udNNN
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            shown = path.encode("utf-8", "backslashreplace").decode("utf-8")
        raise RefError(f"{shown}: the name is not UTF-8 text; rename the file") from None


def normalize_path(path: str, limit: bool = True) -> str:
    """A clean relative POSIX path; refuses absolute paths, ``..``, empty names and, with
    ``limit``, paths longer than :data:`MAX_PATH_CHARS` (the result store's key)."""
    if not isinstance(path, str) or not path.strip():
        raise RefError("empty path")
    if "\x00" in path:
        raise RefError("path contains a NUL byte")
    check_text(path)
    posix = path.replace(os.sep, "/")
    if posix.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise RefError(f"{path!r}: references are relative to the data root, not absolute")
    # PurePosixPath's parts, without building one: the names between slashes, less "" and ".".
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise RefError(f"{path!r}: '..' is not allowed in a reference")
    if not parts:
        raise RefError(f"{path!r}: names no file")
    clean = "/".join(parts)
    if limit and len(clean) > MAX_PATH_CHARS:
        raise RefError(f"{clean[:60]}…: a path of {len(clean)} characters; references are limited to "
                       f"{MAX_PATH_CHARS} (the result store's key)")
    return clean


# Linux: a path opened without being read (O_PATH) names its real path in /proc.
_O_PATH = getattr(os, "O_PATH", None)
_DESCRIPTOR_LINKS = "/proc/self/fd/"


def _real_path(path: str) -> str:
    """``os.path.realpath(path)``, asked of the kernel where it can answer.

    ``os.path.realpath`` looks at every component of the path in turn, in Python; on Linux
    the kernel resolves an existing path in one open (``O_PATH``: nothing is read) and
    names the result under ``/proc/self/fd``. Anything else (no such file, a loop, no
    ``/proc``, another OS, a name the kernel marks as deleted) is left to ``os.path.realpath``.
    """
    if _O_PATH is not None:
        try:
            descriptor = os.open(path, _O_PATH | os.O_CLOEXEC)
        except (OSError, ValueError):
            return os.path.realpath(path)
        try:
            real = os.readlink(f"{_DESCRIPTOR_LINKS}{descriptor}")
        except OSError:
            real = ""
        finally:
            os.close(descriptor)
        if real.startswith("/") and not real.endswith(" (deleted)"):
            return real
    return os.path.realpath(path)


# A data root's real path by its name, kept with the version of the folder it was worked out
# for (device, inode, change time): a root renamed, moved or swapped for another folder no
# longer matches and is resolved again. Bounded: a worker runs for weeks.
_ROOTS: dict[str, tuple[tuple[int, int, int], str]] = {}
_ROOTS_KEPT = 64


def _real_root(data_root: str) -> str:
    """:func:`_real_path` of a data root, worked out once per version of the folder."""
    try:
        status = os.stat(data_root)
    except (OSError, ValueError):
        return _real_path(data_root)  # the resolution names what is wrong, as before
    version = (status.st_dev, status.st_ino, status.st_ctime_ns)
    kept = _ROOTS.get(data_root)
    if kept is not None and kept[0] == version:
        return kept[1]
    real = _real_path(data_root)
    if len(_ROOTS) >= _ROOTS_KEPT:
        _ROOTS.clear()
    _ROOTS[data_root] = (version, real)
    return real


def confine(rel_path: str, data_root: str | os.PathLike) -> Path:
    """Join ``rel_path`` to ``data_root`` and check the real path stays inside it."""
    # Strings, not Path objects: what Path.resolve() does, without building one per part.
    root = _real_root(os.fspath(data_root))
    target = _real_path(os.path.join(root, normalize_path(rel_path)))
    inside = root if root.endswith(os.sep) else root + os.sep
    if target != root and not target.startswith(inside):
        raise RefError(f"{rel_path!r} resolves outside the data root {root}")
    return Path(target)


def relative_to_root(path: str | os.PathLike, data_root: str | os.PathLike) -> str:
    """A user's path (absolute, or relative to the current folder or to the root) as a reference path.

    The reference names what the user gave: a symlink under the root keeps its own
    name (its target is read), so a row never names a file the user did not.

    Raises `FileNotFoundError` when no such file exists and `RefError` when it lies
    outside the data root or is a symlink that leads out of it.
    """
    found = find_user_path(path, data_root)
    if found is None:
        raise FileNotFoundError(f"{path}: no such file (looked in the current folder and under {Path(data_root)})")
    name, file = found
    root = Path(data_root).resolve()
    if name is None:
        raise RefError(f"{path}: outside the data root {root} (set SPECQ_DATA_ROOT)")
    real = file.resolve()
    if real != root and root not in real.parents:
        raise RefError(f"{path}: a symlink that leads outside the data root {root} (to {real})")
    return normalize_path(name)


def find_user_path(path: str | os.PathLike, data_root: str | os.PathLike) -> tuple[str | None, Path] | None:
    """Where a user's path is, and its name relative to the data root.

    Parameters
    ----------
    path : path-like
        Absolute, or relative to the current folder (tried first) or to the data root.
    data_root : path-like

    Returns
    -------
    (name, file) or None
        ``file``: the absolute path, normalized but with symlinks kept (a link is
        named, not its target). ``name``: ``file`` relative to the data root as a
        POSIX path, or None when it is not under the root. None when nothing exists
        there. A dangling symlink is found: it is a file that cannot be opened, and
        its row says so.
    """
    p = Path(path).expanduser()
    root = Path(os.path.abspath(data_root))
    for candidate in ([p] if p.is_absolute() else [Path.cwd() / p, root / p]):
        if not (candidate.exists() or candidate.is_symlink()):
            continue
        file = Path(os.path.abspath(candidate))
        # The root as given and as resolved: a root reached through a symlink still counts.
        for base in dict.fromkeys((root, root.resolve())):
            if file == base or base in file.parents:
                return (file.relative_to(base).as_posix() or "."), file
        return None, file
    return None
