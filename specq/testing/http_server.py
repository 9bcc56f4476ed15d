"""An HTTP server for a folder that behaves like an archive: Range, ETag, and faults on demand.

Python's ``http.server`` ignores ``Range`` (fsspec then cannot read a big file by parts);
this one honours it, sends an ``ETag`` (size and modification time) and ``Accept-Ranges``,
answers 412 to an ``If-Match`` another version no longer matches, and can be told to
answer a path with a status, drop the connection, stall, or send slowly, a given number of times.
The bench serves its remote figure from it; the tests use the faults.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import defaultdict, deque
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["ArchiveServer"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
DROP = "drop"  # close the connection before any response
DROP_BODY = "drop-body"  # send the headers and half the body, then close
STALL = "stall"  # wait longer than a client's timeout, then close
SLOW = "slow"  # send the body in ten pieces, each after a pause shorter than a client's timeout


class _Handler(BaseHTTPRequestHandler):
    server: "ArchiveServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # quiet: the server keeps its own request log

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        self.server.record(self.command, rel, self.headers.get("Range"))
        action = self.server.next_action(rel)
        if action == DROP:
            self._drop()
            return
        if action == STALL:
            time.sleep(self.server.stall_s)
            self._drop()
            return
        if isinstance(action, int):
            self._status(action)
            return
        file = (self.server.folder / rel).resolve()
        if self.server.folder not in file.parents or not file.is_file():
            self._status(404)
            return
        st = file.stat()
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        if self.server.unstable_etags:  # as mirrors behind one name may give: another ETag each answer
            etag = f'"{st.st_mtime_ns:x}-{size:x}-{self.server.next_serial()}"'
        wanted_etags = self.headers.get("If-Match")
        if wanted_etags and wanted_etags.strip() != "*" and etag not in [e.strip() for e in wanted_etags.split(",")]:
            self._status(412)  # the file is no longer the version the client asked for
            return
        start, end, status = 0, size, 200
        wanted = self.headers.get("Range")
        if wanted:
            match = _RANGE.match(wanted.strip())
            if not match or (not match.group(1) and not match.group(2)):
                self._status(416)
                return
            if match.group(1):
                start = int(match.group(1))
                end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            else:
                start = max(0, size - int(match.group(2)))
            if start >= size or end <= start:
                self._status(416, extra={"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/fits")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with open(file, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        if action == DROP_BODY:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self._drop()
            return
        if action == SLOW:
            piece = -(-len(data) // 10)
            for at in range(0, len(data), piece):
                time.sleep(self.server.slow_gap_s)
                self.wfile.write(data[at:at + piece])
                self.wfile.flush()
            return
        self.wfile.write(data)

    def _status(self, status: int, extra: dict | None = None) -> None:
        payload = f"{status}\n".encode()
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ArchiveServer(ThreadingHTTPServer):
    """Serves ``folder`` on 127.0.0.1 (a free port) from a thread; use as a context manager.

    Parameters
    ----------
    folder : path-like
    stall_s : float
        How long a ``STALL`` waits before closing.
    slow_gap_s : float
        The pause before each piece of a ``SLOW`` body.

    Attributes
    ----------
    unstable_etags : bool
        Give a file another ETag in every answer (as mirrors behind one name may).
    url : str
        ``http://127.0.0.1:PORT``.
    requests : list of (method, path, range)
        Every request, in order.
    """

    daemon_threads = True

    def __init__(self, folder: str | os.PathLike, stall_s: float = 5.0, slow_gap_s: float = 0.3):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder = Path(folder).resolve()
        self.stall_s, self.slow_gap_s = stall_s, slow_gap_s
        self.unstable_etags = False
        self._serial = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self._actions: dict[str, deque] = defaultdict(deque)
        self._always: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name="archive-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "ArchiveServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up (or a connection dropped on purpose) is no news

    def next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    def fail(self, path: str, *actions) -> None:
        """Answer the next requests for ``path`` with ``actions`` in turn.

        Each action: a status (404, 503 …), DROP, DROP_BODY, STALL, SLOW, or None (serve it).
        """
        with self._lock:
            self._actions[path].extend(actions)

    def clear(self, path: str) -> None:
        """Forget the faults still queued for ``path``."""
        with self._lock:
            self._actions.pop(path, None)
            self._always.pop(path, None)

    def always(self, path: str, status: int) -> None:
        """Answer every request for ``path`` with ``status``."""
        with self._lock:
            self._always[path] = status

    def next_action(self, path: str):
        with self._lock:
            if path in self._always:
                return self._always[path]
            queue = self._actions.get(path)
            return queue.popleft() if queue else None

    def record(self, method: str, path: str, wanted: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, wanted))

    def count(self, method: str, path: str | None = None) -> int:
        """Requests of ``method`` (for ``path``, or any) so far."""
        with self._lock:
            return sum(1 for m, p, _ in self.requests if m == method and (path is None or p == path))
