"""One geocoding answer in one shape, whichever provider gave it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["GeocodeResult"]


@dataclass(frozen=True, slots=True)
class GeocodeResult:
    """A provider's best match for ``query``.

    ``confidence`` and ``accuracy`` are the provider's own figures when it gives them, on its
    own scale (OpenCage ``confidence`` 0-10, HERE ``scoring.queryScore`` 0-1, Mapbox
    ``relevance`` 0-1, Nominatim ``importance``; ``accuracy`` is a category such as Google's
    ``location_type`` or HERE's ``resultType``). ``raw`` is the provider's result object as
    it was received (JSON-ready).
    """

    query: str
    provider: str
    formatted_address: str
    lat: float
    lon: float
    confidence: float | None = None
    accuracy: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "provider": self.provider,
            "formatted_address": self.formatted_address,
            "lat": self.lat,
            "lon": self.lon,
            "confidence": self.confidence,
            "accuracy": self.accuracy,
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeocodeResult:
        return cls(
            query=str(data["query"]),
            provider=str(data["provider"]),
            formatted_address=str(data["formatted_address"]),
            lat=float(data["lat"]),
            lon=float(data["lon"]),
            confidence=None if data.get("confidence") is None else float(data["confidence"]),
            accuracy=None if data.get("accuracy") is None else str(data["accuracy"]),
            raw=dict(data.get("raw") or {}),
        )
