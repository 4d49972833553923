"""Real HTTP servers in this process, on loopback: uvicorn (ASGI) and waitress (WSGI), each in a
thread of its own, so a test can share an injected clock with the app and still talk HTTP
through a real client. Started by polling until they listen (with a deadline), always stopped.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
import waitress.server

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uvicorn_serving(
    app: Any, *, close: Callable[[], Awaitable[None]] | None = None, **config: Any
) -> Iterator[str]:
    """Serve ``app`` with uvicorn (its defaults, ``proxy_headers=True`` included, unless
    ``config`` says otherwise); yield the base URL. ``close`` is awaited on the server's event
    loop once it has stopped (an `AsyncTollway`'s ``aclose``: its Redis client lives there)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **config
        )
    )

    async def run() -> None:
        try:
            await server.serve()
        finally:
            if close is not None:
                await close()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {port}")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)


@contextmanager
def waitress_serving(app: Any, **options: Any) -> Iterator[str]:
    """Serve the WSGI ``app`` with waitress; yield the base URL."""
    server = waitress.server.create_server(app, host="127.0.0.1", port=0, threads=2, **options)
    port = server.effective_port  # type: ignore[union-attr]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        thread.join(START_TIMEOUT)
