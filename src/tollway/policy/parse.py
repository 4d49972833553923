"""Walk a parsed policy document into the frozen `Policy`, collecting every issue on the way.

The walk never stops at the first problem: every section, table and list item is checked, each
issue is recorded with its key path, and one `PolicyError` lists them all. A value that fails
its check stands in as its default so the walk can go on; the `Policy` is only returned when
nothing failed. This module walks the small sections; `limits`, `providers` and `hooks` walk
theirs, `pricing` checks that every budget can price what it counts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, cast

from tollway.errors import PolicyError
from tollway.keyspace import check_prefix
from tollway.policy import fields, pricing
from tollway.policy.admin import parse_admin
from tollway.policy.billing import PLAN_BILLING_KEYS, parse_billing, parse_coupons, plan_billing
from tollway.policy.fields import quoted, show, text
from tollway.policy.hooks import parse_hooks
from tollway.policy.limits import ON_ERROR, parse_limits
from tollway.policy.model import (
    BillingConfig,
    Defaults,
    KeysConfig,
    LedgerConfig,
    OnError,
    Operation,
    Plan,
    Policy,
    Quota,
    StoreConfig,
)
from tollway.policy.providers import parse_providers, parse_routes
from tollway.policy.walker import MAX_COST, MONEY, NAME, TIMEZONE, Owner, Table, Walker

__all__ = ["SECTIONS", "build_policy", "document_version"]

SECTIONS = (
    "store",
    "defaults",
    "operations",
    "plans",
    "providers",
    "routes",
    "ledger",
    "hooks",
    "keys",
    "billing",
    "coupons",
    "admin",
)
LEDGER_KEYS = (
    "url",
    "lateness_s",
    "events",
    "partitions",
    "dedupe_s",
    "max_repeats",
    "flush_ms",
    "batch",
    "sensitive",
    "encryption_key_env",
    "encryption_keys_env",
)
STORE_KEYS = (
    "url",
    "timeout_ms",
    "on_error",
    "journal",
    "breaker_failures",
    "breaker_cooldown_ms",
    "hold_ttl_ms",
    "prefix",
)
DEFAULTS_KEYS = ("plan", "timezone")
OPERATION_KEYS = ("cost", "price", "endpoints")
PLAN_KEYS = ("limits", *PLAN_BILLING_KEYS)
KEYS_KEYS = ("failed_attempts",)


def build_policy(document: object, *, source: str | None = None) -> Policy:
    """The `Policy` of a parsed document; `PolicyError` with every issue found otherwise."""
    walker = Walker(source)
    policy = _policy(walker, document)
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


def _policy(w: Walker, document: object) -> Policy:
    doc = w.table(document, "", SECTIONS)
    store = _store(w, doc)
    defaults = _defaults(w, doc)
    w.on_error, w.timezone = store.on_error, defaults.timezone
    w.operation_names = w.section_names(doc, "operations")
    w.operations = _operations(w, doc)
    billing = parse_billing(w, doc)
    plans = _plans(w, doc, billing)
    providers = parse_providers(w, doc)
    routes = parse_routes(w, doc)
    pricing.check_budgets(w, w.operations, plans, providers)
    if defaults.plan is not None:
        declared = w.section_names(doc, "plans")
        if defaults.plan not in declared:
            expected = f"one of {quoted(declared)}" if declared else "a plan declared in [plans]"
            w.error("defaults.plan", f"{show(defaults.plan)} names no plan; expected {expected}")
    return Policy(
        store=store,
        defaults=defaults,
        operations=MappingProxyType(w.operations),
        plans=MappingProxyType(plans),
        providers=MappingProxyType(providers),
        routes=MappingProxyType(routes),
        ledger=_ledger(w, doc),
        hooks=parse_hooks(w, doc, store),
        keys=_keys(w, doc),
        billing=billing,
        coupons=MappingProxyType(parse_coupons(w, doc, billing)),
        admin=parse_admin(w, doc),
    )


def _store(w: Walker, doc: Table) -> StoreConfig:
    t, d = w.section(doc, "store", STORE_KEYS), StoreConfig()
    url = text(fields.parse_store_url, "redis://127.0.0.1:6379/0")
    return StoreConfig(
        url=w.get(t, "store", "url", url, d.url),
        timeout_ms=w.get(t, "store", "timeout_ms", fields.integer(1, 60_000), d.timeout_ms),
        on_error=cast(OnError, w.get(t, "store", "on_error", ON_ERROR, d.on_error)),
        journal=w.get(t, "store", "journal", fields.nonempty, d.journal),
        breaker_failures=w.get(
            t, "store", "breaker_failures", fields.integer(1), d.breaker_failures
        ),
        breaker_cooldown_ms=w.get(
            t, "store", "breaker_cooldown_ms", fields.integer(1), d.breaker_cooldown_ms
        ),
        hold_ttl_ms=w.get(t, "store", "hold_ttl_ms", fields.integer(1), d.hold_ttl_ms),
        prefix=w.get(t, "store", "prefix", text(check_prefix, "acme"), d.prefix),
    )


def _defaults(w: Walker, doc: Table) -> Defaults:
    t = w.section(doc, "defaults", DEFAULTS_KEYS)
    return Defaults(
        plan=w.get(t, "defaults", "plan", NAME, None),
        timezone=w.get(t, "defaults", "timezone", TIMEZONE, "UTC"),
    )


def _ledger(w: Walker, doc: Table) -> LedgerConfig:
    t, d = w.section(doc, "ledger", LEDGER_KEYS), LedgerConfig()
    url = text(fields.parse_ledger_url, "sqlite:///tollway.db")
    return LedgerConfig(
        url=w.get(t, "ledger", "url", url, d.url),
        lateness_s=w.get(t, "ledger", "lateness_s", fields.integer(0, 366 * 86_400), d.lateness_s),
        events=w.get(t, "ledger", "events", fields.boolean, d.events),
        partitions=w.get(t, "ledger", "partitions", fields.integer(1, 1024), d.partitions),
        dedupe_s=w.get(t, "ledger", "dedupe_s", fields.integer(1, 30 * 86_400), d.dedupe_s),
        max_repeats=w.get(t, "ledger", "max_repeats", fields.integer(0, 1000), d.max_repeats),
        flush_ms=w.get(t, "ledger", "flush_ms", fields.integer(1, 60_000), d.flush_ms),
        batch=w.get(t, "ledger", "batch", fields.integer(1, 100_000), d.batch),
        **_encryption(w, t),
    )


MAX_SENSITIVE = 64


def _encryption(w: Walker, t: Table) -> dict[str, Any]:
    """``sensitive``, and the one environment variable its key(s) come from."""
    env = text(fields.parse_env_name, "TOLLWAY_LEDGER_KEY")
    one = w.get(t, "ledger", "encryption_key_env", env, None)
    many = w.get(t, "ledger", "encryption_keys_env", env, None)
    names: list[str] = []
    if "sensitive" in t:
        items = w.items(t["sensitive"], "ledger.sensitive")
        if len(items) > MAX_SENSITIVE:
            w.error("ledger.sensitive", f"{len(items)} names; at most {MAX_SENSITIVE}")
        for i, item in enumerate(items[:MAX_SENSITIVE]):
            name = w.check(item, f"ledger.sensitive[{i}]", _attribute_name, None)
            if name is not None and name in names:
                w.error(f"ledger.sensitive[{i}]", f"{show(name)} is listed twice")
            elif name is not None:
                names.append(name)
    if one is not None and many is not None:
        w.error(
            "ledger.encryption_keys_env",
            "give encryption_key_env (one key) or encryption_keys_env (several), not both",
        )
    elif names and one is None and many is None:
        w.error(
            "ledger.sensitive",
            "sensitive attributes are encrypted with a key from the environment; expected "
            'encryption_key_env = "TOLLWAY_LEDGER_KEY" (or encryption_keys_env for a rotation)',
        )
    elif not names and (one is not None or many is not None):
        key = "encryption_key_env" if one is not None else "encryption_keys_env"
        w.error(f"ledger.{key}", 'only applies with sensitive = ["attribute", ...]')
    return {"sensitive": tuple(names), "encryption_key_env": one, "encryption_keys_env": many}


def _attribute_name(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise ValueError(
            f"expected an event attribute name (1 to 128 characters), got {show(value)}"
        )
    return value


def _failed_attempts(value: object) -> Quota | None:
    if value is False:
        return None
    if not isinstance(value, str):
        raise ValueError(f'expected a quota such as "20/minute", or false, got {fields.got(value)}')
    return fields.parse_quota(value)


def _keys(w: Walker, doc: Table) -> KeysConfig:
    t, d = w.section(doc, "keys", KEYS_KEYS), KeysConfig()
    return KeysConfig(
        failed_attempts=w.get(t, "keys", "failed_attempts", _failed_attempts, d.failed_attempts)
    )


def _operations(w: Walker, doc: Table) -> dict[str, Operation]:
    operations: dict[str, Operation] = {}
    for name, path, raw in w.named(w.section(doc, "operations"), "operations"):
        t = w.table(raw, path, OPERATION_KEYS)
        explicit = t.get("price") == pricing.EXPLICIT
        operations[name] = Operation(
            name=name,
            cost=w.get(t, path, "cost", fields.integer(1, MAX_COST), 1),
            price=None if explicit else w.get(t, path, "price", MONEY, None),
            endpoints=w.each(t, path, "endpoints", text(fields.parse_endpoint, "GET /v1")),
            explicit_amount=explicit,
        )
    return operations


def _plans(w: Walker, doc: Table, billing: BillingConfig | None) -> dict[str, Plan]:
    plans: dict[str, Plan] = {}
    names = w.section_names(doc, "plans")
    for name, path, raw in w.named(w.section(doc, "plans"), "plans"):
        t = w.table(raw, path, PLAN_KEYS)
        owner = Owner(path=path, is_provider=False, timezone=w.timezone)
        plan = Plan(name=name, limits=parse_limits(w, t, owner), path=path)
        plans[name] = plan_billing(w, t, plan, names, billing)
    return plans
