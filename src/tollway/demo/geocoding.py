"""The geocoding part of ``tollway demo``: a batch of addresses failing over across three
stub providers as their quotas and budgets run out, on a fake clock (5 s between rows).

Three local stub servers speak OpenCage's, HERE's and Google's real formats; the real geopy
geocoders call them over HTTP on 127.0.0.1. The route tries OpenCage (free, 12 a day), then
HERE (8 a day), then Google ($0.005 a call, $0.05 a day). After four rows OpenCage answers
one 429 with ``Retry-After: 30``, so it cools down for six rows and HERE takes them; a few
addresses repeat, and are answered from the cache without paying again.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollway.client import Tollway
from tollway.outbound.geocode.adapters import make_adapter
from tollway.outbound.geocode.batch import BatchReport, geocode_csv
from tollway.outbound.geocode.geocoder import Geocoder
from tollway.outbound.geocode.stubs import running_stubs
from tollway.outbound.routing import ThresholdAlert
from tollway.testing import FakeClock

__all__ = ["GeocodingDemo", "demo_addresses", "demo_route_policy", "run_geocoding_demo"]

KINDS = ("opencage", "here", "google")
STREETS = ("Main Street", "Harbour Road", "Station Square", "Mill Lane", "Orchard Way")


def demo_route_policy() -> dict[str, Any]:
    """The demo's providers and route (domains are filled in once the stubs listen)."""
    return {
        "store": {"url": "memory://"},
        "providers": {
            "opencage": {
                "kind": "opencage",
                "price": "0 USD",
                "limits": [{"name": "daily", "quota": "12/day"}, {"name": "rps", "rate": "50/s"}],
            },
            "here": {
                "kind": "here",
                "price": "0.001 USD",
                "limits": [{"name": "daily", "quota": "8/day"}],
            },
            "google": {
                "kind": "google",
                "price": "0.005 USD",
                "timezone": "America/Los_Angeles",
                "limits": [
                    {"name": "qps", "rate": "50/s"},
                    {"name": "budget", "budget": "0.05 USD/day", "thresholds": [0.5, 0.8, 1.0]},
                ],
            },
        },
        "routes": {"geocoding": {"providers": list(KINDS)}},
    }


def demo_addresses(count: int = 42) -> list[str]:
    """``count`` addresses, every sixth a repeat of an earlier one (answered from the cache)."""
    out: list[str] = []
    for i in range(count):
        if i % 6 == 5:
            out.append(out[i - 3].upper())  # the same address, written differently
        else:
            out.append(f"{i + 1} {STREETS[i % len(STREETS)]}, Springfield")
    return out


@dataclass
class GeocodingDemo:
    report: BatchReport
    rows: list[dict[str, str]]
    alerts: list[ThresholdAlert]
    served: dict[str, int]
    """Calls each stub answered (what the providers would bill)."""

    def spent(self) -> Decimal:
        return sum((p.cost for p in self.report.providers.values()), Decimal(0))


SECONDS_PER_ROW = 5
"""The demo's clock moves this much between addresses (a fake clock: it runs in a second)."""
THROTTLE_AT = 4
"""After this many rows, OpenCage answers one 429 with ``Retry-After: 30``."""


def run_geocoding_demo(count: int = 42) -> GeocodingDemo:
    """Geocode ``count`` demo addresses through the stubs; the CSVs live in a temporary folder."""
    alerts: list[ThresholdAlert] = []
    clock = FakeClock(datetime(2026, 6, 10, 9, 0, tzinfo=timezone.utc))
    with running_stubs(KINDS) as stubs, tempfile.TemporaryDirectory(prefix="tollway-") as folder:
        tw = Tollway(demo_route_policy(), clock=clock)
        adapters = {
            kind: make_adapter(
                kind, api_key="demo-key", domain=stubs[kind].domain, scheme=stubs[kind].scheme
            )
            for kind in KINDS
        }
        source, output = Path(folder) / "addresses.csv", Path(folder) / "geocoded.csv"
        source.write_text(
            "id,address\n" + "".join(f"{i + 1},{a}\n" for i, a in enumerate(demo_addresses(count)))
        )

        def script(done: int, total: int, statuses: object) -> None:
            clock.advance(SECONDS_PER_ROW)
            if done == THROTTLE_AT:
                stubs["opencage"].throttle(n=1, retry_after="30")

        cache = Path(folder) / "cache.sqlite"
        with Geocoder(tw, adapters=adapters, cache=cache, on_threshold=alerts.append) as coder:
            report = geocode_csv(coder, source, output, workers=1, progress=script)
        with output.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        served = {kind: stubs[kind].served for kind in KINDS}
    return GeocodingDemo(report, rows, alerts, served)
