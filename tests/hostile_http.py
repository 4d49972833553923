"""Webhook receivers that misbehave on purpose, on raw sockets on 127.0.0.1: each one reads
the request (or not), then answers in one of these ways (`HostileReceiver.mode`):

- ``ok``: 200 at once;
- ``slow``: 200 after ``delay`` seconds;
- ``trickle``: a 200 whose status line and headers come one byte every ``interval`` s;
- ``trickle_body``: a 500 whose headers come at once and whose body comes one byte every
  ``interval`` s (100 KB announced);
- ``hang``: reads the request, then says nothing until stopped;
- ``no_read``: accepts and reads nothing (a large request then fills the socket's buffers);
- ``huge``: a 500 with a body of ``huge_bytes``, written as fast as the client takes it;
- ``huge_ok``: the same with a 200;
- ``no_handshake``: accepts and says nothing (over https: a TLS handshake that never ends).

With ``tls`` (a server `ssl.SSLContext`) each connection is served over TLS.

Every request read is recorded (its webhook-id, when it came), so a test can count them.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Seen:
    webhook_id: str
    at: float
    """time.monotonic() when the request was read."""


@dataclass
class HostileReceiver:
    mode: str = "ok"
    interval: float = 0.5
    delay: float = 0.0
    huge_bytes: int = 200 * 1024 * 1024
    tls: ssl.SSLContext | None = None
    """Serve TLS with this server context (the URL says https)."""
    seen: list[Seen] = field(default_factory=list)
    written: int = 0
    """Body bytes written by ``huge`` / ``huge_ok`` (what the client took)."""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.getsockname()[1]}/hook"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> HostileReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for conn in self._conns:
                conn.close()
        self._server.close()

    def ids(self) -> list[str]:
        with self._lock:
            return [s.webhook_id for s in self.seen]

    # ------------------------------------------------------------------ serving
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            if self.mode == "no_handshake":  # TCP accepted, TLS never answered
                self._stop.wait(30)
                return
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            if self.mode == "no_read":
                self._stop.wait(30)
                return
            self._read_request(conn)
            self._answer(conn)
        except OSError:
            pass  # the client gave up: that is what these receivers are for
        finally:
            conn.close()

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise OSError("closed before the headers")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                raise OSError("closed before the body")
            body += chunk
        with self._lock:
            self.seen.append(Seen(headers.get("webhook-id", ""), time.monotonic()))

    def _answer(self, conn: socket.socket) -> None:
        mode = self.mode
        if mode == "hang":
            self._stop.wait(30)
        elif mode in ("ok", "slow"):
            if self._stop.wait(self.delay):
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        elif mode == "trickle":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                conn.sendall(bytes([byte]))
                if self._stop.wait(self.interval):
                    return
        elif mode == "trickle_body":
            conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n")
            while not self._stop.wait(self.interval):
                conn.sendall(b"x")
        elif mode in ("huge", "huge_ok"):
            status = b"200 OK" if mode == "huge_ok" else b"500 Oops"
            conn.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: "
                + str(self.huge_bytes).encode() + b"\r\n\r\n"
            )  # fmt: skip
            chunk = b"x" * 65536
            while self.written < self.huge_bytes and not self._stop.is_set():
                conn.sendall(chunk)
                self.written += len(chunk)
        else:  # pragma: no cover - a mistake in a test
            raise AssertionError(f"no mode {mode!r}")
