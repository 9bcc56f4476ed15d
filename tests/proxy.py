"""A small TCP proxy for tests: cut a service off and bring it back without touching it.

A cut is the same every time: the open connections are reset (RST, through SO_LINGER 0,
with no FIN before it) and new connections are refused (nothing listens on the port), so
a client fails at its next read or write instead of hanging on a half-open connection.
"""
from __future__ import annotations

import socket
import struct
import threading

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST; wakes a thread blocked in recv() on it without a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        sock.shutdown(socket.SHUT_RD)  # Linux: wakes recv() and sends nothing to the peer
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forward 127.0.0.1:``port`` to ``target``; :meth:`cut` makes it unreachable."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None):
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._cut = True  # until start()
        self.connections = 0

    def start(self) -> "TcpProxy":
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        with self._lock:
            self._server = server
            self._cut = False
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._cut:  # cut while this one was being connected: it must not survive
                    _reset(client)
                    _reset(upstream)
                    continue
                self._conns += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            return  # reset by cut(), or by a peer
        with self._lock:
            if self._cut:
                return  # the sockets are cut() 's, already reset
        try:  # one side closed in order: pass the close on in order
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self):
        """Refuse new connections and reset the open ones: the service is 'unreachable'."""
        with self._lock:
            self._cut = True
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is not None:
            try:  # wakes the thread blocked in accept(), which otherwise keeps the port bound
                server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server.close()
        for s in conns:
            _reset(s)

    def resume(self):
        self.start()

    def stop(self):
        self.cut()
