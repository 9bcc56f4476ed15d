"""What weights on disk are: each file's identity, and the outcome of checking them.

A file's identity is its name, size, git blob id and sha256; :func:`inspect` compares the
identities of a chunk folder or a ``.pt`` with a manifest and an install record, and says
whether the weights are published, unverified or demo (see :mod:`workers.weights`), or
names each file that is wrong. Reads bytes and hashes them; torch is never imported.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from workers.seekable import SeekableReader
from workers.weights.formats import CHUNK_PATTERN, WeightsError, is_demo, published_chunk_sizes
from workers.weights.manifest import ExpectedFile, Manifest

# Where the chunks sit inside a clone of the published repository or a copy of SDSS's folder.
_BLOCK = 1 << 20
# How a torch.save file begins: a zip archive (torch >= 1.6) or a bare pickle (older torch).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


@dataclass(frozen=True)
class FileIdentity:
    """What a file on disk is: name, size, git blob id and sha256."""

    name: str
    size: int
    git_blob: str
    sha256: str

    def as_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "git_blob": self.git_blob, "sha256": self.sha256}


def identify(paths: Sequence[Path]) -> tuple[list[FileIdentity], str]:
    """Each file's identity, and the sha256 of all of them concatenated (what torch reads).

    The concatenated sha256 is the ``model_sha256`` every result row records.
    """
    whole = hashlib.sha256()
    out = []
    for path in paths:
        size = path.stat().st_size
        blob = hashlib.sha1(b"blob %d\0" % size)
        own = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                blob.update(block)
                own.update(block)
                whole.update(block)
        out.append(FileIdentity(path.name, size, blob.hexdigest(), own.hexdigest()))
    return out, whole.hexdigest()


def blob_ids_of_slices(path: Path, sizes: Sequence[int]) -> list[str]:
    """Git blob ids of consecutive slices of one file (a ``.pt`` cut as the chunks were)."""
    out = []
    with open(path, "rb") as fh:
        for size in sizes:
            h = hashlib.sha1(b"blob %d\0" % size)
            left = size
            while left:
                block = fh.read(min(_BLOCK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            out.append(h.hexdigest())
    return out


def torch_file_keys(path: Path | Sequence[Path], keys: Iterable[str]) -> set[str] | None:
    """Which of ``keys`` a ``torch.save`` file names, without torch; None when it is no such file.

    ``path`` may be the chunks of one file, in order: their bytes are read as one. A zip
    archive holds the pickle (``*/data.pkl``, names only, no tensor data); an old-style file
    begins with the pickle.
    """
    keys = list(keys)
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    with _ConcatReader(paths) as fh:
        head = fh.read(4)
        if head == _ZIP_MAGIC:
            fh.seek(0)
            try:
                with zipfile.ZipFile(fh) as zf:
                    pickles = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                    if not pickles:
                        return None
                    text = zf.read(pickles[0])
            # A cut archive gives BadZipFile or, where offsets point before its start, ValueError.
            except (zipfile.BadZipFile, ValueError, OSError):
                return None
        elif head[:1] == _PICKLE_MAGIC:
            fh.seek(0)
            text = fh.read(8 * _BLOCK)
        else:
            return None
    return {k for k in keys if k.encode() in text}


class _ConcatReader(SeekableReader):
    """Files read as one, seekable (a chunk folder's bytes as torch reads them), without joining them."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()

    def size(self) -> int:
        return sum(self._sizes)

    def readinto(self, target) -> int:
        # Fills ``target`` across file boundaries: zipfile takes a short read for a cut archive.
        target = memoryview(target).cast("B")
        done = start = 0
        for f, size in zip(self._files, self._sizes):
            while done < len(target) and start <= self._position < start + size:
                f.seek(self._position - start)
                n = f.readinto(target[done:done + start + size - self._position])
                if not n:
                    return done
                self._position += n
                done += n
            start += size
        return done


@dataclass
class Inspection:
    """The outcome of checking weights on disk.

    Attributes
    ----------
    path : Path
        The chunk folder or the file.
    format : {"chunks", "pt"}
    status : {"published", "unverified", "demo"}
        See :mod:`workers.weights`; meaningful only when ``problems`` is empty.
    sha256 : str
        Of the bytes torch reads (the chunks concatenated): the rows' ``model_sha256``.
    files : list of FileIdentity
    problems : list of str
        Each names a file and what is wrong with it; empty when the weights are fit to use.
    note : str
        Extra information (e.g. why the status is unverified).
    incomplete : bool
        A file is missing (or one too many): the weights cannot be whole, whoever made them.
    """

    path: Path
    format: str
    status: str = "unverified"
    sha256: str = ""
    files: list[FileIdentity] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    note: str = ""
    incomplete: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def locate(source: str | os.PathLike, pipeline: str | None = None) -> tuple[Path, str]:
    """The weights inside ``source``: (chunk folder or file, format).

    ``source`` may be a ``.pt``, a folder of chunks, or a copy of a published repository
    with the chunks in one of the pipeline's ``chunk_folders`` (any pipeline's when None).
    """
    from workers import registry

    specs = [s for name, s in registry.pipelines().items() if pipeline in (None, name)]
    chunk_folders = tuple(dict.fromkeys(folder for spec in specs for folder in spec.chunk_folders))
    source = Path(source).expanduser()
    if source.is_file():
        return source, "pt"
    if not source.is_dir():
        raise WeightsError(f"{source}: no such file or folder")
    for candidate in ("", *chunk_folders):
        folder = source / candidate
        if folder.is_dir() and any(CHUNK_PATTERN.match(p.name) for p in folder.iterdir()):
            return folder, "chunks"
    pts = sorted(p for p in source.iterdir() if p.suffix in (".pt", ".pth") and p.is_file())
    if len(pts) == 1:
        return pts[0], "pt"
    if pts:
        raise WeightsError(f"{source}: several weight files ({', '.join(p.name for p in pts)}); name one")
    raise WeightsError(f"{source}: no model_chunk_* files (looked in {', '.join(['.', *chunk_folders])}) "
                       "and no .pt file")


def _chunk_paths(folder: Path, manifest: Manifest | None) -> tuple[list[Path], list[str]]:
    """The chunk files in order, and problems: missing or unexpected chunks, named."""
    found: dict[int, Path] = {}
    problems = []
    for p in sorted(folder.iterdir()):
        if m := CHUNK_PATTERN.match(p.name):
            index = int(m.group(1))
            if index in found:  # as the loader (chunk_files) refuses it: which one is meant cannot be told
                problems.append(f"{folder}: {found[index].name} and {p.name} are the same chunk")
            found.setdefault(index, p)
    expected = len(manifest.files) if manifest and manifest.format == "chunks" and manifest.files else \
        (max(found) + 1 if found else 0)
    problems += [f"{folder / f'model_chunk_{i}'}: missing" for i in range(expected) if i not in found]
    problems += [f"{found[i]}: unexpected (the published weights have {expected} chunks)"
                 for i in sorted(found) if i >= expected]
    if not found:
        problems = [f"{folder}: no model_chunk_* files"]
    return [found[i] for i in sorted(found) if i < expected], problems


def _compare(path_of, actual: Sequence[FileIdentity], expected: Sequence[ExpectedFile | dict],
             what: str) -> list[str]:
    """Problems, each naming the file, where ``actual`` differs from ``expected``."""
    problems = []
    for have, want in zip(actual, expected):
        want = want if isinstance(want, dict) else {"size": want.size, "git_blob": want.git_blob,
                                                    "sha256": want.sha256}
        if want.get("size") is not None and have.size != want["size"]:
            problems.append(f"{path_of(have)}: {have.size} bytes, {what} {want['size']}")
        elif want.get("git_blob") and have.git_blob != want["git_blob"]:
            problems.append(f"{path_of(have)}: git blob {have.git_blob}, {what} {want['git_blob']}")
        elif want.get("sha256") and have.sha256 != want["sha256"]:
            problems.append(f"{path_of(have)}: sha256 {have.sha256}, {what} {want['sha256']}")
    return problems


def inspect(path: str | os.PathLike, manifest: Manifest | None, record: dict | None = None) -> Inspection:
    """Check the weights at ``path`` (a chunk folder or a file) against the manifest and install record.

    Parameters
    ----------
    path : path-like
        What :func:`locate` returned, or an installed copy.
    manifest : Manifest or None
        None: the pipeline has no manifest, so nothing can be published.
    record : dict, optional
        The install record of this copy; its identities are what an unverified copy is checked against.

    Returns
    -------
    Inspection
        ``problems`` empty when the weights are fit to use.
    """
    path = Path(path)
    fmt = "chunks" if path.is_dir() else "pt"
    result = Inspection(path=path, format=fmt)
    if not path.exists():
        result.problems.append(f"{path}: missing")
        result.incomplete = True
        return result
    if fmt == "chunks":
        paths, result.problems = _chunk_paths(path, manifest)
        if result.problems:
            result.incomplete = True
            return result
    else:
        paths = [path]
    result.files, result.sha256 = identify(paths)

    def name(ident: FileIdentity) -> Path:
        return path / ident.name if fmt == "chunks" else path

    if is_demo(path):
        result.status = "demo"
        return result
    recorded_status = record.get("status") if record else None
    if manifest is not None and manifest.has_identity and recorded_status != "unverified":
        if fmt == manifest.format:
            problems = _compare(name, result.files, manifest.files, "the published file has")
            if problems:
                result.problems = problems  # the published form, but not the published bytes
                return result
            result.status = "published"
            return result
        if fmt == "pt" and manifest.format == "chunks":
            # One file holding the published chunks' bytes: cut it as they were cut, compare each piece.
            sizes = [f.size for f in manifest.files]
            total = result.files[0].size
            if None in sizes or sum(sizes) != total:
                sizes = published_chunk_sizes(total, len(manifest.files))
            if blob_ids_of_slices(path, sizes) == [f.git_blob for f in manifest.files]:
                result.status = "published"
                return result
    if record is not None:
        # What was installed is what must be here: the record's identities (unverified or a published .pt).
        recorded = record.get("files", [])
        if [f["name"] for f in recorded] != [f.name for f in result.files]:
            result.problems.append(f"{path}: holds {[f.name for f in result.files]}, installed "
                                   f"{[f['name'] for f in recorded]}")
        else:
            result.problems += _compare(name, result.files, recorded, "installed with")
        result.status = recorded_status or "unverified"
        if result.status == "unverified":
            result.note = "sha256 recorded at install"
        return result
    result.status = "unverified"
    result.note = ("no published identity in the manifest" if manifest is None or not manifest.has_identity
                   else "not the published bytes") + "; no install record"
    return result

