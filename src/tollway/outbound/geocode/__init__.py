"""Geocoding through a route of providers (``pip install 'tollway[geocode]'``: geopy).

`Geocoder` puts a result cache, in-flight de-duplication and in-flight marks in front of a
route; `make_adapter` wraps geopy's geocoders; `geocode_csv` is ``tollway geocode``.
"""

from tollway.outbound.geocode.adapters import Answer, GeocodeAdapter, make_adapter
from tollway.outbound.geocode.batch import BatchReport, geocode_csv
from tollway.outbound.geocode.cache import CacheError, ResultCache
from tollway.outbound.geocode.geocoder import GeocodeOutcome, Geocoder, adapters_from_policy
from tollway.outbound.geocode.result import GeocodeResult

__all__ = [
    "Answer",
    "BatchReport",
    "CacheError",
    "GeocodeAdapter",
    "GeocodeOutcome",
    "GeocodeResult",
    "Geocoder",
    "ResultCache",
    "adapters_from_policy",
    "geocode_csv",
    "make_adapter",
]
