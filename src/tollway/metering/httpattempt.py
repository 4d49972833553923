"""One webhook POST under one total deadline: connect, TLS handshake, send, and every byte of the
answer read, whatever the receiver does.

A socket timeout bounds each socket operation, not the attempt: a receiver that trickles one
byte every half second never trips it. So each attempt has an `AttemptGuard`: a timer that
shuts the socket down when the attempt's time is up (or at once on `AttemptGuard.abort`, a
worker stopping), which ends any read or write blocked on it. Connecting is bounded by the time
left, across every address the host resolves to. An answer's body is only read for a failure,
and then at most ``max_body`` bytes; http.client bounds the status line and headers (64 KiB a
line, 100 headers). Name resolution (``getaddrinfo``) cannot be interrupted: a hook's host is
best an IP address or a name the local resolver answers at once.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tollway.metering.sinkresult import SendResult
from tollway.netrules import address_refusal
from tollway.outbound.signals import parse_retry_after

__all__ = ["MAX_ANSWER_BYTES", "AttemptGuard", "Target", "post"]

MAX_ANSWER_BYTES = 64 * 1024
"""The most of a failed answer's body read (for the record); the rest is never read."""
_DETAIL_CHARS = 200


class AttemptGuard:
    """Shuts the attempt's socket down at ``deadline`` (``time.monotonic``) or on `abort`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self.aborted = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds left; raises `TimeoutError` when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired or self.aborted:
            raise TimeoutError("the attempt's time is up")
        return left

    def watch(self, sock: socket.socket) -> None:
        """From now on, the deadline (or an abort) shuts ``sock`` down."""
        with self._lock:
            self._sock = sock
            if self.expired or self.aborted:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shut(self._sock)

    def abort(self) -> None:
        """End the attempt now (the caller is stopping)."""
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                _shut(self._sock)

    def settle(self) -> bool:
        """End the watch; False if the deadline or an abort came first (a socket shut down
        mid-answer can look like a short but well-formed one: it must not count)."""
        with self._lock:
            self._sock = None
            if self.expired or self.aborted:
                return False
            self._timer.cancel()
            return True

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._sock = None

    def failure(self, exc: BaseException) -> SendResult:
        """What an exception out of the attempt means, given why the socket may have closed."""
        if self.aborted:
            return SendResult.failed("aborted: the deliverer is stopping")
        if self.expired or isinstance(exc, TimeoutError):
            return SendResult.failed(
                f"timed out after {self.seconds:g} s (connect, send and answer in all)"
            )
        return SendResult.failed(f"{type(exc).__name__}: {exc}".rstrip(": "))


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown on the descriptor itself: for a TLS socket this leaves the SSL
    # object alone (another thread may be inside it) and still ends its blocked read.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the POST goes."""

    host: str
    port: int | None
    path: str
    https: bool
    ssl_context: ssl.SSLContext | None = None
    allow_private: bool = False
    """Connect to private, link-local... addresses too (`tollway.netrules`)."""


class RefusedAddress(OSError):
    """Every address the host resolved to is refused by `tollway.netrules`."""


def post(
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    guard: AttemptGuard,
    *,
    max_body: int = MAX_ANSWER_BYTES,
) -> SendResult:
    """POST ``body``; 2xx is delivered, 410 gone, anything else (or the deadline) failed."""
    conn: http.client.HTTPConnection | None = None
    try:
        port = target.port or (443 if target.https else 80)
        sock = _connect(target.host, port, guard, allow_private=target.allow_private)
        if target.https:
            context = target.ssl_context or ssl.create_default_context()
            sock = context.wrap_socket(
                sock, server_hostname=target.host, do_handshake_on_connect=False
            )
            guard.watch(sock)
            sock.do_handshake()
            conn = http.client.HTTPSConnection(target.host, target.port, context=context)
        else:
            conn = http.client.HTTPConnection(target.host, target.port)
        conn.sock = sock  # connected here, under the guard: http.client never connects itself
        sock.settimeout(guard.left())
        conn.request("POST", target.path, body=body, headers=dict(headers))
        sock.settimeout(guard.left())
        response = conn.getresponse()
        status = response.status
        if 200 <= status < 300:
            if not guard.settle():
                raise TimeoutError("the answer was cut at the deadline")
            return SendResult.delivered(status)
        detail = _read_detail(response, guard, max_body)
        if not guard.settle():
            raise TimeoutError("the answer was cut at the deadline")
        error = f"HTTP {status} {response.reason}".rstrip() + (f": {detail}" if detail else "")
        if 300 <= status < 400:  # never followed: a redirect could lead anywhere (SSRF)
            where = _snippet((response.getheader("Location") or "").encode())
            error += f" (a redirect to {where!r}, not followed)" if where else " (not followed)"
        if status == 410:
            return SendResult.gone(error, status=status)
        return SendResult.failed(
            error, status=status, retry_after=parse_retry_after(response.getheader("Retry-After"))
        )
    except RefusedAddress as exc:
        return SendResult.refused_by_rules(f"refused: {exc}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return guard.failure(exc)
    finally:
        guard.close()
        if conn is not None:
            conn.close()


def _connect(host: str, port: int, guard: AttemptGuard, *, allow_private: bool) -> socket.socket:
    """A connected socket, every address tried within the attempt's time (not each its own).
    Each address is checked as resolved, and the socket connected to that very address (no
    second lookup a rebinding DNS could answer otherwise); the name stays for Host and SNI."""
    last: OSError | None = None
    refused: list[str] = []
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        why = address_refusal(str(address[0]), allow_private=allow_private)
        if why is not None:
            refused.append(why)
            continue
        sock = socket.socket(family, kind, proto)
        guard.watch(sock)
        try:
            sock.settimeout(guard.left())
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if isinstance(exc, TimeoutError) or guard.expired or guard.aborted:
                raise
    if last is None and refused:
        raise RefusedAddress(
            f"{host!r} resolves to {'; '.join(refused)}: not connected, so a hook cannot reach "
            "inside the network (allow_private = true allows it)"
        )
    raise last if last is not None else OSError(f"{host!r} resolves to no address")


def _read_detail(response: http.client.HTTPResponse, guard: AttemptGuard, max_body: int) -> str:
    """The start of a failed answer's body, for the record; "" if it does not come in time."""
    try:
        guard.left()
        return _snippet(response.read(max_body))
    except (OSError, http.client.HTTPException, ValueError):
        return ""


def _snippet(raw: bytes) -> str:
    text = re.sub(r"\s+", " ", raw.decode("utf-8", errors="replace")).strip()
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"
