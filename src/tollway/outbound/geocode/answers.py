"""A provider's answer read as hostile input: bounded in size, time, charset, nesting and shape.

Every check here raises `BadAnswer`, which the adapter turns into one provider failure
(``Signal.error``): the router fails over as for any bad answer and the batch goes on. No
geopy here: bytes, text and parsed JSON in, values or `BadAnswer` out.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

from tollway.errors import ConfigurationError, TollwayError

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_DEPTH",
    "BadAnswer",
    "check_answer_cap",
    "check_page",
    "coordinates",
    "decode",
    "parse_json",
    "read_capped",
    "text_or_empty",
]

MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""Default cap on one answer's body: a geocoding answer is a few KB; past the cap the read
stops (nothing more is buffered) and the answer is refused."""
MAX_DEPTH = 64
"""Nesting of arrays and objects in an answer; real ones nest less than 10 deep."""
_CHUNK = 64 * 1024

# Where each kind keeps its list of results (None: the page is the list), and each result's
# latitude and longitude (Mapbox: GeoJSON [lon, lat]).
_RESULTS: dict[str, str | None] = {
    "google": "results",
    "here": "items",
    "opencage": "results",
    "nominatim": None,
    "mapbox": "features",
}
_COORDINATES: dict[str, tuple[tuple[str | int, ...], tuple[str | int, ...]]] = {
    "google": (("geometry", "location", "lat"), ("geometry", "location", "lng")),
    "here": (("position", "lat"), ("position", "lng")),
    "opencage": (("geometry", "lat"), ("geometry", "lng")),
    "nominatim": (("lat",), ("lon",)),
    "mapbox": (("geometry", "coordinates", 1), ("geometry", "coordinates", 0)),
}


class BadAnswer(TollwayError):
    """A provider's answer that cannot be used (too big, too slow, undecodable, not the
    provider's shape); the message says what was wrong."""


class _Body(Protocol):
    def read(self, amt: int = ..., /) -> bytes: ...


def check_answer_cap(value: object, name: str = "max_answer_bytes") -> None:
    """`ConfigurationError` unless ``value`` is a whole number of bytes from 1 KiB to 1 GiB."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 30:
        raise ConfigurationError(
            f"{name}: {value!r}; expected a whole number of bytes from 1024 to {1 << 30}"
        )


def read_capped(page: _Body, limit: int, deadline: float) -> bytes:
    """The body of ``page``, read in chunks; `BadAnswer` once it passes ``limit`` bytes or the
    ``deadline`` (a `time.monotonic` value: a trickling server is cut off, not waited for)."""
    # read1 returns what one socket read gives, so the deadline is checked between reads
    # (read(n) on a trickle would wait for n bytes, one socket timeout per byte).
    read = getattr(page, "read1", None) or page.read
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise BadAnswer(f"answer larger than {limit:,} bytes; the read stopped there")
        parts.append(chunk)
        if time.monotonic() > deadline:
            raise BadAnswer(f"answer not complete in time ({size:,} bytes received)")


def decode(body: bytes, charset: str | None) -> str:
    """``body`` as text in the answer's declared charset (UTF-8 when none is declared)."""
    name = (charset or "utf-8").strip()
    try:
        return body.decode(name)
    except LookupError:  # unknown, or not a text codec (rot13, base64...)
        raise BadAnswer(f"answer in an unknown charset {name[:40]!r}") from None
    except ValueError as exc:  # UnicodeDecodeError
        raise BadAnswer(f"answer not valid {name[:40]}: {str(exc)[:80]}") from None


def _refuse_constant(name: str) -> Any:
    raise BadAnswer(f"answer holds {name}, which is not JSON")


def parse_json(text: str) -> Any:
    """The JSON in ``text``; `BadAnswer` for garbage, NaN/Infinity, or nesting past
    `MAX_DEPTH`."""
    try:
        page = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadAnswer(f"answer nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError; an integer of too many digits
        raise BadAnswer(f"answer not JSON ({exc})") from None
    _check_depth(page)
    return page


def _check_depth(page: Any) -> None:
    # Iterative: a deep answer must not be walked by recursion either.
    stack: list[tuple[Any, int]] = [(page, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise BadAnswer(f"answer nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def check_page(kind: str, page: Any) -> None:
    """The page has the provider's shape where geopy reads it: the results a list of objects,
    each with coordinates that `coordinates` accepts."""
    key = _RESULTS.get(kind)
    if key is None:
        results = page
        where = "the answer"
    else:
        if not isinstance(page, dict):
            raise BadAnswer(f"answer is {_kind_of(page)}; expected an object")
        results = page.get(key, [])
        where = f"{key!r}"
    if not isinstance(results, list):
        raise BadAnswer(f"{where} is {_kind_of(results)}; expected a list of results")
    for result in results:
        if not isinstance(result, dict):
            raise BadAnswer(f"{where} holds {_kind_of(result)}; expected result objects")
        coordinates(kind, result)  # before geopy reads them (it would take null for 0)


def coordinates(kind: str, raw: Mapping[str, Any]) -> tuple[float, float]:
    """The latitude and longitude of one result, checked: numbers (Nominatim: numeric
    strings), finite, latitude within ±90 and longitude within ±180. (geopy reads a missing
    coordinate as 0 and wraps a longitude past 180: neither is what the provider meant.)"""
    lat_path, lon_path = _COORDINATES[kind]
    lat = _coordinate(kind, raw, lat_path, 90.0)
    lon = _coordinate(kind, raw, lon_path, 180.0)
    return lat, lon


def _coordinate(
    kind: str, raw: Mapping[str, Any], path: tuple[str | int, ...], bound: float
) -> float:
    value: Any = raw
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and len(value) > step else None
        else:
            value = value.get(step) if isinstance(value, Mapping) else None
    name = ".".join(str(step) for step in path)
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and kind == "nominatim" and len(value) <= 40:
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None:
        raise BadAnswer(f"result {name} is {_kind_of(value)}; expected a number")
    if not math.isfinite(number) or abs(number) > bound:
        raise BadAnswer(f"result {name} is {number!r}; expected a number within ±{bound:g}")
    return number


def text_or_empty(value: Any, name: str) -> str:
    """A text field of a result (absent: empty); `BadAnswer` if it is not text."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadAnswer(f"result {name} is {_kind_of(value)}; expected text")
    return value


def _kind_of(value: Any) -> str:
    if value is None:
        return "missing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:30]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
