"""The JSON Schema (draft 2020-12) of a policy document, for editors and CI linters.

The string patterns are the ones `load` itself uses (see `fields.py`), so the schema never
accepts a rate, quota, budget or amount that `load` refuses. Checks a schema cannot express
(a name pointing at a declared plan, one currency per budget, thresholds in increasing order,
timezones in the IANA database) are left to `load`.
"""

from __future__ import annotations

from typing import Any

from tollway.events import EVENT_TYPES
from tollway.keyspace import PREFIX_PATTERN
from tollway.policy import fields, hook_fields
from tollway.policy.model import PERIODS

Schema = dict[str, Any]

_PERIODS = ", ".join(PERIODS)


def policy_schema() -> Schema:
    """A fresh JSON Schema of the policy document; callers may change their copy."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tollway policy",
        "description": "Operations, plans of limits, providers and routes for tollway.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "store": _store(),
            "defaults": _object(
                "Defaults for subjects and limits.",
                plan=_ref("name", "The plan of subjects never assigned one; a plan in [plans]."),
                timezone=_ref("timezone", "Timezone of calendar windows. Default: UTC."),
            ),
            "operations": _named(
                "operation", "Named kinds of call, their cost in units and price per unit."
            ),
            "plans": _named("plan", "Named sets of limits; each subject is on one plan."),
            "providers": _named("provider", "Paid APIs the service calls, with their limits."),
            "routes": _named("route", "Ordered chains of providers for outbound calls."),
            "ledger": _object(
                "Where usage events are kept.",
                url={
                    "type": "string",
                    "pattern": "^(sqlite:///|postgresql://|postgres://).+",
                    "description": "sqlite:///PATH or postgresql://USER@HOST:PORT/DB.",
                },
                lateness_s=_int(
                    "How old an event given to record() may be, in s. Default: 86400.",
                    0,
                    366 * 86_400,
                ),
                events={
                    "type": "boolean",
                    "description": "Each allowed step appends its usage event. Default: true.",
                },
                partitions=_int(
                    "Event stream partitions on a standalone Redis. Default: 16.", 1, 1024
                ),
                dedupe_s=_int(
                    "How long a request id is remembered by the store, in s. Default: 86400.",
                    1,
                    30 * 86_400,
                ),
                max_repeats=_int(
                    "How often an acquire's request id may repeat within dedupe_s. Default: 2.",
                    0,
                    1000,
                ),
                flush_ms=_int(
                    "Embedded: how often queued events are written, in ms. Default: 200.",
                    1,
                    60_000,
                ),
                batch=_int("Most events per ledger transaction. Default: 1000.", 1, 100_000),
                sensitive={
                    "type": "array",
                    "uniqueItems": True,
                    "maxItems": 64,
                    "items": {"type": "string", "minLength": 1, "maxLength": 128},
                    "description": "Event attributes encrypted in the ledger (AES-GCM).",
                },
                encryption_key_env=_pattern(
                    hook_fields.SECRET_ENV_PATTERN,
                    "Environment variable holding the key (base64 of 32 bytes).",
                ),
                encryption_keys_env=_pattern(
                    hook_fields.SECRET_ENV_PATTERN,
                    "Or: the variable holding several keys, newest first (rotation).",
                ),
            ),
            "keys": _object(
                "How the HTTP faces guard API keys.",
                failed_attempts={
                    "description": "Failed API-key attempts per client address per calendar "
                    'window, then 429 until it ends; false: not limited. Default: "20/minute".',
                    "anyOf": [
                        _pattern(fields.QUOTA_PATTERN, f"N/PERIOD with PERIOD one of {_PERIODS}."),
                        {"const": False},
                    ],
                },
            ),
            "hooks": {
                "type": "array",
                "description": "Where usage events and limit notices are delivered.",
                "items": _hook(),
            },
            "billing": _billing(),
            "coupons": _named("coupon", "Discount codes subjects may redeem, by code."),
            "admin": _admin(),
        },
        "$defs": _defs(),
    }


def _object(description: str, required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    schema: Schema = {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str, description: str) -> Schema:
    return {"$ref": f"#/$defs/{name}", "description": description}


def _pattern(pattern: str, description: str) -> Schema:
    return {"type": "string", "pattern": pattern, "description": description}


def _int(description: str, minimum: int, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum, "description": description}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _enum(description: str, *values: str) -> Schema:
    return {"enum": list(values), "description": description}


def _named(definition: str, description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "propertyNames": {"$ref": "#/$defs/name"},
        "additionalProperties": {"$ref": f"#/$defs/{definition}"},
    }


def _store() -> Schema:
    return _object(
        "Where counters live and what happens when the store fails.",
        url=_pattern(
            fields.STORE_URL_PATTERN,
            "memory://, redis://host:port/db, rediss://..., redis+cluster://host:port. "
            "Default: memory://.",
        ),
        timeout_ms=_int("Timeout of one store call, in ms. Default: 50.", 1, 60_000),
        on_error=_ref("on_error", "Default failure mode of every limit. Default: open."),
        journal={"type": "string", "minLength": 1, "description": "Fail-open journal folder."},
        breaker_failures=_int("Consecutive failures that open the breaker. Default: 3.", 1),
        breaker_cooldown_ms=_int("How long an open breaker waits, in ms. Default: 1000.", 1),
        hold_ttl_ms=_int("How long a reservation holds capacity, in ms. Default: 60000.", 1),
        prefix=_pattern(
            PREFIX_PATTERN, "Put before every Redis key (acme: acme:tw:{...}). Default: none."
        ),
    )


def _hook() -> Schema:
    hook = _object(
        "One hook: exactly one of url, callable, stream.",
        ("name",),
        name=_ref("name", "The hook's name, unique among the hooks."),
        url=_pattern(hook_fields.HOOK_URL_PATTERN, "http(s) URL of a Standard Webhooks receiver."),
        callable=_pattern(hook_fields.CALLABLE_PATTERN, '"package.module:function".'),
        stream={"type": "string", "minLength": 1, "description": "A Redis Stream key."},
        stream_url=_pattern(
            hook_fields.REDIS_URL_PATTERN, "The stream's Redis. Default: the [store] url."
        ),
        secret_env=_pattern(
            hook_fields.SECRET_ENV_PATTERN,
            "Environment variable holding the whsec_ secret(s); required with url.",
        ),
        events={
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": list(EVENT_TYPES)},
            "description": "Event types delivered. Default: [tollway.usage.recorded].",
        },
        aggregate=_enum(
            "One usage event per subject and meter per bucket. Default: none.",
            "none",
            "minute",
            "hour",
        ),
        timeout_ms=_int("A whole attempt (connect, send, answer), ms. Default: 5000.", 1, 600_000),
        schedule={
            "type": "array",
            "minItems": 1,
            "items": {"type": "number", "minimum": 0, "maximum": hook_fields.MAX_DELAY_S},
            "description": "Delay before each attempt, in s. Default: Standard Webhooks'.",
        },
        batch=_int(
            "Most events in one message (a CloudEvents batch above 1). Default: 1.", 1, 1000
        ),
        allow_http={
            "type": "boolean",
            "description": "Allow http:// to a host that is not loopback. Default: false.",
        },
        allow_private={
            "type": "boolean",
            "description": "Allow private and link-local addresses. Default: false.",
        },
    )
    hook["oneOf"] = [{"required": [kind]} for kind in ("url", "callable", "stream")]
    hook["dependentRequired"] = {"url": ["secret_env"]}
    return hook


def _defs() -> Schema:
    return {
        "name": _pattern(fields.NAME_PATTERN, "1-64 letters, digits, _ . -"),
        "timezone": {"type": "string", "description": "An IANA timezone such as Europe/Paris."},
        "on_error": _enum("open: allow when the store fails; closed: deny.", "open", "closed"),
        "money": _pattern(fields.MONEY_PATTERN, 'AMOUNT CURRENCY such as "0.005 USD".'),
        "percent": _pattern(fields.PERCENT_PATTERN, 'A percentage such as "20%".'),
        "operation": _object(
            "A kind of call.",
            cost=_int("Units of cost one call consumes. Default: 1.", 1, fields.MAX_QUOTA),
            price={
                "description": 'Price per unit of cost, or "explicit": every call gives its '
                "amount.",
                "anyOf": [{"$ref": "#/$defs/money"}, {"const": "explicit"}],
            },
            endpoints={
                "type": "array",
                "description": "HTTP endpoints the operation covers.",
                "items": _pattern(fields.ENDPOINT_PATTERN, '"METHOD /path" such as "GET /v1/x".'),
            },
        ),
        "plan": _object(
            "A named set of limits, and what it costs when [billing] is set.",
            limits={"type": "array", "items": {"$ref": "#/$defs/limit"}},
            fee=_object(
                "The plan's recurring fee per billing period, prorated on changes.",
                ("amount",),
                amount={"$ref": "#/$defs/money"},
                timing=_enum(
                    "Billed at the period's start or end. Default: arrears.", "advance", "arrears"
                ),
            ),
            trial_days=_int("Days of a trial: the plan's limits, no fee. Default: 0.", 0, 365),
            trial_then=_ref("name", "The plan a trial continues on. Default: this plan."),
            charges={
                "type": "array",
                "maxItems": 100,
                "description": "What each meter's usage costs on this plan.",
                "items": {"$ref": "#/$defs/charge"},
            },
        ),
        "charge": _charge(),
        "coupon": _coupon(),
        "provider": _object(
            "A paid API the service itself calls.",
            price={
                "description": 'Price per unit of cost, tiers per calendar month, or "explicit": '
                "every call gives its amount.",
                "anyOf": [
                    {"$ref": "#/$defs/money"},
                    {"const": "explicit"},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["price"],
                            "properties": {
                                "upto": _int("Units of the month this tier ends at.", 1),
                                "price": {
                                    "type": "string",
                                    "description": 'AMOUNT CURRENCY[/UNITS]: "5.00 USD/1000".',
                                },
                            },
                        },
                    },
                ],
            },
            timezone=_ref("timezone", "Default timezone of the provider's limits."),
            limits={"type": "array", "items": {"$ref": "#/$defs/provider_limit"}},
            weight=_int("Share of calls under a weighted route. Default: 1.", 0, 1_000_000),
            breaker_errors=_int("Errors within breaker_window_ms that open the breaker.", 1),
            breaker_window_ms=_int("Window errors are counted in, in ms. Default: 60000.", 1),
            breaker_open_ms=_int("How long an open breaker skips it, in ms. Default: 30000.", 1),
            probe_ms=_int("How long a half-open probe holds others back, in ms.", 1),
            kind=_ref("name", "The adapter: google, here, opencage, nominatim, mapbox."),
            api_key_env={"type": "string", "description": "Environment variable of its key."},
            domain={"type": "string", "description": "Host (and port) of its API."},
            scheme=_enum("http or https. Default: https.", "https", "http"),
            timeout_ms=_int("Client timeout per call, in ms. Default: 10000.", 1, 600_000),
            stores_results={"type": "boolean", "description": "Whether results may be kept."},
        ),
        "route": _object(
            "An ordered chain of providers.",
            ("providers",),
            providers={
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"$ref": "#/$defs/name"},
                "description": "Provider names, in order of preference.",
            },
            strategy=_enum("How to pick a provider.", "priority", "cheapest", "weighted"),
        ),
        "limit": _limit(in_plan=True),
        "provider_limit": _limit(in_plan=False),
    }


def _limit(*, in_plan: bool) -> Schema:
    properties: Schema = {
        "name": _ref("name", 'Default: "rate", or KIND_PERIOD such as "quota_hour".'),
        "rate": _pattern(fields.RATE_PATTERN, 'GCRA rate N/UNIT or N/KUNIT: "5/s", "10/5s".'),
        "quota": _pattern(fields.QUOTA_PATTERN, f"N/PERIOD with PERIOD one of {_PERIODS}."),
        "budget": _pattern(fields.BUDGET_PATTERN, 'AMOUNT CURRENCY/PERIOD: "50.00 USD/day".'),
        "burst": _int("Units that may pass at once. Default: the rate's count.", 1),
        "timezone": _ref("timezone", "Timezone of the calendar window."),
        "anchor": _int("Day of the month a monthly window starts on.", 1, 31),
        "grace": {
            "description": 'Allowance past the limit: "20%", a count of units, or "5.00 USD".',
            "anyOf": [
                {"$ref": "#/$defs/percent"},
                {"type": "integer", "minimum": 0},
                {"$ref": "#/$defs/money"},
            ],
        },
        "thresholds": {
            "type": "array",
            "description": "Fractions of the limit that raise a crossing event, increasing.",
            "items": {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                    {"$ref": "#/$defs/percent"},
                ]
            },
        },
        "on_error": _ref("on_error", "Failure mode. Default: the store's on_error."),
        "shadow": {"type": "boolean", "description": "Evaluate and record, never block."},
    }
    kinds = ["rate", "quota", "budget"]
    if in_plan:
        kinds.append("credits")
        properties["credits"] = _pattern(
            "^[A-Z]{3}$", "Draw the price from the subject's prepaid balance in CURRENCY."
        )
        properties["overage"] = {
            "type": "boolean",
            "description": "Credits: allow past the balance and bill it. Default: false.",
        }
        properties["operations"] = {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"$ref": "#/$defs/name"},
            "description": "Operations the limit applies to. Default: all.",
        }
        properties["per"] = _enum("Count per subject or per operation.", "subject", "operation")
    not_rate = {"not": {"required": ["rate"]}}
    return {
        "type": "object",
        "description": f"One rule on one counter: exactly one of {', '.join(kinds)}.",
        "additionalProperties": False,
        "properties": properties,
        "oneOf": [{"required": [kind]} for kind in kinds],
        "dependentRequired": {"burst": ["rate"], "overage": ["credits"]}
        if in_plan
        else {"burst": ["rate"]},
        "dependentSchemas": {"grace": not_rate, "thresholds": not_rate, "anchor": not_rate},
    }


def _decimal(description: str) -> Schema:
    # Money in a charge is a decimal text or an integer, never a float (not exact).
    return {
        "description": description,
        "anyOf": [
            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
            {"type": "integer", "minimum": 0},
        ],
    }


def _billing() -> Schema:
    return _object(
        "How usage is priced, invoiced and numbered.",
        currency=_pattern("^[A-Z]{3}$", "The currency of fees, charges and invoices."),
        period=_enum("The billing period. Default: month.", "day", "week", "month"),
        anchor=_enum(
            "Periods start on calendar boundaries or on each subscription's start.",
            "calendar",
            "subscription",
        ),
        timezone=_ref("timezone", "Timezone of periods. Default: [defaults].timezone."),
        invoice_grace=_pattern(
            "^[0-9]{1,6}(s|m|h|d)$", 'How long a period stays open for late events: "1h".'
        ),
        numbering={
            "type": "string",
            "maxLength": 64,
            "description": 'Invoice numbers, gapless: "INV-{year}-{seq:06d}".',
        },
        credit_note_numbering={
            "type": "string",
            "maxLength": 64,
            "description": 'Credit note numbers, gapless: "CN-{year}-{seq:06d}".',
        },
        issuer={"type": "string", "description": "Who issues the invoices (numbered apart)."},
        meters={
            "type": "array",
            "items": {"$ref": "#/$defs/name"},
            "description": "Meters charged besides the operations (names recorded events use).",
        },
    )


def _admin() -> Schema:
    span = "^[0-9]{1,7}(s|m|h|d)$"
    return _object(
        "The control plane (tollway serve, tollway admin): admin tokens, sessions, its rate.",
        support_grant_max=_pattern(
            fields.MONEY_PATTERN,
            'The largest credit grant a support token may make at once. Default: "50.00 USD".',
        ),
        token_ttl=_pattern(span, 'A new admin token\'s lifetime, 1s to 3650d. Default: "90d".'),
        rate=_pattern(fields.RATE_PATTERN, 'The admin API\'s rate per token. Default: "20/s".'),
        sessions_ttl=_pattern(span, 'How long a dashboard login lasts. Default: "12h".'),
    )


def _charge() -> Schema:
    tier = _object(
        "One tier; the last has no up_to.",
        up_to={"type": "integer", "minimum": 1, "description": "Last unit (or block) of it."},
        unit=_decimal("The price of one unit (or block) in it."),
        flat=_decimal("A flat amount due once the tier is reached."),
    )
    return _object(
        "The price of one meter's usage in a period.",
        ("meter", "model"),
        meter=_ref("name", "An operation or a [billing] meters name."),
        model=_enum("The charge model.", "unit", "package", "graduated", "volume"),
        unit=_decimal("unit: the price of one unit."),
        size={"type": "integer", "minimum": 1, "description": "package: units per package."},
        amount=_decimal("package: the price of one package."),
        free={"type": "integer", "minimum": 0, "description": "package: free units first."},
        block={"type": "integer", "minimum": 1, "description": "Tiers count blocks of N."},
        tiers={"type": "array", "minItems": 1, "maxItems": 100, "items": tier},
        flat_at_zero={"type": "boolean", "description": "First flat due at 0. Default: no."},
        minimum=_decimal("A floor on the period's amount."),
        maximum=_decimal("A cap on the period's amount."),
        aggregation=_enum("How a period's events count. Default: sum.", "sum", "count", "unique"),
        attribute={"type": "string", "description": "unique: the attribute counted."},
    )


def _coupon() -> Schema:
    return {
        **_object(
            "A discount: a percentage or an amount, for some periods.",
            percent={
                "description": "Percent off, above 0 and at most 100.",
                "anyOf": [{"type": "integer", "minimum": 1, "maximum": 100}, _decimal("")],
            },
            amount={"$ref": "#/$defs/money"},
            duration={
                "description": 'How long it applies: "once", "forever" or N periods.',
                "anyOf": [
                    {"enum": ["once", "forever"]},
                    {"type": "integer", "minimum": 1, "maximum": 1200},
                ],
            },
            applies_to={
                "type": "array",
                "items": {"type": "string"},
                "description": 'What it discounts: "fee", "charges" or meter names.',
            },
            max_redemptions={"type": "integer", "minimum": 1},
        ),
        "oneOf": [{"required": ["percent"]}, {"required": ["amount"]}],
    }
