"""Local stand-ins for paid geocoding APIs, speaking each provider's real wire format.

For tests and for ``tollway demo``: standard library only, served on 127.0.0.1 from a daemon
thread, with a behaviour program (quota, throttle, fail, garbage, slow, block) that the
calling process can change while the stub runs::

    with StubServer("opencage") as stub:
        stub.quota(3)
        geocoder = OpenCage("any-key", domain=stub.domain, scheme=stub.scheme)

Answers are deterministic: `stub_result` / `stub_place` say what a stub answers for a query.
"""

from __future__ import annotations

from tollway.outbound.geocode.stubs.dialects import OPENCAGE_KEY_402, OPENCAGE_KEY_403
from tollway.outbound.geocode.stubs.places import (
    CITY,
    COUNTRY,
    COUNTRY_CODE,
    COUNTRY_CODE3,
    EMPTY_QUERY,
    PRECISIONS,
    StubPlace,
    stub_place,
    stub_result,
)
from tollway.outbound.geocode.stubs.server import (
    DEFAULT_DAILY_LIMIT,
    KINDS,
    StubServer,
    next_midnight_utc,
    running_stubs,
    start_stubs,
    stop_stubs,
)

__all__ = [
    "CITY",
    "COUNTRY",
    "COUNTRY_CODE",
    "COUNTRY_CODE3",
    "DEFAULT_DAILY_LIMIT",
    "EMPTY_QUERY",
    "KINDS",
    "OPENCAGE_KEY_402",
    "OPENCAGE_KEY_403",
    "PRECISIONS",
    "StubPlace",
    "StubServer",
    "next_midnight_utc",
    "running_stubs",
    "start_stubs",
    "stop_stubs",
    "stub_place",
    "stub_result",
]
