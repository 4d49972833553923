"""What the stub providers answer for a query: a fake place derived from a hash of the query.

Everything here is a pure function of the query (SHA-256, not ``hash()``, so it is the same in
every process and every run), so a test can compute what a stub will answer and compare.
Coordinates are rounded to 6 decimals, and every provider reports the same ones.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CITY",
    "COUNTRY",
    "COUNTRY_CODE",
    "COUNTRY_CODE3",
    "EMPTY_QUERY",
    "PRECISIONS",
    "StubPlace",
    "stub_place",
    "stub_result",
]

EMPTY_QUERY = "NOWHERE-INTERESTING"
"""The query every stub answers with a valid, empty answer (Google: ``ZERO_RESULTS``)."""

# A made-up country: "ZZ" / "ZZZ" are ISO 3166 user-assigned codes, never a real country.
CITY = "Stubville"
COUNTRY = "Stubland"
COUNTRY_CODE = "ZZ"
COUNTRY_CODE3 = "ZZZ"

PRECISIONS = ("building", "street", "city", "region")
"""How precise a stub place is; each provider names these levels in its own words."""

# Half the side of the bounding box / viewport, in degrees, per precision.
_SPAN = (0.0005, 0.005, 0.05, 0.5)
_LICENCE = "Data © OpenStreetMap contributors, ODbL 1.0. http://osm.org/copyright"


@dataclass(frozen=True, slots=True)
class StubPlace:
    """The fake place behind a query, in provider-neutral terms."""

    query: str
    lat: float
    lon: float
    formatted_address: str
    precision: str
    """One of `PRECISIONS`."""
    score: float
    """0.5-1.0, reported as Nominatim ``importance``, HERE ``queryScore``, Mapbox ``relevance``."""
    number: int
    """A stable id (place ids, OSM ids)."""

    @property
    def level(self) -> int:
        return PRECISIONS.index(self.precision)

    @property
    def street(self) -> str:
        return self.query.strip() or "Unnamed Road"

    def bounds(self) -> tuple[float, float, float, float]:
        """(south, west, north, east)."""
        span = _SPAN[self.level]
        return (
            round(self.lat - span, 6),
            round(self.lon - span, 6),
            round(self.lat + span, 6),
            round(self.lon + span, 6),
        )


def stub_place(query: str) -> StubPlace:
    digest = hashlib.sha256(query.encode("utf-8")).digest()
    a = int.from_bytes(digest[0:8], "big")
    b = int.from_bytes(digest[8:16], "big")
    c = int.from_bytes(digest[16:24], "big")
    d = int.from_bytes(digest[24:32], "big")
    street = query.strip() or "Unnamed Road"
    return StubPlace(
        query=query,
        # Stay clear of the poles and of the antimeridian, so boxes never wrap.
        lat=round(-80.0 + 160.0 * a / 2**64, 6),
        lon=round(-179.0 + 358.0 * b / 2**64, 6),
        formatted_address=f"{street}, {CITY}, {COUNTRY}",
        precision=PRECISIONS[c % len(PRECISIONS)],
        score=round(0.5 + (c >> 8) % 501 / 1000, 3),
        number=d % 10**9 + 1,
    )


def stub_result(kind: str, query: str) -> dict[str, Any] | None:
    """The result object the ``kind`` stub answers for ``query`` (None for `EMPTY_QUERY`).

    Nominatim's is the ``format=json`` form (what geopy asks for); ``jsonv2`` says ``category``
    instead of ``class``.
    """
    if query == EMPTY_QUERY:
        return None
    place = stub_place(query)
    try:
        build = _BUILDERS[kind]
    except KeyError:
        raise ValueError(f"kind: {kind!r}; expected one of {', '.join(_BUILDERS)}") from None
    return build(place)


def _nominatim(place: StubPlace) -> dict[str, Any]:
    south, west, north, east = place.bounds()
    osm_class, osm_type, addresstype, rank, osm_kind = (
        ("place", "house", "place", 30, "node"),
        ("highway", "residential", "road", 26, "way"),
        ("place", "city", "city", 16, "relation"),
        ("boundary", "administrative", "state", 8, "relation"),
    )[place.level]
    return {
        "place_id": place.number,
        "licence": _LICENCE,
        "osm_type": osm_kind,
        "osm_id": place.number * 7 % 10**10,
        "lat": f"{place.lat:.7f}",
        "lon": f"{place.lon:.7f}",
        "class": osm_class,
        "type": osm_type,
        "place_rank": rank,
        "importance": place.score,
        "addresstype": addresstype,
        "name": place.street if place.level < 2 else CITY,
        "display_name": place.formatted_address,
        "boundingbox": [f"{v:.7f}" for v in (south, north, west, east)],
    }


def _google(place: StubPlace) -> dict[str, Any]:
    south, west, north, east = place.bounds()
    components: list[dict[str, Any]] = []
    if place.level == 0:
        number = str(place.number % 200 + 1)
        components.append({"long_name": number, "short_name": number, "types": ["street_number"]})
    if place.level <= 1:
        components.append(
            {"long_name": place.street, "short_name": place.street, "types": ["route"]}
        )
    components += [
        {"long_name": CITY, "short_name": CITY, "types": ["locality", "political"]},
        {"long_name": COUNTRY, "short_name": COUNTRY_CODE, "types": ["country", "political"]},
    ]
    location_type, types = (
        ("ROOFTOP", ["street_address"]),
        ("RANGE_INTERPOLATED", ["route"]),
        ("APPROXIMATE", ["locality", "political"]),
        ("APPROXIMATE", ["administrative_area_level_1", "political"]),
    )[place.level]
    return {
        "address_components": components,
        "formatted_address": place.formatted_address,
        "geometry": {
            "location": {"lat": place.lat, "lng": place.lon},
            "location_type": location_type,
            "viewport": {
                "northeast": {"lat": north, "lng": east},
                "southwest": {"lat": south, "lng": west},
            },
        },
        "place_id": "ChIJ" + _token(place, 23),
        "types": types,
    }


def _here(place: StubPlace) -> dict[str, Any]:
    south, west, north, east = place.bounds()
    result_type = ("houseNumber", "street", "locality", "administrativeArea")[place.level]
    address: dict[str, Any] = {
        "label": place.formatted_address,
        "countryCode": COUNTRY_CODE3,
        "countryName": COUNTRY,
        "city": CITY,
    }
    field_score: dict[str, Any] = {"city": 1.0}
    if place.level <= 1:
        address["street"] = place.street
        field_score["streets"] = [place.score]
    item: dict[str, Any] = {
        "title": place.formatted_address,
        "id": "here:af:streetsection:" + _token(place, 22),
        "resultType": result_type,
    }
    if place.level == 0:
        item["houseNumberType"] = "PA"
    elif place.level == 2:
        item["localityType"] = "city"
    elif place.level == 3:
        item["administrativeAreaType"] = "state"
    item.update(
        {
            "address": address,
            "position": {"lat": place.lat, "lng": place.lon},
            "mapView": {"west": west, "south": south, "east": east, "north": north},
            "scoring": {"queryScore": place.score, "fieldScore": field_score},
        }
    )
    return item


def _opencage(place: StubPlace) -> dict[str, Any]:
    south, west, north, east = place.bounds()
    kind, category, confidence = (
        ("building", "building", 10),
        ("road", "road", 8),
        ("city", "place", 5),
        ("state", "place", 2),
    )[place.level]
    components: dict[str, Any] = {
        "ISO_3166-1_alpha-2": COUNTRY_CODE,
        "ISO_3166-1_alpha-3": COUNTRY_CODE3,
        "_category": category,
        "_type": kind,
        "city": CITY,
        "country": COUNTRY,
        "country_code": COUNTRY_CODE.lower(),
    }
    if place.level <= 1:
        components["road"] = place.street
    return {
        "bounds": {
            "northeast": {"lat": north, "lng": east},
            "southwest": {"lat": south, "lng": west},
        },
        "components": components,
        "confidence": confidence,
        "formatted": place.formatted_address,
        "geometry": {"lat": place.lat, "lng": place.lon},
    }


def _mapbox(place: StubPlace) -> dict[str, Any]:
    south, west, north, east = place.bounds()
    place_type = ("address", "address", "place", "region")[place.level]
    feature: dict[str, Any] = {
        "id": f"{place_type}.{place.number}",
        "type": "Feature",
        "place_type": [place_type],
        "relevance": place.score,
        "properties": {"accuracy": "rooftop"} if place.level == 0 else {},
        "text": place.street if place.level <= 1 else CITY,
        "place_name": place.formatted_address,
        "center": [place.lon, place.lat],
        "geometry": {"type": "Point", "coordinates": [place.lon, place.lat]},
    }
    if place.level >= 2:
        feature["bbox"] = [west, south, east, north]
    feature["context"] = [
        {"id": f"place.{place.number % 100000}", "text": CITY},
        {
            "id": f"country.{place.number % 1000}",
            "short_code": COUNTRY_CODE.lower(),
            "text": COUNTRY,
        },
    ]
    return feature


def _token(place: StubPlace, length: int) -> str:
    digest = hashlib.sha256(f"id:{place.query}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:length]


_BUILDERS = {
    "nominatim": _nominatim,
    "opencage": _opencage,
    "google": _google,
    "here": _here,
    "mapbox": _mapbox,
}
