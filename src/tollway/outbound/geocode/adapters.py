"""Geocoding adapters over geopy: one call in, a `GeocodeResult` and a `Signal` out.

``make_adapter("opencage", api_key=...)`` wraps the real geopy class (``GoogleV3``,
``HereV7``, ``OpenCage``, ``Nominatim``, ``MapBox``); ``lookup(query)`` returns an `Answer`
(the result, or None when the provider found nothing, plus the call's `Signal`) or raises
`ProviderCallError` carrying the failure's signal.

geopy keeps neither the page nor the response headers, which carry what the signal needs
(OpenCage's ``rate`` block, ``X-RateLimit-*``, ``Retry-After`` on a HERE 429, Google's
``status``). `RecordingAdapter`, a geopy ``URLLibAdapter``, records them per thread: a call
runs start to end on one thread (``ageocode`` runs it in a worker thread), so one geocoder can
serve many threads at once.

What feeds ``confidence`` / ``accuracy`` in the `GeocodeResult`, per provider:

========= ===================================== ==========================================
kind      confidence                            accuracy
========= ===================================== ==========================================
google    None (Google gives no score)          ``geometry.location_type`` (``ROOFTOP``...)
here      ``scoring.queryScore`` (0-1)          ``resultType`` (``houseNumber``...)
opencage  ``confidence`` (0-10; 10 is < 250 m)  ``components._type`` (``building``...)
nominatim ``importance`` (0-1)                  ``addresstype``, else ``type``
mapbox    ``relevance`` (0-1)                   ``place_type[0]`` (``address``, ``place``...)
========= ===================================== ==========================================
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from geopy.exc import (  # type: ignore[import-untyped]
    GeocoderAuthenticationFailure,
    GeocoderInsufficientPrivileges,
    GeocoderQuotaExceeded,
    GeocoderRateLimited,
    GeocoderTimedOut,
    GeopyError,
)
from geopy.geocoders import (  # type: ignore[import-untyped]
    GoogleV3,
    HereV7,
    MapBox,
    Nominatim,
    OpenCage,
)

from tollway.errors import ConfigurationError, InvalidArgumentError
from tollway.outbound.geocode.answers import (
    MAX_ANSWER_BYTES,
    BadAnswer,
    check_answer_cap,
    coordinates,
    text_or_empty,
)
from tollway.outbound.geocode.recording import Exchange, RecordingAdapter
from tollway.outbound.geocode.replies import (
    RateInfo,
    clip,
    google_signal,
    json_or_none,
    message_of,
    rate_block,
    read_rate_headers,
    retry_after_of,
)
from tollway.outbound.geocode.result import GeocodeResult
from tollway.outbound.signals import ProviderCallError, Signal

__all__ = [
    "ADAPTER_KINDS",
    "Answer",
    "GeocodeAdapter",
    "RateInfo",
    "make_adapter",
    "read_rate_headers",
]

ADAPTER_KINDS: tuple[str, ...] = ("google", "here", "opencage", "nominatim", "mapbox")

# Where each provider answers when no domain is given (HERE: the full geocode host; geopy's
# own HereV7 ``domain`` is a base that it prefixes with "geocode.").
_DEFAULT_DOMAINS = {
    "google": "maps.googleapis.com",
    "here": "geocode.search.hereapi.com",
    "opencage": "api.opencagedata.com",
    "nominatim": "nominatim.openstreetmap.org",
    "mapbox": "api.mapbox.com",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One call's outcome: the best match (None: the provider found nothing, still a billed
    call) and what the answer says about the provider."""

    result: GeocodeResult | None
    signal: Signal


class GeocodeAdapter:
    """One provider behind a geopy geocoder. Build it with `make_adapter`. Thread-safe."""

    def __init__(
        self,
        kind: str,
        provider: str,
        geocoder: Any,
        http: RecordingAdapter,
        stores_results: bool,
    ) -> None:
        self.kind = kind
        self.provider = provider
        """The provider's name in the tollway policy."""
        self.stores_results = stores_results
        """Whether results may be cached (Mapbox's temporary geocoding forbids it)."""
        self._geocoder = geocoder
        self._http = http

    def __repr__(self) -> str:
        return f"GeocodeAdapter({self.kind!r}, provider={self.provider!r})"

    def lookup(self, query: str) -> Answer:
        """Geocode ``query``: the best match and an ok signal, or `ProviderCallError`."""
        _check_query(query)
        exchange = self._http.begin()
        try:
            location = self._geocoder.geocode(query, exactly_one=True)
            result = None if location is None else self._normalize(query, location)
            signal = self._ok_signal(exchange)
        except BadAnswer as error:
            raise self._failure(Signal.error(clip(f"bad answer: {error}"))) from error
        except GeopyError as error:
            raise self._failure(self._error_signal(error, exchange)) from error
        except Exception as error:  # whatever an answer makes geopy raise
            # JSON, but not the provider's shape: as unreadable as garbage. Never a traceback
            # for what a provider sent (LookupError, RecursionError, TypeError...).
            signal = Signal.error(clip(f"unexpected answer: {error!r}"))
            raise self._failure(signal) from error
        return Answer(result, signal)

    async def alookup(self, query: str) -> Answer:
        """`lookup` in a worker thread."""
        _check_query(query)
        return await asyncio.to_thread(self.lookup, query)

    def geocode(self, query: str) -> GeocodeResult | None:
        return self.lookup(query).result

    async def ageocode(self, query: str) -> GeocodeResult | None:
        return (await self.alookup(query)).result

    # ---------------------------------------------------------------- answers

    def _normalize(self, query: str, location: Any) -> GeocodeResult:
        raw: dict[str, Any] = dict(location.raw)
        confidence = _CONFIDENCE[self.kind](raw)
        accuracy = _ACCURACY[self.kind](raw)
        lat, lon = coordinates(self.kind, raw)  # the provider's own, checked
        return GeocodeResult(
            query=query,
            provider=self.provider,
            formatted_address=text_or_empty(location.address, "address"),
            lat=lat,
            lon=lon,
            confidence=confidence,
            accuracy=accuracy if isinstance(accuracy, str) else None,
            raw=raw,
        )

    def _ok_signal(self, exchange: Exchange) -> Signal:
        remaining, reset_at = rate_block(exchange.page)
        if remaining is None:
            remaining, reset_at = read_rate_headers(exchange.headers)
        # A reset time without a count says nothing about what is left.
        return Signal.ok(remaining=remaining, reset_at=reset_at if remaining is not None else None)

    def _failure(self, signal: Signal) -> ProviderCallError:
        return ProviderCallError(self.provider, signal)

    def _error_signal(self, error: Exception, exchange: Exchange) -> Signal:
        try:
            return self._signal_for(error, exchange)
        except Exception as unreadable:  # a hostile error answer: its headers, its body
            detail = clip(f"HTTP {exchange.status}: unreadable: {unreadable!r}")
            # "Too fast" still, with a Retry-After past reading: the router's own cooldown.
            return (
                Signal.throttled(None, detail) if exchange.status == 429 else Signal.error(detail)
            )

    def _signal_for(self, error: Exception, exchange: Exchange) -> Signal:
        if self.kind == "google" and isinstance(exchange.page, dict):
            return google_signal(exchange.page, exchange.headers)
        body = json_or_none(exchange.text)
        message = message_of(body) or (exchange.text or "").strip() or str(error)
        detail = clip(f"HTTP {exchange.status}: {message}" if exchange.status else message)
        if self.kind == "here" and exchange.status in (429, 503) and "quota" in message.lower():
            # HERE answers both "too fast" and "quota used up" with 429 (or 503); only the
            # message tells them apart: docs.here.com/policies/docs/limits-and-quotas ("a
            # message that the account has exceeded the quota"); the plain rate limit says
            # "Rate limit for this service has been reached".
            return Signal.exhausted(detail, reset_at=read_rate_headers(exchange.headers).reset_at)
        if isinstance(error, GeocoderRateLimited):  # before its base, GeocoderQuotaExceeded
            return Signal.throttled(retry_after_of(error.retry_after, exchange.headers), detail)
        if isinstance(error, GeocoderQuotaExceeded):
            _, reset_at = rate_block(body)
            if reset_at is None:
                reset_at = read_rate_headers(exchange.headers).reset_at
            return Signal.exhausted(detail, reset_at=reset_at)
        if isinstance(error, (GeocoderAuthenticationFailure, GeocoderInsufficientPrivileges)):
            return Signal.blocked(detail)
        if isinstance(error, GeocoderTimedOut) and exchange.status is None:
            # The request went out and no answer came: the provider may have billed it.
            return Signal.error(clip(f"timeout: {error}"), billed=True)
        # GeocoderServiceError, GeocoderUnavailable, GeocoderParseError (garbage), 5xx...
        return Signal.error(detail)


def _dig(raw: Mapping[str, Any], *path: str) -> Any:
    value: Any = raw
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _first_place_type(raw: Mapping[str, Any]) -> Any:
    types = raw.get("place_type")
    return types[0] if isinstance(types, list) and types else None


_CONFIDENCE: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "google": lambda raw: None,
    "here": lambda raw: _number(_dig(raw, "scoring", "queryScore")),
    "opencage": lambda raw: _number(raw.get("confidence")),
    "nominatim": lambda raw: _number(raw.get("importance")),
    "mapbox": lambda raw: _number(raw.get("relevance")),
}
_ACCURACY: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "google": lambda raw: _dig(raw, "geometry", "location_type"),
    "here": lambda raw: raw.get("resultType"),
    "opencage": lambda raw: _dig(raw, "components", "_type"),
    "nominatim": lambda raw: raw.get("addresstype") or raw.get("type"),
    "mapbox": _first_place_type,
}


def _check_query(query: object) -> None:
    if not isinstance(query, str):
        raise InvalidArgumentError(
            f"query: {query!r} ({type(query).__name__}); expected a non-empty string"
        )
    if not query.strip():
        raise InvalidArgumentError(f"query: {query!r}; expected a non-empty string")


def make_adapter(
    kind: str,
    *,
    provider: str | None = None,
    api_key: str | None = None,
    domain: str | None = None,
    scheme: str = "https",
    timeout: float = 10.0,
    user_agent: str = "tollway",
    stores_results: bool | None = None,
    max_answer_bytes: int = MAX_ANSWER_BYTES,
) -> GeocodeAdapter:
    """A `GeocodeAdapter` for ``kind`` (one of `ADAPTER_KINDS`).

    ``provider``: the provider's name in the policy (default: ``kind``). ``api_key``: required
    except for nominatim. ``domain``: the host (and port) requests go to, for every kind,
    e.g. a stub's ``127.0.0.1:PORT``; default: the provider's own. ``stores_results``: whether
    results may be cached (default False for mapbox, whose temporary geocoding forbids
    storing them, True otherwise). ``max_answer_bytes``: the largest answer read (default
    4 MiB); a larger one, or one whose body takes longer than ``timeout``, is a failed call.
    """
    if kind not in ADAPTER_KINDS:
        raise ConfigurationError(f"kind: {kind!r}; expected one of {', '.join(ADAPTER_KINDS)}")
    if provider is None:
        provider = kind
    _check_text("provider", provider, "the provider's name in the policy")
    if kind != "nominatim":
        _check_text("api_key", api_key, f"the {kind} API key (a non-empty string)")
    elif api_key is not None:
        _check_text("api_key", api_key, "None (nominatim takes no key) or a string")
    if domain is not None:
        _check_text("domain", domain, "a host[:port] such as 'api.opencagedata.com'")
        if "://" in domain or "/" in domain.strip("/"):
            raise ConfigurationError(
                f"domain: {domain!r}; expected a host[:port] without a scheme or a path "
                "(pass the scheme as scheme=)"
            )
        domain = domain.strip("/")
    if scheme not in ("http", "https"):
        raise ConfigurationError(f"scheme: {scheme!r}; expected 'https' or 'http'")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < float("inf")
    ):
        raise ConfigurationError(f"timeout: {timeout!r}; expected seconds > 0")
    _check_text("user_agent", user_agent, "a non-empty User-Agent string")
    check_answer_cap(max_answer_bytes)
    if stores_results is None:
        stores_results = kind != "mapbox"
    elif not isinstance(stores_results, bool):
        raise ConfigurationError(f"stores_results: {stores_results!r}; expected True or False")

    host = domain or _DEFAULT_DOMAINS[kind]
    http_holder: list[RecordingAdapter] = []

    def factory(*, proxies: Any, ssl_context: Any) -> RecordingAdapter:
        http = RecordingAdapter(
            proxies=proxies, ssl_context=ssl_context, kind=kind, max_bytes=max_answer_bytes
        )
        http_holder.append(http)
        return http

    common: dict[str, Any] = {
        "scheme": scheme,
        "timeout": float(timeout),
        "user_agent": user_agent,
        "adapter_factory": factory,
    }
    if _is_loopback(host):
        common["proxies"] = {}  # a proxy cannot reach this machine's loopback
    if kind == "google":
        geocoder = GoogleV3(api_key=api_key, domain=host, **common)
    elif kind == "here":
        geocoder = HereV7(api_key, **common)
        geocoder.api = f"{scheme}://{host}{HereV7.geocode_path}"
    elif kind == "opencage":
        geocoder = OpenCage(api_key, domain=host, **common)
    elif kind == "nominatim":
        geocoder = Nominatim(domain=host, **common)
    else:
        geocoder = MapBox(api_key, domain=host, **common)
    return GeocodeAdapter(kind, provider, geocoder, http_holder[0], stores_results)


def _check_text(name: str, value: object, expected: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name}: {value!r}; expected {expected}")


def _is_loopback(host: str) -> bool:
    if host.startswith("["):  # [::1]:8080
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
