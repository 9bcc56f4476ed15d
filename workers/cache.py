"""The local file cache of a URL data root: whole files, keyed by URL, bounded in size.

A remote file is fetched once into the cache folder and read from there while the
archive still serves the same file: an entry records the ETag and size the archive gave
when it was fetched, and a lookup with another ETag or size misses (the file changed,
so it is fetched again). Several worker processes may share one folder: a file is
written under a temporary name and renamed into place, so a reader never sees half of
one, and two processes fetching the same file at once both end with the whole file.

The bound (``SPECQ_CACHE_GB``) is kept by evicting the least recently used entries
after each new file. Entries used in the last :data:`IN_USE_S` seconds are spared (a
worker in another process may be reading them), so the cache can run over its bound
for that long.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["FileCache", "IN_USE_S"]

log = logging.getLogger("workers.cache")

IN_USE_S = 60.0  # entries touched this recently are not evicted
# A fetch that crashed leaves its temporary file; one this long untouched has no writer left
# (a live download writes on, and silences are bounded by the HTTP timeout).
STALE_PART_S = 3600.0
_META = ".meta.json"  # beside each cached file: the URL's key, ETag and size it was fetched with
_PART = ".part-"


@dataclass(frozen=True)
class FileCache:
    """A folder of cached remote files.

    Parameters
    ----------
    folder : Path
    max_bytes : int
        The size bound: eviction keeps the files' total under it.
    in_use_s : float
        Entries used this recently are never evicted.
    """

    folder: Path
    max_bytes: int
    in_use_s: float = IN_USE_S

    def entry(self, url: str) -> Path:
        """The cached file's path: its own folder, so the file keeps its name (formats are told by it)."""
        digest = _key(url)
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "file"
        return self.folder / digest[:2] / digest / name

    def lookup(self, url: str, etag: str | None, size: int | None) -> Path | None:
        """The cached file of ``url`` when it was fetched with this ETag and size, else None."""
        data = self.entry(url)
        try:
            meta = json.loads((data.parent / _META).read_text())
            on_disk = data.stat().st_size
        except (OSError, ValueError):
            return None
        if meta.get("key") != _key(url) or meta.get("etag") != etag or meta.get("size") != size or on_disk != size:
            return None
        now = time.time()
        try:
            os.utime(data, (now, now))  # recently used: evicted last
        except OSError:
            return None  # evicted at this moment by another process
        return data

    def store(self, url: str, etag: str | None, size: int | None, fetch: Callable[[str], None],
              shown: str | None = None) -> Path:
        """Fetch ``url`` into the cache with ``fetch(local_path)`` and return its file.

        Raises whatever ``fetch`` raises; nothing half-written is left behind. A file
        whose length differs from ``size`` is a ConnectionError (the connection ended early).
        The entry records ``shown`` (the URL without its credentials) for people, and a
        hash of ``url`` to match it: no password or signed query is written to disk.
        """
        data = self.entry(url)
        data.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=data.parent, prefix=_PART)
        os.close(fd)
        meta = Path(tmp + ".meta")  # unique too: threads of one process may store the same URL at once
        try:
            fetch(tmp)
            written = os.stat(tmp).st_size
            if size is not None and written != size:
                raise ConnectionError(f"the connection ended early: {written} of {size} bytes received")
            meta.write_text(json.dumps({"key": _key(url), "url": shown, "etag": etag, "size": written,
                                        "fetched": time.time()}))
            os.replace(tmp, data)
            os.replace(meta, data.parent / _META)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise
        self.evict()
        return data

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last used, size, file) of every cached file."""
        out = []
        for meta in self.folder.glob(f"??/*/{_META}"):
            for data in meta.parent.iterdir():
                if data.name.startswith("."):
                    continue
                try:
                    st = data.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, data))
        return out

    def size(self) -> int:
        """Bytes held in cached files."""
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        """Remove least recently used files until the total fits ``max_bytes``; the bytes freed.

        Temporary files that crashed fetches left (untouched for :data:`STALE_PART_S`) go too.
        """
        self._remove_stale_parts()
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        freed = 0
        spare_after = time.time() - self.in_use_s
        for used, size, data in entries:
            if total - freed <= self.max_bytes:
                break
            if used > spare_after:
                continue  # maybe being read right now
            (data.parent / _META).unlink(missing_ok=True)
            data.unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("file cache %s: evicted %.1f MB to stay under %.1f GB", self.folder, freed / 1e6,
                     self.max_bytes / 1e9)
        return freed

    def _remove_stale_parts(self) -> None:
        stale_before = time.time() - STALE_PART_S
        for part in self.folder.glob(f"??/*/{_PART}*"):
            try:
                if part.stat().st_mtime < stale_before:
                    part.unlink()
                    log.info("file cache %s: removed %s, left by a fetch that did not finish", self.folder, part.name)
            except OSError:  # gone already: its fetch finished or another process removed it
                continue


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()
