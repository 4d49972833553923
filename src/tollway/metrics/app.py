"""Serving the metrics: `render` (the text exposition format) and `metrics_app`, a plain ASGI
app to mount at ``/metrics`` in any ASGI service (``tollway serve`` mounts it too).

A scrape may wait for its slow reads (the ledger, the providers: bounded by
``Metrics(timeout_s=...)``), so the app renders in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tollway.metrics.core import Metrics, require_prometheus

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(metrics: Metrics) -> bytes:
    """Every series of ``metrics`` in Prometheus's text format."""
    return bytes(require_prometheus().generate_latest(metrics.registry))


def metrics_app(metrics: Metrics) -> ASGIApp:
    """An ASGI app answering ``GET`` (and ``HEAD``) with `render`; any other method gets 405.
    It answers on whatever path it is mounted at."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: nothing to serve
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain", allow=True)
            return
        body = await asyncio.to_thread(render, metrics)
        await _respond(send, 200, b"" if method == "HEAD" else body, CONTENT_TYPE, size=len(body))

    return app


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    *,
    size: int | None = None,
    allow: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body) if size is None else size).encode()),
        (b"cache-control", b"no-store"),
    ]
    if allow:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
