"""A TCP proxy in front of a redis-server that loses what it is told to: the reply to a
command (forwarded to Redis, which runs it, then the connection is cut before the reply
reaches the client) or the command itself (cut before Redis sees it).

Real sockets on loopback, one thread per direction per connection. `arm` says what to lose
next: the first client chunk containing ``match`` (the step script's SHA, say) is the one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

HOST = "127.0.0.1"
Loss = Literal["reply", "request"]


class DroppingProxy:
    def __init__(self, target_port: int, host: str = HOST) -> None:
        self.target = (host, target_port)
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: list[tuple[Loss, bytes]] = []
        self.lost: list[Loss] = []
        """What was lost so far, in order."""
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, loss: Loss, match: bytes) -> None:
        """Lose the next ``loss`` of a command whose bytes contain ``match``."""
        with self._lock:
            self._armed.append((loss, match))

    def disarm(self) -> None:
        with self._lock:
            self._armed.clear()

    def _take(self, chunk: bytes) -> Loss | None:
        with self._lock:
            if self._armed and self._armed[0][1] in chunk:
                loss = self._armed.pop(0)[0]
                self.lost.append(loss)
                return loss
        return None

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            cut = threading.Event()
            drop_reply = threading.Event()
            threading.Thread(
                target=self._up, args=(client, upstream, cut, drop_reply), daemon=True
            ).start()
            threading.Thread(
                target=self._down, args=(client, upstream, cut, drop_reply), daemon=True
            ).start()

    def _cut(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._open.discard(sock)

    def _up(
        self,
        client: socket.socket,
        upstream: socket.socket,
        cut: threading.Event,
        drop_reply: threading.Event,
    ) -> None:
        try:
            while chunk := client.recv(65536):
                loss = self._take(chunk)
                if loss == "request":
                    break  # Redis never sees it
                if loss == "reply":
                    drop_reply.set()
                upstream.sendall(chunk)
        except OSError:
            pass
        if not drop_reply.is_set():
            cut.set()
            self._cut(client, upstream)

    def _down(
        self,
        client: socket.socket,
        upstream: socket.socket,
        cut: threading.Event,
        drop_reply: threading.Event,
    ) -> None:
        try:
            while chunk := upstream.recv(65536):
                if drop_reply.is_set():
                    break  # Redis ran it; its answer goes nowhere
                client.sendall(chunk)
        except OSError:
            pass
        self._cut(client, upstream)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            socks = list(self._open)
        self._cut(*socks)

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
