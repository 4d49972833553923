"""`RecordingAdapter`: geopy's urllib adapter, keeping what each call received and reading
every answer as hostile input (`tollway.outbound.geocode.answers`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from geopy.adapters import AdapterHTTPError, URLLibAdapter  # type: ignore[import-untyped]

from tollway.outbound.geocode.answers import check_page, decode, parse_json, read_capped

__all__ = ["Exchange", "RecordingAdapter"]


@dataclass
class Exchange:
    """What one call received: filled in by `RecordingAdapter` on the calling thread."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    page: Any = None
    """The parsed JSON of a 2xx answer."""
    text: str | None = None
    """The body of an error answer."""


class RecordingAdapter(URLLibAdapter):  # type: ignore[misc]
    """geopy's urllib adapter, keeping each call's status, headers and page per thread, and
    reading every answer as hostile (`tollway.outbound.geocode.answers`: a size cap, a
    deadline for the whole body, the charset, JSON nesting and the results' shape).
    (urllib, so neither ``requests`` nor ``aiohttp`` is needed.)"""

    def __init__(self, *, proxies: Any, ssl_context: Any, kind: str, max_bytes: int) -> None:
        super().__init__(proxies=proxies, ssl_context=ssl_context)
        self.kind = kind
        self.max_bytes = max_bytes
        self._local = threading.local()
        # Wrap the opener geopy built: successful answers' status and headers pass there.
        self._open: Callable[..., Any] = getattr(self, "urlopen")  # noqa: B009 (untyped base)
        self.urlopen = self._recording_open

    def begin(self) -> Exchange:
        exchange = Exchange()
        self._local.exchange = exchange
        return exchange

    def _exchange(self) -> Exchange | None:
        exchange: Exchange | None = getattr(self._local, "exchange", None)
        return exchange

    def _recording_open(self, request: Any, timeout: Any = None) -> Any:
        response = self._open(request, timeout=timeout)  # HTTP errors: recorded in get_text
        exchange = self._exchange()
        if exchange is not None:
            exchange.status = response.getcode()
            exchange.headers = {name.lower(): value for name, value in response.headers.items()}
        return response

    def get_text(self, url: str, *, timeout: Any, headers: Any) -> str:
        # The socket timeout bounds each read; this bounds the whole body.
        seconds = timeout if isinstance(timeout, (int, float)) and timeout > 0 else 10.0
        self._local.deadline = time.monotonic() + seconds
        try:
            text: str = super().get_text(url, timeout=timeout, headers=headers)
        except AdapterHTTPError as error:
            exchange = self._exchange()
            if exchange is not None:
                exchange.status = error.status_code
                exchange.headers = {k.lower(): v for k, v in (error.headers or {}).items()}
                exchange.text = error.text
            raise
        return text

    def get_json(self, url: str, *, timeout: Any, headers: Any) -> Any:
        page = parse_json(self.get_text(url, timeout=timeout, headers=headers))
        exchange = self._exchange()
        if exchange is not None:
            exchange.page = page
        check_page(self.kind, page)
        return page

    def _decode_page(self, page: Any) -> str:
        """geopy's reading of a body (2xx and error answers alike), bounded; geopy reads an
        error body's failure as "no body". (geopy's URLLibAdapter reads every body through
        this method; tests/test_geocode_hostile.py's huge answers hold it to that.)"""
        deadline: float = getattr(self._local, "deadline", time.monotonic() + 10.0)
        try:
            body = read_capped(page, self.max_bytes, deadline)
        finally:
            page.close()  # past the cap: the rest is never read
        return decode(body, page.headers.get_content_charset())
