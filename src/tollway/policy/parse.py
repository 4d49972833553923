"""Walk a parsed policy document into the frozen `Policy`, collecting every issue on the way.

The walk never stops at the first problem: every section, table and list item is checked, each
issue is recorded with its key path, and one `PolicyError` lists them all. A value that fails
its check stands in as its default so the walk can go on; the `Policy` is only returned when
nothing failed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Literal, TypeVar, cast

from tollway.errors import PolicyError, PolicyIssue
from tollway.events import EVENT_TYPES, USAGE_RECORDED
from tollway.money import Money
from tollway.policy import fields, hook_fields
from tollway.policy.fields import Check, got, quoted, show, text
from tollway.policy.model import (
    Defaults,
    HookAggregate,
    HookConfig,
    HookKind,
    LedgerConfig,
    Limit,
    LimitKind,
    OnError,
    Operation,
    Per,
    Plan,
    Policy,
    PriceTier,
    Provider,
    ProviderClient,
    ProviderHealth,
    Route,
    StoreConfig,
)

T = TypeVar("T")
D = TypeVar("D")
Table = Mapping[str, object]
Strategy = Literal["priority", "cheapest", "weighted"]

SECTIONS = ("store", "defaults", "operations", "plans", "providers", "routes", "ledger", "hooks")
LEDGER_KEYS = ("url", "lateness_s", "events", "partitions", "dedupe_s", "flush_ms", "batch")
STORE_KEYS = (
    "url",
    "timeout_ms",
    "on_error",
    "journal",
    "breaker_failures",
    "breaker_cooldown_ms",
    "hold_ttl_ms",
)
DEFAULTS_KEYS = ("plan", "timezone")
OPERATION_KEYS = ("cost", "price", "endpoints")
PLAN_KEYS = ("limits",)
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
HOOK_TARGETS: tuple[HookKind, ...] = ("url", "callable", "stream")
HOOK_KEYS = (
    "name",
    *HOOK_TARGETS,
    "stream_url",
    "secret_env",
    "events",
    "aggregate",
    "timeout_ms",
    "schedule",
    "batch",
)
AGGREGATE = fields.one_of("none", "minute", "hour")
MAX_HOOK_BATCH = 1000
KINDS: tuple[LimitKind, ...] = ("rate", "quota", "budget")
PLAN_ONLY_LIMIT_KEYS = ("operations", "per")
LIMIT_KEYS = (
    "name",
    *KINDS,
    "burst",
    "timezone",
    "anchor",
    "grace",
    "thresholds",
    "on_error",
    "shadow",
    *PLAN_ONLY_LIMIT_KEYS,
)
ON_ERROR = fields.one_of("open", "closed")
PER = fields.one_of("subject", "operation")
STRATEGY = fields.one_of("priority", "cheapest", "weighted")
NAME = text(fields.parse_name, "free")
TIMEZONE = text(fields.parse_timezone, "Europe/Paris")
MONEY = text(fields.parse_money, "0.005 USD")
ENV_NAME = text(fields.parse_env_name, "GOOGLE_MAPS_API_KEY")
TIER_PRICE = text(fields.parse_tier_price, "5.00 USD/1000")
MAX_COST = fields.MAX_QUOTA

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join(path: str, key: str) -> str:
    """``plans.free`` + ``limits``; a key with dots or spaces is quoted to keep the path clear."""
    part = key if _PLAIN_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{part}" if path else part


def build_policy(document: object, *, source: str | None = None) -> Policy:
    """The `Policy` of a parsed document; `PolicyError` with every issue found otherwise."""
    walker = _Walker(source)
    policy = walker.policy(document)
    if walker.issues:
        raise PolicyError(walker.issues)
    return replace(policy, source=source, version=document_version(cast(Table, document)))


def document_version(document: Table) -> str:
    """First 12 hex digits of the sha256 of the document's canonical JSON."""
    canonical = json.dumps(_plain(document), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class _Owner:
    """The plan or provider a list of limits belongs to, and what its limits inherit."""

    path: str
    is_provider: bool
    timezone: str
    price: Money | None = None


class _Walker:
    def __init__(self, source: str | None) -> None:
        self.source = source
        self.issues: list[PolicyIssue] = []
        self.on_error: OnError = "open"
        self.timezone = "UTC"
        self.operations: dict[str, Operation] = {}
        self.operation_names: list[str] = []

    # -- recording and primitive checks ----------------------------------------------------

    def error(self, path: str, message: str) -> None:
        self.issues.append(PolicyIssue(path, message, self.source))

    def check(self, value: object, path: str, check: Check[T], default: D) -> T | D:
        try:
            return check(value)
        except ValueError as exc:
            self.error(path, str(exc))
            return default

    def get(self, table: Table, path: str, key: str, check: Check[T], default: D) -> T | D:
        if key not in table:
            return default
        return self.check(table[key], join(path, key), check, default)

    def table(self, value: object, path: str, allowed: Sequence[str] | None = None) -> Table:
        """The string-keyed entries of a table; unknown keys are reported and left out."""
        if not isinstance(value, Mapping):
            self.error(path, f"expected a table, got {got(value)}")
            return {}
        entries: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"expected string keys, got {got(key)}")
            elif allowed is not None and key not in allowed:
                self.unknown(path, key, allowed)
            else:
                entries[key] = item
        return entries

    def unknown(self, path: str, key: str, allowed: Sequence[str]) -> None:
        noun = "section" if not path else "key"
        message = f"unknown {noun} {show(key)}; expected one of {', '.join(allowed)}"
        close = difflib.get_close_matches(key, allowed, n=1)
        self.error(join(path, key), message + (f' (did you mean "{close[0]}"?)' if close else ""))

    def section(self, document: Table, name: str, allowed: Sequence[str] | None = None) -> Table:
        return self.table(document[name], name, allowed) if name in document else {}

    def named(self, table: Table, path: str) -> Iterator[tuple[str, str, object]]:
        """(name, path, value) of each entry of a table keyed by names that are valid."""
        for key, value in table.items():
            item_path = join(path, key)
            if self.check(key, item_path, NAME, None) is not None:
                yield key, item_path, value

    def items(self, value: object, path: str) -> list[object]:
        if not isinstance(value, (list, tuple)):
            self.error(path, f"expected a list, got {got(value)}")
            return []
        return list(value)

    def each(self, table: Table, path: str, key: str, check: Check[T]) -> tuple[T, ...]:
        if key not in table:
            return ()
        list_path = join(path, key)
        values = (
            self.check(item, f"{list_path}[{i}]", check, None)
            for i, item in enumerate(self.items(table[key], list_path))
        )
        return tuple(value for value in values if value is not None)

    def references(
        self, value: object, path: str, known: Sequence[str], what: str
    ) -> tuple[str, ...]:
        """A non-empty list of names, each declared in ``known``, none twice."""
        items = self.items(value, path)
        if isinstance(value, (list, tuple)) and not items:
            self.error(path, f"expected a non-empty list of {what} names, got []")
        names: list[str] = []
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]"
            name = self.check(item, item_path, fields.string, None)
            if name is None:
                continue
            if name not in known:
                expected = f"one of {quoted(known)}" if known else f"a {what} declared in [{what}s]"
                self.error(item_path, f"{show(name)} names no {what}; expected {expected}")
            elif name in names:
                self.error(item_path, f"{show(name)} is listed twice; expected each {what} once")
            else:
                names.append(name)
        return tuple(names)

    # -- sections --------------------------------------------------------------------------

    def policy(self, document: object) -> Policy:
        doc = self.table(document, "", SECTIONS)
        store = self.store(doc)
        defaults = self.defaults(doc)
        self.on_error, self.timezone = store.on_error, defaults.timezone
        self.operation_names = self.section_names(doc, "operations")
        self.operations = self.operations_section(doc)
        plans = self.plans(doc)
        providers = self.providers(doc)
        routes = self.routes(doc)
        if defaults.plan is not None:
            declared = self.section_names(doc, "plans")
            if defaults.plan not in declared:
                expected = (
                    f"one of {quoted(declared)}" if declared else "a plan declared in [plans]"
                )
                self.error(
                    "defaults.plan", f"{show(defaults.plan)} names no plan; expected {expected}"
                )
        return Policy(
            store=store,
            defaults=defaults,
            operations=MappingProxyType(self.operations),
            plans=MappingProxyType(plans),
            providers=MappingProxyType(providers),
            routes=MappingProxyType(routes),
            ledger=self.ledger(doc),
            hooks=self.hooks(doc, store),
        )

    def ledger(self, doc: Table) -> LedgerConfig:
        t, d = self.section(doc, "ledger", LEDGER_KEYS), LedgerConfig()
        url = text(fields.parse_ledger_url, "sqlite:///tollway.db")
        return LedgerConfig(
            url=self.get(t, "ledger", "url", url, d.url),
            lateness_s=self.get(
                t, "ledger", "lateness_s", fields.integer(0, 366 * 86_400), d.lateness_s
            ),
            events=self.get(t, "ledger", "events", fields.boolean, d.events),
            partitions=self.get(t, "ledger", "partitions", fields.integer(1, 1024), d.partitions),
            dedupe_s=self.get(t, "ledger", "dedupe_s", fields.integer(1, 30 * 86_400), d.dedupe_s),
            flush_ms=self.get(t, "ledger", "flush_ms", fields.integer(1, 60_000), d.flush_ms),
            batch=self.get(t, "ledger", "batch", fields.integer(1, 100_000), d.batch),
        )

    def hooks(self, doc: Table, store: StoreConfig) -> tuple[HookConfig, ...]:
        if "hooks" not in doc:
            return ()
        hooks: list[HookConfig] = []
        used: dict[str, str] = {}
        for i, raw in enumerate(self.items(doc["hooks"], "hooks")):
            path = f"hooks[{i}]"
            hook = self.hook(raw, path, store)
            # Checked on the raw name, so a repeat is reported even when the hook has other faults.
            name = raw.get("name") if isinstance(raw, Mapping) else None
            if isinstance(name, str) and name in used:
                self.error(
                    join(path, "name"),
                    f"{show(name)} is already the name of {used[name]}; "
                    "expected a name unique among the hooks",
                )
                continue
            if isinstance(name, str):
                used[name] = path
            if hook is not None:
                hooks.append(hook)
        return tuple(hooks)

    def hook(self, raw: object, path: str, store: StoreConfig) -> HookConfig | None:
        t = self.table(raw, path, HOOK_KEYS)
        if not isinstance(raw, Mapping):
            return None
        before = len(self.issues)
        name = None
        if "name" in t:
            name = self.get(t, path, "name", NAME, None)
        else:
            self.error(path, 'missing key "name"; expected a hook name such as "billing"')
        targets = [key for key in HOOK_TARGETS if key in t]
        if len(targets) != 1:
            given = " and ".join(targets) if targets else "none"
            self.error(path, f"expected exactly one of url, callable, stream; got {given}")
        kind: HookKind | None = targets[0] if len(targets) == 1 else None
        url = self.get(
            t, path, "url", text(hook_fields.parse_hook_url, "https://x.example/hook"), None
        )
        target = self.get(
            t, path, "callable", text(hook_fields.parse_callable, "billing.hooks:receive"), None
        )
        stream = self.get(t, path, "stream", fields.nonempty, None)
        stream_url = self.get(
            t,
            path,
            "stream_url",
            text(hook_fields.parse_redis_url, "redis://127.0.0.1:6379/0"),
            None,
        )
        if "stream_url" in t and kind != "stream":
            self.error(join(path, "stream_url"), "only applies to a stream hook (stream = ...)")
        if kind == "stream" and "stream_url" not in t:
            if hook_fields.is_redis_url(store.url):
                stream_url = store.url
            else:
                self.error(
                    path,
                    f'missing key "stream_url"; the [store] url {show(store.url)} is not a Redis '
                    'one, so expected stream_url = "redis://HOST:PORT/DB"',
                )
        secret_env = self.get(
            t, path, "secret_env", text(hook_fields.parse_secret_env, "HOOK_SECRET"), None
        )
        if kind == "url" and "secret_env" not in t:
            self.error(
                path,
                'missing key "secret_env"; a webhook is signed: expected the name of an '
                'environment variable holding its whsec_ secret, e.g. secret_env = "HOOK_SECRET"',
            )
        elif kind in ("callable", "stream") and "secret_env" in t:
            self.error(
                join(path, "secret_env"), f"only applies to a url hook; this is a {kind} hook"
            )
        events = self.hook_events(t, path)
        aggregate = self.get(t, path, "aggregate", AGGREGATE, "none")
        timeout_ms = self.get(t, path, "timeout_ms", fields.integer(1, 600_000), 15_000)
        schedule = self.hook_schedule(t, path)
        batch = self.get(t, path, "batch", fields.integer(1, MAX_HOOK_BATCH), 1)
        if name is None or kind is None or len(self.issues) > before:
            return None
        return HookConfig(
            name=name,
            kind=kind,
            path=path,
            url=url,
            callable=target,
            stream=stream,
            stream_url=stream_url,
            secret_env=secret_env,
            events=events,
            aggregate=cast(HookAggregate, aggregate),
            timeout_ms=timeout_ms,
            schedule=schedule,
            batch=batch,
        )

    def hook_events(self, t: Table, path: str) -> tuple[str, ...]:
        if "events" not in t:
            return (USAGE_RECORDED,)
        list_path = join(path, "events")
        items = self.items(t["events"], list_path)
        if isinstance(t["events"], (list, tuple)) and not items:
            self.error(
                list_path,
                f"expected a non-empty list of event types, such as {show(USAGE_RECORDED)}",
            )
        found: list[str] = []
        for i, item in enumerate(items):
            where = f"{list_path}[{i}]"
            if item not in EVENT_TYPES:
                close = difflib.get_close_matches(str(item), EVENT_TYPES, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.error(
                    where,
                    f"{show(item)} is not an event type; expected one of {quoted(EVENT_TYPES)}"
                    + hint,
                )
            elif item in found:
                self.error(where, f"{show(item)} is listed twice; expected each type once")
            else:
                found.append(item)
        return tuple(found)

    def hook_schedule(self, t: Table, path: str) -> tuple[float, ...] | None:
        if "schedule" not in t:
            return None
        list_path = join(path, "schedule")
        items = self.items(t["schedule"], list_path)
        if isinstance(t["schedule"], (list, tuple)) and not items:
            self.error(
                list_path, "expected a non-empty list of delays in seconds, such as [0, 5, 300]"
            )
        delays = [
            self.check(item, f"{list_path}[{i}]", hook_fields.delay_seconds, None)
            for i, item in enumerate(items)
        ]
        return tuple(d for d in delays if d is not None) or None

    @staticmethod
    def section_names(document: Table, name: str) -> list[str]:
        """Names declared in a section, valid or not, so a bad entry is not reported twice."""
        section = document.get(name)
        return (
            [key for key in section if isinstance(key, str)] if isinstance(section, Mapping) else []
        )

    def store(self, doc: Table) -> StoreConfig:
        t, d = self.section(doc, "store", STORE_KEYS), StoreConfig()
        url = text(fields.parse_store_url, "redis://127.0.0.1:6379/0")
        return StoreConfig(
            url=self.get(t, "store", "url", url, d.url),
            timeout_ms=self.get(t, "store", "timeout_ms", fields.integer(1, 60_000), d.timeout_ms),
            on_error=cast(OnError, self.get(t, "store", "on_error", ON_ERROR, d.on_error)),
            journal=self.get(t, "store", "journal", fields.nonempty, d.journal),
            breaker_failures=self.get(
                t, "store", "breaker_failures", fields.integer(1), d.breaker_failures
            ),
            breaker_cooldown_ms=self.get(
                t, "store", "breaker_cooldown_ms", fields.integer(1), d.breaker_cooldown_ms
            ),
            hold_ttl_ms=self.get(t, "store", "hold_ttl_ms", fields.integer(1), d.hold_ttl_ms),
        )

    def defaults(self, doc: Table) -> Defaults:
        t = self.section(doc, "defaults", DEFAULTS_KEYS)
        return Defaults(
            plan=self.get(t, "defaults", "plan", NAME, None),
            timezone=self.get(t, "defaults", "timezone", TIMEZONE, "UTC"),
        )

    def operations_section(self, doc: Table) -> dict[str, Operation]:
        operations: dict[str, Operation] = {}
        for name, path, raw in self.named(self.section(doc, "operations"), "operations"):
            t = self.table(raw, path, OPERATION_KEYS)
            operations[name] = Operation(
                name=name,
                cost=self.get(t, path, "cost", fields.integer(1, MAX_COST), 1),
                price=self.get(t, path, "price", MONEY, None),
                endpoints=self.each(t, path, "endpoints", text(fields.parse_endpoint, "GET /v1")),
            )
        return operations

    def plans(self, doc: Table) -> dict[str, Plan]:
        plans: dict[str, Plan] = {}
        for name, path, raw in self.named(self.section(doc, "plans"), "plans"):
            t = self.table(raw, path, PLAN_KEYS)
            owner = _Owner(path=path, is_provider=False, timezone=self.timezone)
            plans[name] = Plan(name=name, limits=self.limits(t, owner))
        return plans

    def providers(self, doc: Table) -> dict[str, Provider]:
        providers: dict[str, Provider] = {}
        for name, path, raw in self.named(self.section(doc, "providers"), "providers"):
            t = self.table(raw, path, PROVIDER_KEYS)
            tiers: tuple[PriceTier, ...] = ()
            raw_price = t.get("price")
            if isinstance(raw_price, list):
                tiers, currency = self.price_tiers(raw_price, join(path, "price"))
                dearest = max((tier.micros for tier in tiers), default=None)
                price = None if dearest is None else Money(dearest, currency)
            else:
                price = self.get(t, path, "price", MONEY, None)
            timezone = self.get(t, path, "timezone", TIMEZONE, self.timezone)
            owner = _Owner(path=path, is_provider=True, timezone=timezone, price=price)
            limits = self.limits(t, owner)
            providers[name] = Provider(
                name=name,
                price=price,
                limits=limits,
                timezone=timezone,
                health=self.provider_health(t, path),
                weight=self.get(t, path, "weight", fields.integer(0, 1_000_000), 1),
                client=self.provider_client(t, path),
                tiers=tiers,
            )
        return providers

    def price_tiers(self, raw: list[object], path: str) -> tuple[tuple[PriceTier, ...], str]:
        """``[{ upto = 100000, price = "5.00 USD/1000" }, { price = "4.00 USD/1000" }]``."""
        tiers: list[PriceTier] = []
        currencies: set[str] = set()
        last = 0
        for i, item in enumerate(raw):
            where = f"{path}[{i}]"
            t = self.table(item, where, ("upto", "price"))
            final = i == len(raw) - 1
            upto = self.get(t, where, "upto", fields.integer(1, fields.MAX_QUOTA), None)
            if final and upto is not None:
                self.error(join(where, "upto"), f"{upto}: expected the last tier without upto")
            elif not final and upto is None:
                self.error(where, 'missing key "upto"; expected every tier but the last to end')
            elif upto is not None and upto <= last:
                self.error(
                    join(where, "upto"), f"{upto}: expected more than the tier before ({last})"
                )
            if "price" not in t:
                self.error(where, 'missing key "price"; expected e.g. "5.00 USD/1000"')
                continue
            parsed = self.check(t["price"], join(where, "price"), TIER_PRICE, None)
            if parsed is None:
                continue
            money, per = parsed
            if money.micros % per:
                self.error(
                    join(where, "price"),
                    f"{show(t['price'])} is {money.micros / per} micro-units a unit; expected a "
                    "whole number of micro-units (10^-6) per unit",
                )
                continue
            currencies.add(money.currency)
            tiers.append(PriceTier(upto, money.micros // per, str(t["price"])))
            last = upto or last
        if not raw:
            self.error(path, "an empty list; expected a price or a list of tiers")
        if len(currencies) > 1:
            self.error(path, f"tiers in {', '.join(sorted(currencies))}; expected one currency")
        return tuple(tiers), min(currencies, default="USD")

    def provider_health(self, t: Table, path: str) -> ProviderHealth:
        d = ProviderHealth()
        ms = fields.integer(1, 366 * 86_400_000)
        return ProviderHealth(
            breaker_errors=self.get(t, path, "breaker_errors", fields.integer(1), d.breaker_errors),
            breaker_window_ms=self.get(t, path, "breaker_window_ms", ms, d.breaker_window_ms),
            breaker_open_ms=self.get(t, path, "breaker_open_ms", ms, d.breaker_open_ms),
            probe_ms=self.get(t, path, "probe_ms", ms, d.probe_ms),
        )

    def provider_client(self, t: Table, path: str) -> ProviderClient:
        d = ProviderClient()
        return ProviderClient(
            kind=self.get(t, path, "kind", NAME, None),
            api_key_env=self.get(t, path, "api_key_env", ENV_NAME, None),
            domain=self.get(t, path, "domain", fields.nonempty, None),
            scheme=self.get(t, path, "scheme", fields.one_of("https", "http"), d.scheme),
            timeout_ms=self.get(t, path, "timeout_ms", fields.integer(1, 600_000), d.timeout_ms),
            stores_results=self.get(t, path, "stores_results", fields.boolean, None),
        )

    def routes(self, doc: Table) -> dict[str, Route]:
        known = self.section_names(doc, "providers")
        routes: dict[str, Route] = {}
        for name, path, raw in self.named(self.section(doc, "routes"), "routes"):
            t = self.table(raw, path, ROUTE_KEYS)
            if "providers" in t:
                chain = self.references(t["providers"], join(path, "providers"), known, "provider")
            else:
                self.error(path, 'missing key "providers"; expected a list of provider names')
                chain = ()
            strategy = self.get(t, path, "strategy", STRATEGY, "priority")
            routes[name] = Route(name=name, providers=chain, strategy=cast(Strategy, strategy))
        return routes

    # -- limits ----------------------------------------------------------------------------

    def limits(self, table: Table, owner: _Owner) -> tuple[Limit, ...]:
        if "limits" not in table:
            return ()
        path = join(owner.path, "limits")
        limits: list[Limit] = []
        used: dict[str, str] = {}
        for i, raw in enumerate(self.items(table["limits"], path)):
            item_path = f"{path}[{i}]"
            limit = self.limit(raw, item_path, owner)
            if limit is None:
                continue
            if limit.name not in used:
                used[limit.name] = item_path
                limits.append(limit)
            elif isinstance(raw, Mapping) and "name" in raw:
                self.error(
                    join(item_path, "name"),
                    f"{show(limit.name)} is already the name of {used[limit.name]}; "
                    f"expected a name unique within {owner.path}",
                )
            else:
                self.error(
                    item_path,
                    f"the default name {show(limit.name)} is already the name of "
                    f'{used[limit.name]}; expected a unique name: set name = "..." on this limit',
                )
        return tuple(limits)

    def limit(self, raw: object, path: str, owner: _Owner) -> Limit | None:
        t = self.table(raw, path, LIMIT_KEYS)
        if not isinstance(raw, Mapping):
            return None
        before = len(self.issues)
        kinds = [kind for kind in KINDS if kind in t]
        kind = kinds[0] if len(kinds) == 1 else None
        if kind is None:
            given = " and ".join(kinds) if kinds else "none"
            self.error(path, f"expected exactly one of rate, quota, budget; got {given}")
        rate = self.get(t, path, "rate", text(fields.parse_rate, "5/s"), None)
        quota = self.get(t, path, "quota", text(fields.parse_quota, "1000/hour"), None)
        budget = self.get(t, path, "budget", text(fields.parse_budget, "50.00 USD/day"), None)
        period = quota.period if quota else budget.period if budget else None
        if kind is not None:
            self.applicable(t, path, kind, period)
        if owner.is_provider:
            for key in PLAN_ONLY_LIMIT_KEYS:
                if key in t:
                    self.error(
                        join(path, key),
                        f"{key} = {show(t[key])} is not allowed in a provider limit; "
                        "expected it left out: a provider's limits count every call to it",
                    )
        operations = None
        if "operations" in t and not owner.is_provider:
            operations = self.references(
                t["operations"], join(path, "operations"), self.operation_names, "operation"
            )
        if budget is not None and kind == "budget":
            self.currency(budget.amount.currency, budget.text, path, owner, operations)
        default_name = "rate" if kind == "rate" else f"{kind}_{period}"
        name = self.get(t, path, "name", NAME, default_name)
        burst = self.get(t, path, "burst", fields.integer(1, fields.MAX_RATE_COUNT), None)
        timezone = self.get(t, path, "timezone", TIMEZONE, owner.timezone)
        anchor = self.get(t, path, "anchor", fields.integer(1, 31), None)
        grace = self.get(t, path, "grace", fields.grace(kind, budget), None)
        thresholds = self.thresholds(t, path)
        on_error = self.get(t, path, "on_error", ON_ERROR, self.on_error)
        shadow = self.get(t, path, "shadow", fields.boolean, False)
        per = self.get(t, path, "per", PER, "subject")
        if kind is None or len(self.issues) > before:
            return None
        return Limit(
            name=name,
            kind=kind,
            path=path,
            rate=rate,
            burst=burst,
            quota=quota,
            budget=budget,
            timezone=timezone,
            anchor=anchor,
            grace=grace,
            thresholds=thresholds,
            on_error=cast(OnError, on_error),
            shadow=shadow,
            operations=operations,
            per=cast(Per, per),
        )

    def applicable(self, t: Table, path: str, kind: str, period: str | None) -> None:
        """Report keys that mean nothing for this kind of limit."""
        this = f"this limit is a {kind} ({show(t[kind])})"
        if "burst" in t and kind != "rate":
            self.error(
                join(path, "burst"), f"burst = {show(t['burst'])} only applies to a rate; {this}"
            )
        for key in ("grace", "thresholds"):
            if key in t and kind == "rate":
                self.error(
                    join(path, key),
                    f"{key} = {show(t[key])} only applies to a quota or a budget; {this}",
                )
        if "anchor" in t and period != "month" and (kind == "rate" or period is not None):
            self.error(
                join(path, "anchor"),
                f"anchor = {show(t['anchor'])} only applies to a monthly quota or budget; {this}",
            )

    def thresholds(self, t: Table, path: str) -> tuple[Decimal, ...]:
        if "thresholds" not in t:
            return ()
        list_path = join(path, "thresholds")
        values: list[Decimal] = []
        for i, item in enumerate(self.items(t["thresholds"], list_path)):
            item_path = f"{list_path}[{i}]"
            value = self.check(item, item_path, fields.threshold, None)
            if value is not None and values and value <= values[-1]:
                self.error(
                    item_path,
                    f"{show(item)} is not above the threshold before it; "
                    "expected thresholds in strictly increasing order",
                )
            elif value is not None:
                values.append(value)
        return tuple(values)

    def currency(
        self,
        currency: str,
        budget: str,
        path: str,
        owner: _Owner,
        operations: tuple[str, ...] | None,
    ) -> None:
        """A budget counts units times a price, so every price it may use is in its currency."""
        budget_path = join(path, "budget")
        if owner.price is not None:
            if owner.price.currency != currency:
                self.error(
                    budget_path,
                    f"{show(budget)} is in {currency} but the provider's price "
                    f"{show(str(owner.price))} is in {owner.price.currency}; "
                    "expected one currency",
                )
            return
        for name in operations if operations is not None else tuple(self.operations):
            price = self.operations[name].price if name in self.operations else None
            if price is not None and price.currency != currency:
                self.error(
                    budget_path,
                    f"{show(budget)} is in {currency} but operation {show(name)} is priced in "
                    f"{price.currency} ({show(str(price))}); expected prices in {currency}",
                )
