"""Published weight formats, their sha256, and seeded demo weights.

Formats:

* a folder of ten chunks ``model_chunk_0`` … ``model_chunk_9`` whose concatenated bytes
  are one ``torch.save``d state dict (BossNet's GitHub folder and SDSS's
  ``deconstructed_model/``);
* a single ``.pt``/``.pth`` file (a state dict, or a dict holding ``"model_state_dict"``).

The sha256 is taken over the bytes torch reads (the chunks concatenated), so the same
weights give the same ``model_sha256`` in either form.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from workers.seekable import SeekableReader

N_CHUNKS = 10
CHUNK_PATTERN = re.compile(r"model_chunk_(\d+)$")
DEMO_MARKER = "DEMO_WEIGHTS"


class WeightsError(Exception):
    """Weights are missing, malformed or do not fit the network."""


@dataclass
class LoadedWeights:
    """A state dict read from disk, with where it came from."""

    state_dict: dict
    sha256: str
    source: Path
    demo: bool
    unexpected: list[str]


def chunk_files(folder: Path, names: Iterable[str] | None = None) -> list[Path]:
    """The ``model_chunk_*`` files of a folder in numeric order; error if any is missing.

    ``names``: the folder's entries when already listed (then only those are considered).
    """
    found = {}
    paths = Path(folder).iterdir() if names is None else (Path(folder) / n for n in names)
    for p in paths:
        m = CHUNK_PATTERN.match(p.name)
        if m:
            index = int(m.group(1))
            if index in found:  # model_chunk_1 and model_chunk_01: which one is meant cannot be told
                raise WeightsError(f"{folder}: {found[index].name} and {p.name} are the same chunk")
            found[index] = p
    if not found:
        raise WeightsError(f"{folder}: no model_chunk_* files")
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise WeightsError(f"{folder}: missing chunk(s) {missing}")
    return [found[i] for i in sorted(found)]


def read_weight_bytes(path: str | os.PathLike) -> tuple[bytearray, Path]:
    """Raw bytes of a weights file or chunk folder (a folder may hold the chunks one level down).

    The files are read straight into one buffer of their total size: no copy per chunk
    and none to join them (a published BossNet model is 278 MB).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path, path / "model_boss", path / "deconstructed_model"):
            if candidate.is_dir() and any(CHUNK_PATTERN.match(p.name) for p in candidate.iterdir()):
                return _read_chunk_folder(candidate), candidate
        raise WeightsError(f"{path}: a folder without model_chunk_* files")
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb", buffering=0) as f:
        return _read_into_one_buffer([(path, f)]), path


def _read_chunk_folder(folder: Path, tries: int = 3) -> bytearray:
    """The chunks of one folder, all from the same folder even when an install replaces it meanwhile.

    ``specq weights install`` renames a new folder into place: names looked up in the
    folder opened first keep to it, so the chunks of two installs are never mixed. The old
    folder may be deleted under us before every chunk is open: then read the new one.
    """
    for attempt in range(tries):
        folder_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        opened = []
        try:
            for chunk in chunk_files(folder, os.listdir(folder_fd)):
                opened.append((chunk, open(chunk.name, "rb", buffering=0,
                                           opener=lambda n, flags: os.open(n, flags, dir_fd=folder_fd))))
            return _read_into_one_buffer(opened)
        except FileNotFoundError:
            continue  # the folder went with an install: the next try opens the new one
        finally:
            for _, f in opened:
                f.close()
            os.close(folder_fd)
    raise WeightsError(f"{folder}: chunks removed while being read (an install under way?)")


def _read_into_one_buffer(files: list[tuple[Path, io.RawIOBase]]) -> bytearray:
    sizes = [os.fstat(f.fileno()).st_size for _, f in files]
    buffer = bytearray(sum(sizes))
    view = memoryview(buffer)
    start = 0
    for (file, f), size in zip(files, sizes):
        while size:  # readinto may return less than asked
            got = f.readinto(view[start:start + size])
            if not got:
                raise WeightsError(f"{file}: shorter than its size when it was listed")
            start += got
            size -= got
    return buffer


class _BufferReader(SeekableReader):
    """A read-only, seekable file over a buffer, without the copy ``io.BytesIO`` makes of a bytearray."""

    def __init__(self, buffer: bytearray):
        super().__init__()
        self._view = memoryview(buffer)

    def size(self) -> int:
        return len(self._view)

    def readinto(self, target) -> int:
        n = max(0, min(len(target), len(self._view) - self._position))
        memoryview(target).cast("B")[:n] = self._view[self._position:self._position + n]
        self._position += n
        return n


def is_demo(source: Path) -> bool:
    """Demo weights carry a marker file beside them (folder) or a ``.demo`` sibling (file)."""
    source = Path(source)
    if source.is_dir():
        return (source / DEMO_MARKER).exists()
    return source.with_name(source.name + ".demo").exists()


def load_state_dict(path: str | os.PathLike, state_key: str | None = None) -> LoadedWeights:
    """Read a state dict from a ``.pt`` file or a chunk folder, on the CPU.

    Parameters
    ----------
    path : path-like
        File or folder.
    state_key : str, optional
        Key of the state dict inside a saved dict (AstroNN's ``"model_state_dict"``).
    """
    import torch  # workers only

    blob, source = read_weight_bytes(path)
    # hashlib lets go of the GIL on large buffers: the sha256 is taken while torch unpickles.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="weights-sha256") as hashing:
        sha_future = hashing.submit(lambda: hashlib.sha256(blob).hexdigest())
        try:
            obj = torch.load(_BufferReader(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt pickle
            raise WeightsError(f"{source}: not a torch state dict ({exc})") from exc
        sha = sha_future.result()
    if state_key is not None:
        if not isinstance(obj, dict) or state_key not in obj:
            raise WeightsError(f"{source}: no {state_key!r} in the saved dict")
        obj = obj[state_key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    return LoadedWeights(dict(obj), sha, source, is_demo(source), [])


def published_chunk_sizes(total: int, n_chunks: int = N_CHUNKS) -> list[int]:
    """Sizes of the chunks of a ``total``-byte file, cut as the published ones were.

    BOSSNet's ``chop_model.py`` gives each chunk ``total // n`` bytes and the last one the
    remainder too; a ``.pt`` of the published bytes is checked against the chunks this way.
    """
    each = total // n_chunks
    return [each] * (n_chunks - 1) + [total - each * (n_chunks - 1)]


def save_chunks(state_dict: dict, folder: str | os.PathLike, n_chunks: int = N_CHUNKS, demo: bool = False) -> Path:
    """Write a state dict as ``n_chunks`` files whose bytes concatenate to one ``torch.save``."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    blob = buf.getvalue()
    tmp = []
    start = 0
    for i, size in enumerate(published_chunk_sizes(len(blob), n_chunks)):
        p = folder / f"model_chunk_{i}.tmp"
        p.write_bytes(blob[start:start + size])
        start += size
        tmp.append(p)
    for i, p in enumerate(tmp):  # rename last so a crash never leaves a half folder that looks whole
        p.replace(folder / f"model_chunk_{i}")
    if demo:
        (folder / DEMO_MARKER).write_text("seeded random weights for demos and tests, not a trained model\n")
    return folder


def save_pt(obj: dict, path: str | os.PathLike, demo: bool = False) -> Path:
    """``torch.save`` to ``path`` atomically; mark as demo when asked."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a buffer: torch.save to a path embeds the file's name in the archive, and the
    # bytes (so the sha256) would then depend on what the file was called.
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    if demo:
        path.with_name(path.name + ".demo").write_text("seeded random weights, not a trained model\n")
    return path


def git_blob_id(data: bytes) -> str:
    """Git's blob id of ``data``, to check a copy against the published chunk ids."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
