"""Each stub provider's wire format: its paths and parameters, its answers and its error forms.

The shapes follow each provider's documentation and what geopy's classes parse:

- Nominatim: ``GET /search?q=&format=json|jsonv2``; a JSON list; errors
  ``{"error": {"code", "message"}}``; 429 when too fast, 403 when the application is blocked.
- OpenCage: ``GET /geocode/v1/json?q=&key=``; every answer, errors included, carries
  ``status {code, message}``; free-trial answers carry ``rate`` and ``X-RateLimit-*``.
  401 bad key, 402 quota used up, 403 key disabled, 429 too fast (opencagedata.com/api#codes).
- Google: ``GET /maps/api/geocode/json?address=&key=``; errors are HTTP 200 with a ``status``
  (``OVER_DAILY_LIMIT``, ``OVER_QUERY_LIMIT``, ``REQUEST_DENIED``...) and ``error_message``.
- HERE v7: ``GET /v1/geocode?q=&apiKey=``; ``{"items": [...]}``; API errors
  ``{"status", "title", "correlationId", "requestId", "cause", "action"}``; gateway errors
  (401/403/429) ``{"error", "error_description"}``.
- Mapbox v5: ``GET /geocoding/v5/mapbox.places/{query}.json?access_token=``; a GeoJSON
  FeatureCollection; errors ``{"message"}``; ``X-Rate-Limit-Interval/Limit/Reset`` headers.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

from tollway.outbound.geocode.stubs.places import stub_result

__all__ = [
    "DIALECTS",
    "OPENCAGE_KEY_402",
    "OPENCAGE_KEY_403",
    "Dialect",
    "Reply",
    "Request",
    "Window",
]

# OpenCage's test keys (opencagedata.com/api#testingkeys): always 402, always 403.
OPENCAGE_KEY_402 = "4372eff77b8343cebfc843eb4da4ddc4"
OPENCAGE_KEY_403 = "2e10e5e828262eb243ec0b54681d699a"

_JSON = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    filler: bytes = b""
    """Sent ``repeat`` times after ``body``: a huge answer that is never held in memory."""
    repeat: int = 0
    trickle: float = 0.0
    """Seconds between one byte of the body and the next (0: all at once)."""

    @property
    def length(self) -> int:
        return len(self.body) + len(self.filler) * self.repeat


@dataclass(frozen=True, slots=True)
class Request:
    """What a stub needs from a request to a known path."""

    query: str | None
    key: str | None
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Window:
    """The quota window an answer reports (OpenCage's ``rate``, Mapbox's headers)."""

    limit: int
    remaining: int
    reset: int
    """Unix seconds: the next midnight UTC."""
    now: float


def json_reply(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(body, ensure_ascii=False).encode("utf-8"), _JSON, headers or {})


def text_reply(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
    return Reply(status, text.encode("utf-8"), content_type)


class Dialect:
    """One provider's format. Subclasses fill in the answers."""

    kind = ""

    def parse(self, path: str, params: Mapping[str, str]) -> Request | Reply:
        """The request, or the provider's answer to an unknown path."""
        raise NotImplementedError

    def check(self, request: Request) -> Reply | None:
        """The provider's answer to a request it refuses (no query, no key), else None."""
        raise NotImplementedError

    def answer(self, request: Request, window: Window) -> Reply:
        raise NotImplementedError

    def throttled(self, retry_after: str, window: Window) -> Reply:
        raise NotImplementedError

    def exhausted(self, window: Window) -> Reply:
        raise NotImplementedError

    def blocked(self) -> Reply:
        raise NotImplementedError

    def results(self, query: str) -> list[dict[str, Any]]:
        result = stub_result(self.kind, query)
        return [] if result is None else [result]


_V2_KEYS = {"class": "category"}


class Nominatim(Dialect):
    kind = "nominatim"
    formats = ("json", "jsonv2")

    def parse(self, path: str, params: Mapping[str, str]) -> Request | Reply:
        if path.rstrip("/") not in ("/search", "/search.php"):
            return self._error(404, "Not Found")
        return Request(params.get("q"), None, params)

    def check(self, request: Request) -> Reply | None:
        fmt = request.params.get("format", "jsonv2")
        if fmt not in self.formats:
            return self._error(400, f"Parameter 'format' must be one of: {', '.join(self.formats)}")
        if not (request.query or "").strip():
            return self._error(400, "Nominatim needs a query: parameter 'q'")
        return None

    def answer(self, request: Request, window: Window) -> Reply:
        places = self.results(request.query or "")
        if request.params.get("format", "jsonv2") == "jsonv2":
            # jsonv2 names OSM's "class" "category"
            places = [{_V2_KEYS.get(k, k): v for k, v in p.items()} for p in places]
        return json_reply(200, places)

    def throttled(self, retry_after: str, window: Window) -> Reply:
        return self._too_many(retry_after)

    def exhausted(self, window: Window) -> Reply:
        # Nominatim has no quota, only 429s; this one says to come back when the window resets.
        return self._too_many(str(max(0, round(window.reset - window.now))))

    def blocked(self) -> Reply:
        return text_reply(
            403, "<html><body><h1>Access blocked</h1></body></html>", "text/html; charset=utf-8"
        )

    def _too_many(self, retry_after: str) -> Reply:
        reply = self._error(429, "Too Many Requests")
        return replace(reply, headers={"Retry-After": retry_after})

    @staticmethod
    def _error(code: int, message: str) -> Reply:
        return json_reply(code, {"error": {"code": code, "message": message}})


class OpenCage(Dialect):
    kind = "opencage"
    path = "/geocode/v1/json"

    def parse(self, path: str, params: Mapping[str, str]) -> Request | Reply:
        if path.rstrip("/") != self.path:
            return self._page(404, "invalid API endpoint")
        return Request(params.get("q"), params.get("key"), params)

    def check(self, request: Request) -> Reply | None:
        if request.key == OPENCAGE_KEY_402:
            return self.exhausted(None)
        if request.key == OPENCAGE_KEY_403:
            return self.blocked()
        if not request.key:
            return self._page(401, "unable to authenticate - missing, invalid, or unknown API key")
        if not (request.query or "").strip():
            return self._page(400, "invalid request - missing or bad query")
        return None

    def answer(self, request: Request, window: Window) -> Reply:
        return self._page(200, "OK", self.results(request.query or ""), window)

    def throttled(self, retry_after: str, window: Window) -> Reply:
        reply = self._page(429, "too many requests (too quickly, rate limiting)")
        return replace(reply, headers={"Retry-After": retry_after})

    def exhausted(self, window: Window | None) -> Reply:
        return self._page(402, "quota exceeded", window=window)

    def blocked(self) -> Reply:
        return self._page(403, "disabled key")

    def _page(
        self,
        code: int,
        message: str,
        results: list[dict[str, Any]] | None = None,
        window: Window | None = None,
    ) -> Reply:
        results = results or []
        page: dict[str, Any] = {
            "documentation": "https://opencagedata.com/api",
            "licenses": [
                {"name": "see attribution guide", "url": "https://opencagedata.com/credits"}
            ],
        }
        headers: dict[str, str] = {}
        if window is not None:
            page["rate"] = {
                "limit": window.limit,
                "remaining": window.remaining,
                "reset": window.reset,
            }
            headers = {
                "X-RateLimit-Limit": str(window.limit),
                "X-RateLimit-Remaining": str(window.remaining),
                "X-RateLimit-Reset": str(window.reset),
            }
        now = window.now if window is not None else None
        page.update(
            {
                "results": results,
                "status": {"code": code, "message": message},
                "stay_informed": {
                    "blog": "https://blog.opencagedata.com",
                    "mastodon": "https://en.osm.town/@opencage",
                },
                "thanks": "For using an OpenCage API",
                "timestamp": {
                    "created_http": formatdate(now, usegmt=True),
                    "created_unix": int(now) if now is not None else _unix_now(),
                },
                "total_results": len(results),
            }
        )
        return json_reply(code, page, headers)


class Google(Dialect):
    kind = "google"
    path = "/maps/api/geocode/json"

    def parse(self, path: str, params: Mapping[str, str]) -> Request | Reply:
        if path.rstrip("/") != self.path:
            return text_reply(404, "<html><body>Error 404 (Not Found)</body></html>", "text/html")
        return Request(params.get("address"), params.get("key"), params)

    def check(self, request: Request) -> Reply | None:
        if not request.key:
            return self._status(
                "REQUEST_DENIED",
                "You must use an API key to authenticate each request to Google Maps Platform "
                "APIs. For additional information, please refer to http://g.co/dev/maps-no-account",
            )
        if not (request.query or "").strip():
            return self._status(
                "INVALID_REQUEST",
                "Invalid request. Missing the 'address', 'components', 'latlng' or 'place_id' "
                "parameter.",
            )
        return None

    def answer(self, request: Request, window: Window) -> Reply:
        results = self.results(request.query or "")
        return json_reply(200, {"results": results, "status": "OK" if results else "ZERO_RESULTS"})

    def throttled(self, retry_after: str, window: Window) -> Reply:
        # Google says "too fast" with HTTP 200 and a status; the stub adds Retry-After.
        reply = self._status("OVER_QUERY_LIMIT", "You have exceeded your rate-limit for this API.")
        return replace(reply, headers={"Retry-After": retry_after})

    def exhausted(self, window: Window) -> Reply:
        return self._status(
            "OVER_DAILY_LIMIT",
            "You have exceeded your daily request quota for this API. If you did not set a custom "
            "daily request quota, verify your project has an active billing account: "
            "http://g.co/dev/maps-no-account",
        )

    def blocked(self) -> Reply:
        return self._status("REQUEST_DENIED", "The provided API key is invalid.")

    @staticmethod
    def _status(status: str, message: str) -> Reply:
        return json_reply(200, {"error_message": message, "results": [], "status": status})


class Here(Dialect):
    kind = "here"
    path = "/v1/geocode"

    def parse(self, path: str, params: Mapping[str, str]) -> Request | Reply:
        if path.rstrip("/") != self.path:
            return self._api_error(404, "Not Found", f"Path {path!r} is not an endpoint")
        return Request(params.get("q"), params.get("apiKey"), params)

    def check(self, request: Request) -> Reply | None:
        if not request.key:
            return self._gateway(401, "Unauthorized", "No credentials found")
        if not (request.query or "").strip() and not request.params.get("qq"):
            return self._api_error(
                400, "Illegal input for parameter 'q'", "Either 'q' or 'qq' is required"
            )
        return None

    def answer(self, request: Request, window: Window) -> Reply:
        return json_reply(200, {"items": self.results(request.query or "")})

    def throttled(self, retry_after: str, window: Window) -> Reply:
        reply = self._gateway(
            429, "Too Many Requests", "Rate limit for this service has been reached"
        )
        return replace(reply, headers={"Retry-After": retry_after})

    def exhausted(self, window: Window) -> Reply:
        # HERE: "if a quota is exceeded ... the API returns a HTTP 429/503 status code and a
        # message that the account has exceeded the quota" (docs.here.com limits-and-quotas).
        # The exact wording is not documented; this one says "quota", as HERE's does.
        return self._gateway(
            429, "Too Many Requests", "The account has exceeded its quota for this service"
        )

    def blocked(self) -> Reply:
        return self._gateway(403, "Forbidden", "These credentials do not authorize access")

    @staticmethod
    def _gateway(code: int, error: str, description: str) -> Reply:
        return json_reply(code, {"error": error, "error_description": description})

    @staticmethod
    def _api_error(code: int, title: str, cause: str) -> Reply:
        request_id = str(uuid.uuid4())
        return json_reply(
            code,
            {
                "status": code,
                "title": title,
                "correlationId": request_id,
                "requestId": "REQ-" + request_id,
                "cause": cause,
                "action": "",
            },
        )


class MapBox(Dialect):
    kind = "mapbox"
    prefix = "/geocoding/v5/mapbox.places/"
    attribution = (
        "NOTICE: © Mapbox and its suppliers. All rights reserved. Use of this data is subject to "
        "the Mapbox Terms of Service (https://www.mapbox.com/about/maps/). This response and the "
        "information it contains may not be retained."
    )

    def parse(self, path: str, params: Mapping[str, str]) -> Request | Reply:
        # geopy quotes the query with "/" left as is, so take everything after the prefix.
        rest = path[len(self.prefix) :] if path.startswith(self.prefix) else None
        rest = rest.rstrip("/") if rest is not None else None
        if rest is None or not rest.endswith(".json"):
            return self._message(404, "Not Found")
        return Request(unquote(rest[: -len(".json")]), params.get("access_token"), params)

    def check(self, request: Request) -> Reply | None:
        if not request.key:
            return self._message(401, "Not Authorized - No Token")
        if not (request.query or "").strip():
            return self._message(404, "Not Found")
        return None

    def answer(self, request: Request, window: Window) -> Reply:
        query = request.query or ""
        body = {
            "type": "FeatureCollection",
            "query": re.findall(r"\w+", query.lower()),
            "features": self.results(query),
            "attribution": self.attribution,
        }
        return json_reply(200, body, self._minute_window(window))

    def throttled(self, retry_after: str, window: Window) -> Reply:
        reply = self._message(429, "Too Many Requests")
        headers = {**self._minute_window(window), "Retry-After": retry_after}
        return replace(reply, headers=headers)

    def exhausted(self, window: Window) -> Reply:
        # Mapbox has no hard quota, only rate limits: a 429 whose window ends at the quota reset.
        reply = self._message(429, "Too Many Requests")
        headers = {
            "X-Rate-Limit-Interval": "86400",
            "X-Rate-Limit-Limit": str(window.limit),
            "X-Rate-Limit-Reset": str(window.reset),
        }
        return replace(reply, headers=headers)

    def blocked(self) -> Reply:
        return self._message(401, "Not Authorized - Invalid Token")

    @staticmethod
    def _minute_window(window: Window) -> dict[str, str]:
        # Mapbox's documented rate headers: 600 requests a minute, no "remaining".
        return {
            "X-Rate-Limit-Interval": "60",
            "X-Rate-Limit-Limit": "600",
            "X-Rate-Limit-Reset": str(int(window.now) // 60 * 60 + 60),
        }

    @staticmethod
    def _message(code: int, message: str) -> Reply:
        return json_reply(code, {"message": message})


def _unix_now() -> int:
    return int(time.time())


DIALECTS: dict[str, Dialect] = {
    d.kind: d for d in (Nominatim(), OpenCage(), Google(), Here(), MapBox())
}
