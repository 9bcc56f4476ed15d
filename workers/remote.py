"""URL data roots: spectrum files read over HTTP(S) or from S3, through fsspec.

``SPECQ_DATA_ROOT`` may be ``https://…``, ``http://…`` or ``s3://bucket/prefix`` (install
``specq[remote]``). A worker then asks the archive for a file's size and ETag, and reads:

- the file from its local cache (:mod:`workers.cache`) when it was fetched before with
  the same ETag and size;
- else the whole file into the cache, when it is no bigger than ``SPECQ_RANGE_READ_MB``
  or the FITS backend needs a local file;
- else, for the native backend, only the bytes the reader asks for (the headers and the
  rows of the HDUs a pipeline reads), by HTTP range requests. Over HTTP each asks for the
  ETag it was located with (``If-Match``): a file replaced between two ranges is a 412, a
  retry, not a spectrum of two versions. An archive that ignores ``Range`` and sends the
  whole file is read from that answer, kept in the cache.

Errors are sorted like a local file's: a 404 or 403 (401, 410, any other 4xx but 408
and 429) is :class:`RemoteFileError`, a flagged row naming the URL and the status; a
timeout, a 5xx, a 408, 412 or 429, a dropped connection, or a cache folder that cannot take
the file (read-only, full) is a :class:`~workers.readers.errors.TransientReadError`, which
the queue retries. Messages
and logs show URLs without their credentials (:func:`redact`).

A reference cannot leave the root: its path is checked like a local one (no ``..``, not
absolute), refused when a segment is a URL scheme or percent-decodes to ``.``, ``..`` or
a path separator, and every segment is percent-encoded before it is joined to the root.
"""
from __future__ import annotations

import io
import logging
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PosixPath
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from workers.cache import FileCache
from workers.readers.errors import TransientReadError
from workers.refs import RefError, normalize_path
from workers.seekable import SeekableReader
from workers.settings import REMOTE_SCHEMES, Settings, is_url
from workers.spectrum import SpectrumError

__all__ = ["RemoteFileError", "RemoteRoot", "RemotePath", "data_root", "redact"]

log = logging.getLogger("workers.remote")

_BLOCK = 256 << 10  # bytes fetched per range request (at least): a few headers, or a row or two
_BLOCKS_KEPT = 64  # per open file


class RemoteFileError(SpectrumError):
    """The archive refused the file for good (404, 403 …): the spectrum's flagged row says so."""


def redact(url: str) -> str:
    """``url`` without credentials: no user or password, no query string (signed URLs carry keys there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    return urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else "", fragment=""))


_CREDENTIALS = re.compile(r"(\w+://)[^/\s@'\"]+@")
_QUERY = re.compile(r"\?[^\s'\"]*")


def _scrub(text: str) -> str:
    """Any URL credentials or query strings in a library's message, masked."""
    return _QUERY.sub("?***", _CREDENTIALS.sub(r"\1***@", text))


# --------------------------------------------------------------------------- errors
def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (or during), outermost first."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _status(chain: list[BaseException]) -> int | None:
    """The HTTP status the exceptions carry, if any."""
    for exc in chain:
        status = getattr(exc, "status", None)  # aiohttp's ClientResponseError (it has request_info)
        if hasattr(exc, "request_info") and isinstance(status, int) and 100 <= status < 600:
            return status
        response = getattr(exc, "response", None)  # botocore's ClientError
        if isinstance(response, dict):
            code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
    # fsspec says FileNotFoundError for a 404, and also when a HEAD and a GET both failed
    # for any reason: only the error at the root of the chain tells which.
    if isinstance(chain[-1], FileNotFoundError):
        return 404
    if isinstance(chain[-1], PermissionError):
        return 403
    return None


_TRANSIENT_STATUS = {408, 429}


def classify(exc: BaseException, shown_url: str) -> Exception:
    """The error a reader raises for a failed remote read: RemoteFileError or TransientReadError.

    Parameters
    ----------
    exc : BaseException
        What fsspec, aiohttp or botocore raised.
    shown_url : str
        The URL without credentials, for the message.
    """
    if isinstance(exc, (RemoteFileError, TransientReadError)):
        return exc
    chain = exception_chain(exc)
    status = _status(chain)
    if status == 412:  # If-Match failed: the archive replaced the file; the next attempt reads the new one
        return TransientReadError(f"{shown_url}: the file changed on the archive while it was read "
                                  f"(HTTP 412 {_reason(412)})")
    if status is not None and 400 <= status < 500 and status not in _TRANSIENT_STATUS:
        return RemoteFileError(f"{shown_url}: HTTP {status} {_reason(status)}")
    if status is not None:
        return TransientReadError(f"{shown_url}: HTTP {status} {_reason(status)}")
    if any(isinstance(e, TimeoutError) for e in chain):
        return TransientReadError(f"{shown_url}: no answer in time (timeout)")
    root = chain[-1]
    detail = " ".join(_scrub(str(root)).split())
    return TransientReadError(f"{shown_url}: {type(root).__name__}" + (f" ({detail})" if detail else ""))


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# --------------------------------------------------------------------------- the root
@dataclass(eq=False)
class RemoteRoot:
    """A data root that is a URL, with its filesystem, cache and limits.

    Get one with :func:`data_root`. ``url`` may carry credentials: show :attr:`shown`.
    """

    url: str
    cache: FileCache
    timeout: float = 60.0
    range_bytes: int = 64 << 20
    _fs: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # ETag → (size, Last-Modified) when located: what tells a changed file from unstable ETags.
    _stamps: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _etags_stable: bool = True  # False once the archive refused If-Match for a file that did not change

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self.scheme = self.url.split("://", 1)[0].lower()
        if self.scheme not in REMOTE_SCHEMES:
            raise ValueError(f"{self.scheme}://: a data root URL is one of {', '.join(REMOTE_SCHEMES)}")

    def __str__(self) -> str:
        return self.shown

    @property
    def shown(self) -> str:
        return redact(self.url)

    @property
    def fs(self):
        """The fsspec filesystem (built on first use; fsspec and its backends load only here)."""
        with self._lock:
            if self._fs is None:
                self._fs = _filesystem(self.scheme, self.timeout)
            return self._fs

    def url_of(self, rel_path: str) -> str:
        """The URL of a reference path, confined to the root.

        Raises
        ------
        RefError
            ``..``, an absolute path, a URL, or a segment that decodes to one of them.
        """
        clean = normalize_path(rel_path)
        segments = clean.split("/")
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:", segments[0]):
            raise RefError(f"{rel_path!r}: a reference is a path under the data root, not a URL")
        for segment in segments:
            decoded = unquote(segment)
            if decoded in (".", "..") or "/" in decoded or "\\" in decoded or "\x00" in decoded:
                raise RefError(f"{rel_path!r}: encoded path characters are not allowed in a reference")
        if self.scheme == "s3":  # keys are names, not URLs: nothing is decoded
            joined = f"{self.url}/{clean}"
        else:
            joined = f"{self.url}/" + "/".join(quote(segment, safe="") for segment in segments)
        if not joined.startswith(self.url + "/"):  # cannot happen: said, not assumed
            raise RefError(f"{rel_path!r} leaves the data root {self.shown}")
        return joined

    def locate(self, rel_path: str, ranged: bool = True) -> Path:
        """The file a reference names, ready for the readers.

        Parameters
        ----------
        rel_path : str
            The reference's path.
        ranged : bool
            The reader can read by ranges (the native backend): a big file is then not
            fetched whole.

        Returns
        -------
        RemotePath
            Where the cached copy is; read by ranges while there is none.

        Raises
        ------
        RefError
            The path would leave the root.
        RemoteFileError, TransientReadError
            See :func:`classify`.
        """
        url = self.url_of(rel_path)
        shown = redact(url)
        try:
            info = self.fs.info(url)
        except Exception as exc:  # every failure of the archive is sorted: flagged row or retry
            raise classify(exc, shown) from None
        size = info.get("size")
        version = _version(info)
        remote = _Remote(self, url, size, version, _strong_etag(info))
        if remote.etag is not None:
            self._stamps[remote.etag] = (size, info.get("Last-Modified"))
            while len(self._stamps) > _STAMPS_KEPT:
                self._stamps.popitem(last=False)
        if self.cache.lookup(url, version, size) is None and not (
                ranged and size is not None and size > self.range_bytes):
            self.fetch(url, version, size, remote.etag)
        # The cache's copy when there is one (even if evicted later: then read by ranges).
        return RemotePath.of(self.cache.entry(url), remote)

    def fetch(self, url: str, version: str | None, size: int | None, etag: str | None = None) -> Path:
        """Fetch ``url`` whole into the cache; the cached file.

        With ``etag`` (the one ``version`` came from), the archive is asked for that version only.
        """
        shown = redact(url)

        def download(local: str) -> None:
            try:
                self.fs.get_file(url, local, **self._only(etag))
            except Exception as exc:  # sorted: flagged row or retry
                if not self._etag_unstable(url, etag, exc):
                    raise classify(exc, shown) from None
                try:
                    self.fs.get_file(url, local)
                except Exception as again:  # sorted: flagged row or retry
                    raise classify(again, shown) from None

        t0 = time.perf_counter()
        try:
            path = self.cache.store(url, version, size, download, shown=shown)
        except (RemoteFileError, TransientReadError):
            raise
        except ConnectionError as exc:  # the body ended early
            raise classify(exc, shown) from None
        except OSError as exc:
            # The cache folder's failure (read-only, full, removed), not the archive's: never an
            # HTTP status, and another attempt (maybe on another worker) may succeed.
            raise TransientReadError(f"{shown}: the file cache {self.cache.folder} cannot hold it: "
                                     f"{exc.strerror or exc}") from None
        log.debug("fetched %s (%s bytes) in %.2f s", shown, size, time.perf_counter() - t0)
        return path

    def read_range(self, url: str, start: int, end: int, etag: str | None = None, size: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of ``url``; with ``etag``, of that version only.

        An archive that ignores ``Range`` sends the whole file: when that is ``size`` bytes,
        they are returned whole (the caller keeps them rather than asking again).
        """
        try:
            data = self.fs.cat_file(url, start=start, end=end, **self._only(etag))
        except Exception as exc:  # sorted: flagged row or retry
            if not self._etag_unstable(url, etag, exc):
                raise classify(exc, redact(url)) from None
            return self.read_range(url, start, end, None, size)
        if len(data) != end - start and len(data) != size:
            raise TransientReadError(f"{redact(url)}: asked for bytes {start}..{end}, received {len(data)}")
        return data

    def _only(self, etag: str | None) -> dict:
        """The request arguments that make an HTTP archive answer 412 once the file is no longer ``etag``.

        Ranges of two versions would make one spectrum of both: with this, the read fails
        and is retried instead. (s3fs takes no such argument: on S3 ranges are not checked.)
        """
        if etag is None or self.scheme not in ("http", "https") or not self._etags_stable:
            return {}
        return {"headers": {"If-Match": etag}}

    def _etag_unstable(self, url: str, etag: str | None, exc: BaseException) -> bool:
        """Whether ``exc`` is a 412 for a file that did not change: then If-Match is given up for this root.

        Mirrors behind one name may give one file different ETags; asking for one would fail
        every read. Size and Last-Modified as when it was located say the file is the same.
        """
        if etag is None or _status(exception_chain(exc)) != 412 or etag not in self._stamps:
            return False
        try:
            info = self.fs.info(url)
        except Exception:  # the 412 stands: sorted by the caller
            return False
        if (info.get("size"), info.get("Last-Modified")) != self._stamps[etag]:
            return False  # changed indeed: the next attempt reads the new version
        self._etags_stable = False
        log.warning("%s refused If-Match for a file that did not change (its ETags are not stable): "
                    "its files are read without it", self.shown)
        return True


_STAMPS_KEPT = 4096  # files located lately whose ETags can be told stable or not


def _strong_etag(info: dict) -> str | None:
    """The file's ETag when it is a strong one (If-Match never matches a weak ``W/…`` one)."""
    etag = info.get("ETag") or info.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    return None


def _version(info: dict) -> str | None:
    """What tells one version of a file from the next: its ETag, else its modification time."""
    for key in ("ETag", "etag", "Last-Modified", "LastModified", "last_modified", "mtime"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def _filesystem(scheme: str, timeout: float):
    """An fsspec filesystem for ``scheme`` with ``timeout``; no retries of its own (the queue retries)."""
    try:
        import fsspec
    except ImportError as exc:
        raise ImportError("a URL data root needs fsspec: pip install 'specq[remote]'") from exc
    if scheme == "s3":
        try:
            import s3fs  # noqa: F401  (fsspec names it; say what to install when it is missing)
        except ImportError as exc:
            raise ImportError("an s3:// data root needs s3fs: pip install 'specq[remote]'") from exc
        return fsspec.filesystem("s3", skip_instance_cache=True,
                                 config_kwargs={"connect_timeout": timeout, "read_timeout": timeout,
                                                "retries": {"max_attempts": 1}})
    import aiohttp

    # One filesystem per root (the root keeps it): fsspec's shared instances would outlive a
    # change of endpoint or credentials in the environment.
    # The timeout bounds a silence (connecting, or waiting for the next bytes), not a whole
    # download: a file of tens of MB on a slow link takes longer and still arrives.
    return fsspec.filesystem(scheme, skip_instance_cache=True,
                             client_kwargs={"timeout": aiohttp.ClientTimeout(total=None, connect=timeout,
                                                                             sock_connect=timeout,
                                                                             sock_read=timeout)})


@lru_cache(maxsize=8)
def _root(url: str, cache_dir: str, cache_bytes: int, timeout: float, range_bytes: int) -> RemoteRoot:
    return RemoteRoot(url, FileCache(Path(cache_dir), cache_bytes), timeout, range_bytes)


def data_root(settings: Settings) -> Path | RemoteRoot:
    """The data root the readers use: a folder (Path), or a :class:`RemoteRoot` for a URL.

    One :class:`RemoteRoot` per configuration and process, so its connections and its
    knowledge of the cache are reused from message to message.
    """
    root = settings.data_root
    if not is_url(root):
        return Path(root)
    return _root(str(root), str(settings.file_cache), int(settings.cache_gb * 1e9), float(settings.remote_timeout),
                 int(settings.range_read_mb * 1e6))


def wait_for_data_root(settings: Settings, out=None) -> None:
    """Return once a local data root is a folder; a worker starting calls it before it takes messages.

    A data root that does not exist yet (a file system not mounted) would turn every
    spectrum into a retry and then a flagged row: the worker waits for it instead, with a
    line at each try (SIGTERM or Ctrl-C stop the wait). A data root that is a file ends the
    process with exit status 78 (``EX_CONFIG``): waiting cannot fix it. A URL root is not
    looked at (its server answers per file).
    """
    import sys

    from workers.store_check import EXIT_STORE_UNUSABLE, STARTUP_RETRY_CAP_S

    if is_url(settings.data_root):
        return
    root, out, attempt = Path(settings.data_root), out or sys.stderr, 0
    while not root.is_dir():
        if root.exists():
            print(f"specq worker: the data root {root} is not a folder (not starting; fix SPECQ_DATA_ROOT)",
                  file=out, flush=True)
            raise SystemExit(EXIT_STORE_UNUSABLE)
        wait = min(STARTUP_RETRY_CAP_S, 1.0 * 2 ** attempt)
        print(f"specq worker: the data root {root} does not exist (SPECQ_DATA_ROOT; a file system not mounted?); "
              f"not taking messages, looking again in {wait:.0f} s", file=out, flush=True)
        time.sleep(wait)  # before Celery's signal handlers: SIGTERM ends the process at once
        attempt += 1
    if attempt:
        print(f"specq worker: the data root {root} is there; starting", file=out, flush=True)


def message_for(text: str, path) -> str:
    """A reader's message about a remote file, naming its URL instead of the cache's copy."""
    remote = getattr(path, "_remote", None)
    if remote is not None:
        return text.replace(str(path), redact(remote.url))
    return text


# --------------------------------------------------------------------------- range reads
@dataclass(eq=False)
class _Remote:
    """One located remote file; the blocks read so far are shared by every opening of it."""

    root: RemoteRoot
    url: str
    size: int
    version: str | None
    etag: str | None = None  # a strong ETag: every range is asked of that version (If-Match)
    blocks: OrderedDict = field(default_factory=OrderedDict)


class RemotePath(PosixPath):
    """A remote file not in the cache, read by ranges.

    ``open("rb")`` reads only the blocks asked for (what the native reader does).
    Anything that needs a local file (``os.fspath``: astropy, fitsio, ``open()``)
    fetches it whole into the cache first and gets that file. The path itself is
    where the cached copy goes.
    """

    _remote: _Remote | None = None  # None on paths derived from one (its parent …): plain paths

    @classmethod
    def of(cls, local: Path, remote: _Remote) -> "RemotePath":
        path = cls(local)
        path._remote = remote
        return path

    def _materialize(self) -> None:
        remote = self._remote
        if remote is not None and not os.path.exists(str(self)):
            remote.root.fetch(remote.url, remote.version, remote.size, remote.etag)

    def __fspath__(self) -> str:
        self._materialize()
        return str(self)

    def open(self, mode="r", buffering=-1, encoding=None, errors=None, newline=None):
        if self._remote is not None and mode == "rb" and not os.path.exists(str(self)):
            return RangeStream(self._remote)
        return super().open(mode, buffering, encoding, errors, newline)

    def stat(self, *, follow_symlinks=True):
        if self._remote is not None and not os.path.exists(str(self)):
            return os.stat_result((stat.S_IFREG | 0o444, 0, 0, 1, 0, 0, self._remote.size, 0, 0, 0))
        return super().stat(follow_symlinks=follow_symlinks)


class RangeStream(SeekableReader):
    """A read-only, seekable stream over a remote file: range requests, a few blocks kept."""

    def __init__(self, remote: _Remote):
        super().__init__()
        self._remote = remote
        self._root, self._url, self._size, self._etag = remote.root, remote.url, remote.size, remote.etag
        self._blocks: OrderedDict[int, bytes] = remote.blocks
        self._whole: io.BufferedIOBase | None = None  # the file, once an archive sent it whole

    def close(self) -> None:
        if self._whole is not None:
            self._whole.close()
        super().close()

    def size(self) -> int:
        return self._size

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return b""
        first, last = self._position // _BLOCK, (end - 1) // _BLOCK
        if self._whole is None:
            self._fetch(first, last)
        if self._whole is not None:
            self._whole.seek(self._position)
            out = self._whole.read(end - self._position)
            self._position += len(out)
            return out
        data = b"".join(self._blocks[b] for b in range(first, last + 1))
        offset = first * _BLOCK
        out = data[self._position - offset:end - offset]
        self._position = end
        return out

    def _fetch(self, first: int, last: int) -> None:
        """Blocks ``first``..``last`` in the cache; each run of missing ones is one request."""
        b = first
        while b <= last:
            if b in self._blocks:
                self._blocks.move_to_end(b)
                b += 1
                continue
            run_end = b
            while run_end + 1 <= last and run_end + 1 not in self._blocks:
                run_end += 1
            start, stop = b * _BLOCK, min(self._size, (run_end + 1) * _BLOCK)
            data = self._root.read_range(self._url, start, stop, self._etag, self._size)
            if len(data) != stop - start:  # the archive ignored Range: every later read would bring all of it again
                self._keep_whole(data)
                return
            for i in range(b, run_end + 1):
                self._blocks[i] = data[(i - b) * _BLOCK:(i - b + 1) * _BLOCK]
            b = run_end + 1
        while len(self._blocks) > max(_BLOCKS_KEPT, last - first + 1):
            self._blocks.popitem(last=False)

    def _keep_whole(self, data: bytes) -> None:
        """Read from ``data``, the whole file: through the cache, or from memory when it cannot hold it."""
        remote = self._remote

        def write(local: str) -> None:
            with open(local, "wb") as fh:
                fh.write(data)

        try:
            self._whole = open(self._root.cache.store(self._url, remote.version, self._size, write,
                                                   shown=redact(self._url)), "rb")
        except OSError as exc:
            log.debug("%s: kept in memory, the file cache cannot hold it (%s)", redact(self._url), exc)
            self._whole = io.BytesIO(data)
