"""A webhook receiver for the metering demo: a real HTTP server on 127.0.0.1 that checks every
request's Standard Webhooks signature, as a billing system would."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tollway.errors import WebhookVerificationError
from tollway.metering.webhooks import verify

__all__ = ["Receiver", "Request"]


@dataclass
class Request:
    body: bytes
    headers: dict[str, str]
    verified: bool
    error: str | None = None


class Receiver:
    """Listens on 127.0.0.1 (a free port): verifies each request with ``secret``, answers 204
    when it verifies and 401 when it does not, and keeps every request. A context manager."""

    def __init__(self, secret: str) -> None:
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        keep = self._keep

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verify(body, headers, secret)
                except WebhookVerificationError as exc:
                    request = Request(body, headers, False, str(exc))
                else:
                    request = Request(body, headers, True)
                keep(request)
                self.send_response(204 if request.verified else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/billing/tollway"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="tollway-demo-receiver",
            daemon=True,
        )

    def _keep(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def taken(self) -> list[Request]:
        with self._lock:
            return list(self._requests)
