"""The ``[providers]`` the service calls (price, tiers, health, client) and the ``[routes]``
that chain them."""

from __future__ import annotations

from typing import Literal, cast

from tollway.money import Money
from tollway.policy import fields
from tollway.policy.fields import show, text
from tollway.policy.limits import parse_limits
from tollway.policy.model import PriceTier, Provider, ProviderClient, ProviderHealth, RouteSpec
from tollway.policy.pricing import EXPLICIT
from tollway.policy.walker import MONEY, NAME, TIMEZONE, Owner, Table, Walker, join

__all__ = ["PROVIDER_KEYS", "ROUTE_KEYS", "parse_providers", "parse_routes"]

Strategy = Literal["priority", "cheapest", "weighted"]

PROVIDER_HEALTH_KEYS = ("breaker_errors", "breaker_window_ms", "breaker_open_ms", "probe_ms")
PROVIDER_CLIENT_KEYS = ("kind", "api_key_env", "domain", "scheme", "timeout_ms", "stores_results")
PROVIDER_KEYS = (
    "price",
    "timezone",
    "limits",
    "weight",
    *PROVIDER_HEALTH_KEYS,
    *PROVIDER_CLIENT_KEYS,
)
ROUTE_KEYS = ("providers", "strategy")
STRATEGY = fields.one_of("priority", "cheapest", "weighted")
ENV_NAME = text(fields.parse_env_name, "GOOGLE_MAPS_API_KEY")
TIER_PRICE = text(fields.parse_tier_price, "5.00 USD/1000")


def parse_providers(w: Walker, doc: Table) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, path, raw in w.named(w.section(doc, "providers"), "providers"):
        t = w.table(raw, path, PROVIDER_KEYS)
        tiers: tuple[PriceTier, ...] = ()
        raw_price = t.get("price")
        if isinstance(raw_price, list):
            tiers, currency = _price_tiers(w, raw_price, join(path, "price"))
            dearest = max((tier.micros for tier in tiers), default=None)
            price = None if dearest is None else Money(dearest, currency)
        elif raw_price != EXPLICIT:
            price = w.get(t, path, "price", MONEY, None)
        else:
            price = None
        timezone = w.get(t, path, "timezone", TIMEZONE, w.timezone)
        owner = Owner(path=path, is_provider=True, timezone=timezone, price=price)
        limits = parse_limits(w, t, owner)
        providers[name] = Provider(
            name=name,
            price=price,
            limits=limits,
            timezone=timezone,
            health=_provider_health(w, t, path),
            weight=w.get(t, path, "weight", fields.integer(0, 1_000_000), 1),
            client=_provider_client(w, t, path),
            tiers=tiers,
            explicit_amount=raw_price == EXPLICIT,
        )
    return providers


def _price_tiers(w: Walker, raw: list[object], path: str) -> tuple[tuple[PriceTier, ...], str]:
    """``[{ upto = 100000, price = "5.00 USD/1000" }, { price = "4.00 USD/1000" }]``."""
    tiers: list[PriceTier] = []
    currencies: set[str] = set()
    last = 0
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        t = w.table(item, where, ("upto", "price"))
        final = i == len(raw) - 1
        upto = w.get(t, where, "upto", fields.integer(1, fields.MAX_QUOTA), None)
        if final and upto is not None:
            w.error(join(where, "upto"), f"{upto}: expected the last tier without upto")
        elif not final and upto is None:
            w.error(where, 'missing key "upto"; expected every tier but the last to end')
        elif upto is not None and upto <= last:
            w.error(join(where, "upto"), f"{upto}: expected more than the tier before ({last})")
        if "price" not in t:
            w.error(where, 'missing key "price"; expected e.g. "5.00 USD/1000"')
            continue
        parsed = w.check(t["price"], join(where, "price"), TIER_PRICE, None)
        if parsed is None:
            continue
        money, per = parsed
        if money.micros % per:
            w.error(
                join(where, "price"),
                f"{show(t['price'])} is {money.micros / per} micro-units a unit; expected a "
                "whole number of micro-units (10^-6) per unit",
            )
            continue
        currencies.add(money.currency)
        tiers.append(PriceTier(upto, money.micros // per, str(t["price"])))
        last = upto or last
    if not raw:
        w.error(path, "an empty list; expected a price or a list of tiers")
    if len(currencies) > 1:
        w.error(path, f"tiers in {', '.join(sorted(currencies))}; expected one currency")
    return tuple(tiers), min(currencies, default="USD")


def _provider_health(w: Walker, t: Table, path: str) -> ProviderHealth:
    d = ProviderHealth()
    ms = fields.integer(1, 366 * 86_400_000)
    return ProviderHealth(
        breaker_errors=w.get(t, path, "breaker_errors", fields.integer(1), d.breaker_errors),
        breaker_window_ms=w.get(t, path, "breaker_window_ms", ms, d.breaker_window_ms),
        breaker_open_ms=w.get(t, path, "breaker_open_ms", ms, d.breaker_open_ms),
        probe_ms=w.get(t, path, "probe_ms", ms, d.probe_ms),
    )


def _provider_client(w: Walker, t: Table, path: str) -> ProviderClient:
    d = ProviderClient()
    return ProviderClient(
        kind=w.get(t, path, "kind", NAME, None),
        api_key_env=w.get(t, path, "api_key_env", ENV_NAME, None),
        domain=w.get(t, path, "domain", fields.nonempty, None),
        scheme=w.get(t, path, "scheme", fields.one_of("https", "http"), d.scheme),
        timeout_ms=w.get(t, path, "timeout_ms", fields.integer(1, 600_000), d.timeout_ms),
        stores_results=w.get(t, path, "stores_results", fields.boolean, None),
    )


def parse_routes(w: Walker, doc: Table) -> dict[str, RouteSpec]:
    known = w.section_names(doc, "providers")
    routes: dict[str, RouteSpec] = {}
    for name, path, raw in w.named(w.section(doc, "routes"), "routes"):
        t = w.table(raw, path, ROUTE_KEYS)
        if "providers" in t:
            chain = w.references(t["providers"], join(path, "providers"), known, "provider")
        else:
            w.error(path, 'missing key "providers"; expected a list of provider names')
            chain = ()
        strategy = w.get(t, path, "strategy", STRATEGY, "priority")
        routes[name] = RouteSpec(name=name, providers=chain, strategy=cast(Strategy, strategy))
    return routes
