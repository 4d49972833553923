"""tollway.policy: loading, validation messages, the JSON Schema, and the frozen model."""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import tollway
import tollway.policy
from tollway.errors import PolicyError, PolicyIssue
from tollway.money import Money
from tollway.policy import Grace, Policy, Quota, Rate, load, loads, policy_schema
from tollway.policy.fields import parse_quota, parse_rate
from tollway.policy.model import PERIODS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA = Path(__file__).parent / "data" / "policies"
DESIGN_TOML = DATA / "design.toml"
DESIGN_YAML = DATA / "design.yaml"


def design() -> dict[str, Any]:
    """The parsed sample document, a fresh copy each time so a test can break it."""
    return tomllib.loads(DESIGN_TOML.read_text(encoding="utf-8"))


def issues(document: Mapping[str, Any]) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        load(document)
    return list(info.value.issues)


def issue_at(document: Mapping[str, Any], path: str) -> str:
    """The message of the one issue at ``path``; fails when there is none or several."""
    found = [issue.message for issue in issues(document) if issue.path == path]
    assert len(found) == 1, (path, issues(document))
    return found[0]


def plan(*limits: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A document with one plan ``p`` holding ``limits``, plus any other sections."""
    return {"plans": {"p": {"limits": list(limits)}}, **sections}


# -- the sample policy ------------------------------------------------------------------------


def test_design_sample_store_defaults_operations() -> None:
    policy = load(DESIGN_TOML)
    assert policy.source == str(DESIGN_TOML)
    assert policy.store.url == "memory://"
    assert policy.store.timeout_ms == 50
    assert policy.store.on_error == "open"
    assert policy.store.breaker_failures == 3
    assert policy.store.hold_ttl_ms == 60_000
    assert policy.defaults.plan == "free"
    assert policy.defaults.timezone == "UTC"
    assert list(policy.operations) == ["geocode", "search"]
    search = policy.operations["search"]
    assert search.cost == 5
    assert search.price == Money(micros=2_000, currency="USD")
    assert search.endpoints == ("GET /v1/search", "POST /v1/search/*")


def test_design_sample_plans() -> None:
    policy = load(DESIGN_TOML)
    burst, hourly, monthly = policy.plans["free"].limits
    assert burst.kind == "rate"
    assert burst.rate == Rate(count=5, period_us=1_000_000, text="5/s")
    assert burst.burst == 10
    assert burst.path == "plans.free.limits[0]"
    assert hourly.quota is not None
    assert (hourly.quota.count, hourly.quota.period) == (1000, "hour")
    assert hourly.grace == Grace(fraction=Decimal("0.2"), text="20%")
    assert hourly.grace.extra(1000) == 200
    assert monthly.thresholds == (Decimal("0.8"), Decimal("1.0"))
    assert monthly.period == "month"
    pro = {limit.name: limit for limit in policy.plans["pro"].limits}
    assert pro["daily"].timezone == "America/New_York"
    assert pro["burst"].timezone == "UTC"
    spend = pro["spend"]
    assert spend.budget is not None
    assert spend.budget.amount == Money(micros=500_000_000, currency="USD")
    assert spend.operations == ("search",)
    assert spend.applies_to("search")
    assert not spend.applies_to("geocode")
    assert spend.path == "plans.pro.limits[2]"


def test_design_sample_providers_and_routes() -> None:
    policy = load(DESIGN_TOML)
    google = policy.providers["google"]
    assert google.price == Money(micros=5_000, currency="USD")
    qps, daily, budget = google.limits
    assert qps.rate is not None
    assert qps.rate.count == 50
    assert qps.burst is None  # "the rate's count" is the engine's business, not the parser's
    assert daily.timezone == "America/Los_Angeles"
    assert budget.budget is not None
    assert budget.budget.amount.micros == 50_000_000
    assert budget.currency == "USD"
    opencage = policy.providers["opencage"]
    assert opencage.price == Money(micros=0, currency="USD")
    assert [limit.name for limit in opencage.limits] == ["daily", "rps"]
    assert policy.routes["geocoding"].providers == ("opencage", "google")
    assert policy.routes["geocoding"].strategy == "priority"


def test_yaml_twin_gives_the_same_policy() -> None:
    from_toml, from_yaml = load(DESIGN_TOML), load(DESIGN_YAML)
    assert from_yaml.source == str(DESIGN_YAML)
    assert from_yaml.version == from_toml.version
    assert dataclasses.replace(from_yaml, source=from_toml.source) == from_toml


def test_load_accepts_str_path_mapping_and_text() -> None:
    from_file = load(str(DESIGN_TOML))
    from_mapping = load(design())
    from_text = loads(DESIGN_TOML.read_text(encoding="utf-8"))
    assert from_mapping.source is None
    assert from_text.source is None
    assert dataclasses.replace(from_file, source=None) == from_mapping == from_text


def test_format_argument_overrides_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "policy.conf"
    path.write_text(DESIGN_YAML.read_text(encoding="utf-8"), encoding="utf-8")
    assert load(path, format="yaml").version == load(DESIGN_TOML).version
    with pytest.raises(PolicyError, match=r"expected a \.toml, \.yaml or \.yml file"):
        load(path)


def test_empty_document_is_a_valid_policy() -> None:
    for policy in (load({}), loads(""), loads("", format="yaml")):
        assert policy.store.url == "memory://"
        assert policy.defaults.plan is None
        assert policy.defaults.timezone == "UTC"
        assert dict(policy.plans) == {}
        assert dict(policy.operations) == {}
        assert len(policy.version) == 12


# -- values and defaults ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period_us"),
    [
        ("5/s", 5, 1_000_000),
        ("10/5s", 10, 5_000_000),
        ("100/sec", 100, 1_000_000),
        ("2/minutes", 2, 60_000_000),
        ("30/m", 30, 60_000_000),
        ("1/hr", 1, 3_600_000_000),
        ("3/2d", 3, 172_800_000_000),
        ("1_000/days", 1000, 86_400_000_000),
    ],
)
def test_rate_strings(text: str, count: int, period_us: int) -> None:
    (limit,) = load(plan({"rate": text})).plans["p"].limits
    assert limit.rate == Rate(count=count, period_us=period_us, text=text)


def test_limit_defaults_come_from_the_policy() -> None:
    document = plan(
        {"rate": "5/s"},
        {"quota": "100/hour"},
        {"budget": "5 EUR/month", "anchor": 15},
        {"quota": "9/day", "on_error": "closed", "shadow": True, "per": "operation"},
        store={"on_error": "closed"},
        defaults={"timezone": "Europe/Paris"},
        providers={
            "a": {"timezone": "Asia/Tokyo", "limits": [{"quota": "1/day"}]},
            "b": {"limits": [{"quota": "1/day"}]},
        },
    )
    policy = load(document)
    rate, quota, budget, daily = policy.plans["p"].limits
    assert [rate.name, quota.name, budget.name, daily.name] == [
        "rate",
        "quota_hour",
        "budget_month",
        "quota_day",
    ]
    assert rate.burst is None
    assert quota.timezone == "Europe/Paris"
    assert quota.on_error == "closed"
    assert (quota.shadow, quota.per, quota.operations) == (False, "subject", None)
    assert budget.anchor == 15
    assert (daily.shadow, daily.per) == (True, "operation")
    assert policy.providers["a"].limits[0].timezone == "Asia/Tokyo"
    assert policy.providers["b"].timezone == "Europe/Paris"
    assert policy.providers["b"].limits[0].timezone == "Europe/Paris"


def test_grace_forms() -> None:
    policy = load(
        plan(
            {"name": "pct", "quota": "10/hour", "grace": "12.5%"},
            {"name": "units", "quota": "10/hour", "grace": 5},
            {"name": "money", "budget": "100 USD/day", "grace": "5.00 USD"},
        )
    )
    pct, units, money = policy.plans["p"].limits
    assert pct.grace == Grace(fraction=Decimal("0.125"), text="12.5%")
    assert units.grace == Grace(units=5, text="5")
    assert money.grace == Grace(units=5_000_000, text="5.00 USD")


def test_thresholds_accept_fractions_and_percentages() -> None:
    document = plan({"quota": "10/day", "grace": "50%", "thresholds": [0.5, "80%", 1, 1.25]})
    (limit,) = load(document).plans["p"].limits
    assert limit.thresholds == (Decimal("0.5"), Decimal("0.8"), Decimal("1"), Decimal("1.25"))


# -- one issue, one path, one message --------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        plan({"quota": "10/day"}, {"quota": "1000/hr"}),
        "plans.p.limits[1].quota",
        ['"1000/hr" is not a quota', "expected N/PERIOD with PERIOD one of minute, hour, day"],
        id="quota-unit",
    ),
    pytest.param(
        plan({"quota": "1000/hours"}),
        "plans.p.limits[0].quota",
        ['"1000/hours"', "expected N/PERIOD"],
        id="quota-plural",
    ),
    pytest.param(
        plan({"quota": "0/day"}),
        "plans.p.limits[0].quota",
        ['"0/day"', "expected a count from 1 to"],
        id="quota-zero",
    ),
    pytest.param(
        plan({"quota": 1000}),
        "plans.p.limits[0].quota",
        ["1000 (an integer)", 'expected a string such as "1000/hour"'],
        id="quota-not-string",
    ),
    pytest.param(
        plan({"rate": "5/ms"}),
        "plans.p.limits[0].rate",
        ['"5/ms" is not a rate', "expected N/UNIT or N/KUNIT"],
        id="rate-ms",
    ),
    pytest.param(
        plan({"rate": "10/0s"}),
        "plans.p.limits[0].rate",
        ['"10/0s"', "expected a period from 1 second"],
        id="rate-zero-multiplier",
    ),
    pytest.param(
        plan({"rate": "2000000/s"}),
        "plans.p.limits[0].rate",
        ['"2000000/s"', "more than one unit per microsecond"],
        id="rate-too-fast",
    ),
    pytest.param(
        plan({"budget": "500 usd/month"}),
        "plans.p.limits[0].budget",
        ['"500 usd/month" is not a budget', "expected AMOUNT CURRENCY/PERIOD"],
        id="budget-syntax",
    ),
    pytest.param(
        plan({"budget": "0 USD/day"}),
        "plans.p.limits[0].budget",
        ['"0 USD/day"', "expected an amount above 0"],
        id="budget-zero",
    ),
    pytest.param(
        plan({"name": "x"}),
        "plans.p.limits[0]",
        ["expected exactly one of rate, quota, budget, credits; got none"],
        id="no-kind",
    ),
    pytest.param(
        plan({"quota": "1/day", "budget": "1 USD/day"}),
        "plans.p.limits[0]",
        ["expected exactly one of rate, quota, budget, credits; got quota and budget"],
        id="two-kinds",
    ),
    pytest.param(
        plan({"quota": "1/day", "burst": 5}),
        "plans.p.limits[0].burst",
        ["burst = 5 only applies to a rate", '"1/day"'],
        id="burst-on-quota",
    ),
    pytest.param(
        plan({"rate": "1/s", "grace": "10%"}),
        "plans.p.limits[0].grace",
        ['grace = "10%" only applies to a quota or a budget'],
        id="grace-on-rate",
    ),
    pytest.param(
        plan({"rate": "1/s", "thresholds": [0.5]}),
        "plans.p.limits[0].thresholds",
        ["thresholds = [0.5] only applies to a quota or a budget"],
        id="thresholds-on-rate",
    ),
    pytest.param(
        plan({"quota": "1/day", "anchor": 3}),
        "plans.p.limits[0].anchor",
        ["anchor = 3 only applies to a monthly quota or budget"],
        id="anchor-on-daily",
    ),
    pytest.param(
        plan({"quota": "1/month", "anchor": 32}),
        "plans.p.limits[0].anchor",
        ["expected an integer from 1 to 31, got 32"],
        id="anchor-range",
    ),
    pytest.param(
        plan({"quota": "1/day", "grace": "0%"}),
        "plans.p.limits[0].grace",
        ['"0%"', "expected a percentage above 0% and at most 1000%"],
        id="grace-zero-percent",
    ),
    pytest.param(
        plan({"quota": "1/day", "grace": -1}),
        "plans.p.limits[0].grace",
        ["got -1 (an integer)", "a whole number of units >= 0"],
        id="grace-negative",
    ),
    pytest.param(
        plan({"budget": "5 USD/day", "grace": 2}),
        "plans.p.limits[0].grace",
        ["got 2 (an integer)", 'an amount such as "5.00 USD"'],
        id="grace-number-on-budget",
    ),
    pytest.param(
        plan({"budget": "5 USD/day", "grace": "1 EUR"}),
        "plans.p.limits[0].grace",
        ['"1 EUR" is in EUR', "expected an amount in USD"],
        id="grace-currency",
    ),
    pytest.param(
        plan({"quota": "1/day", "thresholds": [0.5, 0.5]}),
        "plans.p.limits[0].thresholds[1]",
        ["0.5 is not above the threshold before it", "strictly increasing"],
        id="thresholds-not-increasing",
    ),
    pytest.param(
        plan({"quota": "1/day", "thresholds": [0]}),
        "plans.p.limits[0].thresholds[0]",
        ["expected a fraction above 0 and at most 10, got 0"],
        id="threshold-zero",
    ),
    pytest.param(
        plan({"quota": "1/day", "thresholds": [True]}),
        "plans.p.limits[0].thresholds[0]",
        ["got true (a boolean)"],
        id="threshold-bool",
    ),
    pytest.param(
        plan({"quota": "1/day", "on_error": "half"}),
        "plans.p.limits[0].on_error",
        ['expected "open" or "closed", got "half" (a string)'],
        id="on-error",
    ),
    pytest.param(
        plan({"quota": "1/day", "shadow": "yes"}),
        "plans.p.limits[0].shadow",
        ['expected true or false, got "yes" (a string)'],
        id="shadow-not-bool",
    ),
    pytest.param(
        plan({"quota": "1/day", "per": "key"}),
        "plans.p.limits[0].per",
        ['expected "subject" or "operation", got "key"'],
        id="per",
    ),
    pytest.param(
        plan({"quota": "1/day", "operations": ["serch"]}, operations={"search": {}}),
        "plans.p.limits[0].operations[0]",
        ['"serch" names no operation; expected one of "search"'],
        id="unknown-operation",
    ),
    pytest.param(
        plan({"quota": "1/day", "operations": []}, operations={"search": {}}),
        "plans.p.limits[0].operations",
        ["expected a non-empty list of operation names, got []"],
        id="empty-operations",
    ),
    pytest.param(
        plan({"quota": "1/day", "name": "a b"}),
        "plans.p.limits[0].name",
        ['"a b" is not a valid name', "expected 1 to 64 letters"],
        id="limit-name",
    ),
    pytest.param(
        plan({"quota": "1/day", "timezone": "Mars/Olympus"}),
        "plans.p.limits[0].timezone",
        ['"Mars/Olympus" is not a known IANA timezone', "expected a name such as"],
        id="limit-timezone",
    ),
    pytest.param(
        {"defaults": {"timezone": "Mars/Olympus"}},
        "defaults.timezone",
        ['"Mars/Olympus" is not a known IANA timezone'],
        id="defaults-timezone",
    ),
    pytest.param(
        {"providers": {"g": {"timezone": "Mars/Olympus"}}},
        "providers.g.timezone",
        ['"Mars/Olympus"'],
        id="provider-timezone",
    ),
    pytest.param(
        {"store": {"timeout_ms": "10"}},
        "store.timeout_ms",
        ['expected an integer from 1 to 60000, got "10" (a string)'],
        id="string-for-int",
    ),
    pytest.param(
        {"store": {"timeout_ms": True}},
        "store.timeout_ms",
        ["expected an integer from 1 to 60000, got true (a boolean)"],
        id="bool-for-int",
    ),
    pytest.param(
        {"store": {"timeout_ms": 0}},
        "store.timeout_ms",
        ["expected an integer from 1 to 60000, got 0"],
        id="int-range",
    ),
    pytest.param(
        {"store": {"breaker_failures": 0}},
        "store.breaker_failures",
        ["expected an integer >= 1, got 0"],
        id="int-minimum",
    ),
    pytest.param(
        {"store": {"url": "http://localhost"}},
        "store.url",
        ['"http://localhost" is not a store URL', "memory, redis, rediss, redis+cluster"],
        id="store-url",
    ),
    pytest.param(
        {"store": {"url": ""}},
        "store.url",
        ['"" is not a store URL'],
        id="store-url-empty",
    ),
    pytest.param(
        {"defaults": {"plan": "gold"}, "plans": {"free": {}}},
        "defaults.plan",
        ['"gold" names no plan; expected one of "free"'],
        id="defaults-plan",
    ),
    pytest.param(
        {"defaults": {"plan": "gold"}},
        "defaults.plan",
        ['"gold" names no plan; expected a plan declared in [plans]'],
        id="defaults-plan-no-plans",
    ),
    pytest.param(
        {"operations": {"geocode": {"cost": 0}}},
        "operations.geocode.cost",
        ["expected an integer from 1 to", "got 0"],
        id="operation-cost",
    ),
    pytest.param(
        {"operations": {"geocode": {"price": "0.001"}}},
        "operations.geocode.price",
        ['"0.001" is not an amount of money', "expected AMOUNT CURRENCY"],
        id="operation-price",
    ),
    pytest.param(
        {"operations": {"geocode": {"endpoints": ["GET /a", "get /b"]}}},
        "operations.geocode.endpoints[1]",
        ['"get /b" is not an endpoint', 'expected "METHOD /path"'],
        id="endpoint",
    ),
    pytest.param(
        {"operations": {"geo code": {}}},
        'operations."geo code"',
        ['"geo code" is not a valid name'],
        id="operation-name",
    ),
    pytest.param(
        {"plans": {"free": {"limits": {"rate": "5/s"}}}},
        "plans.free.limits",
        ['expected a list, got {"rate": "5/s"} (a table)'],
        id="limits-not-a-list",
    ),
    pytest.param(
        {"plans": {"free": {"limits": ["5/s"]}}},
        "plans.free.limits[0]",
        ['expected a table, got "5/s" (a string)'],
        id="limit-not-a-table",
    ),
    pytest.param(
        {"providers": {"g": {}}, "routes": {"geo": {"providers": ["g", "here"]}}},
        "routes.geo.providers[1]",
        ['"here" names no provider; expected one of "g"'],
        id="route-unknown-provider",
    ),
    pytest.param(
        {"providers": {"g": {}}, "routes": {"geo": {"providers": ["g", "g"]}}},
        "routes.geo.providers[1]",
        ['"g" is listed twice'],
        id="route-duplicate-provider",
    ),
    pytest.param(
        {"routes": {"geo": {"providers": []}}},
        "routes.geo.providers",
        ["expected a non-empty list of provider names, got []"],
        id="route-empty",
    ),
    pytest.param(
        {"routes": {"geo": {}}},
        "routes.geo",
        ['missing key "providers"'],
        id="route-missing-providers",
    ),
    pytest.param(
        {"providers": {"g": {}}, "routes": {"geo": {"providers": ["g"], "strategy": "random"}}},
        "routes.geo.strategy",
        ['expected "priority" or "cheapest" or "weighted", got "random"'],
        id="route-strategy",
    ),
    pytest.param(
        {"providers": {"g": {"limits": [{"quota": "1/day", "operations": ["x"]}]}}},
        "providers.g.limits[0].operations",
        ['operations = ["x"] is not allowed in a provider limit'],
        id="provider-limit-operations",
    ),
    pytest.param(
        {"providers": {"g": {"limits": [{"quota": "1/day", "per": "operation"}]}}},
        "providers.g.limits[0].per",
        ['per = "operation" is not allowed in a provider limit'],
        id="provider-limit-per",
    ),
    pytest.param(
        plan(
            {"budget": "10 USD/day", "operations": ["b"]},
            operations={"a": {"price": "1 EUR"}, "b": {"price": "1 GBP"}},
        ),
        "plans.p.limits[0].budget",
        ['"10 USD/day" is in USD but operation "b" is priced in GBP', "expected prices in USD"],
        id="budget-currency-operation",
    ),
    pytest.param(
        {"providers": {"g": {"price": "0.01 EUR", "limits": [{"budget": "5 USD/day"}]}}},
        "providers.g.limits[0].budget",
        ['"5 USD/day" is in USD but the provider\'s price "0.01 EUR" is in EUR'],
        id="budget-currency-provider",
    ),
]


@pytest.mark.parametrize(("document", "path", "fragments"), ERROR_CASES)
def test_error_names_path_value_and_expectation(
    document: dict[str, Any], path: str, fragments: list[str]
) -> None:
    with pytest.raises(PolicyError) as info:
        load(document)
    found = [issue for issue in info.value.issues if issue.path == path]
    assert len(found) == 1, info.value.issues
    for fragment in fragments:
        assert fragment in found[0].message


def test_budget_currency_checks_every_operation_by_default() -> None:
    document = plan(
        {"budget": "10 USD/day"},
        operations={"a": {"price": "1 USD"}, "b": {"price": "1 EUR"}, "c": {"price": "2 EUR"}},
    )
    messages = [issue.message for issue in issues(document)]
    assert len(messages) == 2
    assert 'operation "b"' in messages[0]
    assert 'operation "c"' in messages[1]


# -- a budget can price what it counts ---------------------------------------------------------


def priced_plans(**operations: dict[str, Any]) -> dict[str, Any]:
    """Plan ``p`` with a budget over every operation, plan ``q`` with one over ``a`` only."""
    return {
        "operations": operations,
        "plans": {
            "p": {"limits": [{"name": "spend", "budget": "10 USD/day"}]},
            "q": {"limits": [{"budget": "5 USD/day", "operations": ["a"]}]},
        },
    }


def test_a_budget_over_an_operation_without_a_price_is_refused() -> None:
    found = issues(priced_plans(a={"cost": 1}, b={"cost": 2}, c={"price": "0.01 USD"}))
    assert [(issue.path, issue.message) for issue in found] == [
        (
            "plans.p.limits[0].budget",
            'budget "10 USD/day" counts operation "a", which has no price; expected a price '
            'on it (operations.a.price = "0.001 USD"), price = "explicit" there if every call '
            'gives its amount=, or operations = [...] on this limit without "a"',
        ),
        (
            "plans.p.limits[0].budget",
            'budget "10 USD/day" counts operation "b", which has no price; expected a price '
            'on it (operations.b.price = "0.001 USD"), price = "explicit" there if every call '
            'gives its amount=, or operations = [...] on this limit without "b"',
        ),
        (
            "plans.q.limits[0].budget",
            'budget "5 USD/day" counts operation "a", which has no price; expected a price '
            'on it (operations.a.price = "0.001 USD"), price = "explicit" there if every call '
            'gives its amount=, or operations = [...] on this limit without "a"',
        ),
    ]


def test_a_budget_restricted_to_priced_operations_is_valid() -> None:
    document = priced_plans(a={"price": "0.01 USD"}, b={"cost": 2})
    document["plans"]["p"]["limits"][0]["operations"] = ["a"]
    policy = load(document)
    assert policy.operations["b"].price is None
    assert not policy.operations["b"].explicit_amount


def test_a_quota_over_an_operation_without_a_price_is_valid() -> None:
    policy = load(plan({"quota": "10/day"}, operations={"a": {"cost": 1}}))
    assert policy.operations["a"].price is None


def test_an_explicit_price_lets_a_budget_count_amounts_given_by_each_call() -> None:
    policy = load(priced_plans(a={"price": "explicit"}, b={"price": "explicit", "cost": 3}))
    a = policy.operations["a"]
    assert (a.price, a.explicit_amount) == (None, True)
    tw = tollway.Tollway(policy)
    tw.assign("acct", "p")
    assert tw.acquire("acct", "b", amount=Decimal("9.5")).allowed
    assert not tw.acquire("acct", "a", amount=Decimal("0.6")).allowed
    with pytest.raises(tollway.InvalidArgumentError, match="amount"):
        tw.acquire("acct", "a")  # the policy said every call gives its amount


def test_an_explicit_price_on_an_operation_with_endpoints_is_refused_under_a_budget() -> None:
    document = priced_plans(a={"price": "explicit", "endpoints": ["GET /v1/a"]})
    found = issues(document)
    assert {issue.path for issue in found} == {
        "plans.p.limits[0].budget",
        "plans.q.limits[0].budget",
    }
    assert 'whose price is "explicit"' in found[0].message
    assert "a request through the HTTP gate gives no amount" in found[0].message
    del document["plans"]["p"], document["plans"]["q"]
    assert load(document).operations["a"].endpoints == ("GET /v1/a",)  # no budget: valid


def test_a_provider_budget_needs_the_providers_price() -> None:
    def provider(**fields: Any) -> dict[str, Any]:
        return {"providers": {"g": {"limits": [{"budget": "5 USD/day"}], **fields}}}

    assert issue_at(provider(), "providers.g.limits[0].budget") == (
        'budget "5 USD/day" counts calls to provider "g", which has no price; expected a price '
        'on it (price = "0.005 USD", or a list of tiers), or price = "explicit" if every call '
        "gives its amount="
    )
    assert load(provider(price="0.005 USD")).providers["g"].price is not None
    tiers = [{"upto": 10, "price": "5.00 USD/1000"}, {"price": "4.00 USD/1000"}]
    assert load(provider(price=tiers)).providers["g"].tiers
    explicit = load(provider(price="explicit")).providers["g"]
    assert (explicit.price, explicit.explicit_amount) == (None, True)


def test_an_explicit_price_validates_against_the_schema() -> None:
    validator = jsonschema.Draft202012Validator(policy_schema())
    validator.validate(priced_plans(a={"price": "explicit"}))
    validator.validate({"providers": {"g": {"price": "explicit"}}})
    assert not validator.is_valid({"operations": {"a": {"price": "implicit"}}})


def test_policy_check_refuses_a_budget_it_cannot_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tollway.cli.main import main

    path = tmp_path / "unpriced.toml"
    path.write_text(
        '[defaults]\nplan = "free"\n\n'
        "[operations]\n"
        'geocode = { cost = 1, endpoints = ["GET /v1/geocode"] }\n'
        "search = { cost = 5 }\n\n"
        "[plans.free]\n"
        'limits = [{ name = "spend", budget = "5.00 USD/month" }]\n',
        encoding="utf-8",
    )
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # both operations, in one run
    assert err[0].startswith(
        f'{path}: plans.free.limits[0].budget: budget "5.00 USD/month" counts operation "geocode"'
    )
    assert 'counts operation "search", which has no price' in err[1]


def test_duplicate_limit_names() -> None:
    explicit = plan({"name": "x", "rate": "1/s"}, {"name": "x", "quota": "1/day"})
    assert "already the name of plans.p.limits[0]" in issue_at(explicit, "plans.p.limits[1].name")
    implicit = plan({"quota": "1/hour"}, {"quota": "2/hour"})
    message = issue_at(implicit, "plans.p.limits[1]")
    assert '"quota_hour"' in message
    assert "set name" in message
    # Names only need to be unique within one plan or provider.
    assert load({"plans": {"a": {"limits": [{"rate": "1/s"}]}, "b": {"limits": [{"rate": "1/s"}]}}})


def test_many_errors_are_reported_together() -> None:
    document = {
        "store": {"timeout_ms": 0, "on_error": "maybe"},
        "defaults": {"plan": "gold", "timezone": "Mars/Olympus"},
        "plans": {
            "free": {
                "limits": [
                    {"rate": "5/ms"},
                    {"quota": "1000/hr", "grace": "200"},
                    {"qouta": "5/day"},
                ]
            }
        },
        "routes": {"geo": {"providers": ["here"]}},
        "extra": {},
    }
    paths = [issue.path for issue in issues(document)]
    assert paths == [
        "extra",
        "store.timeout_ms",
        "store.on_error",
        "defaults.timezone",
        "plans.free.limits[0].rate",
        "plans.free.limits[1].quota",
        "plans.free.limits[1].grace",
        "plans.free.limits[2].qouta",
        "plans.free.limits[2]",
        "routes.geo.providers[0]",
        "defaults.plan",
    ]
    with pytest.raises(PolicyError, match=r"^11 problems in the policy:"):
        load(document)


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"store": {"urll": "memory://"}}, "store.urll"),
        ({"defaults": {"zone": "UTC"}}, "defaults.zone"),
        ({"operations": {"geocode": {"costs": 1}}}, "operations.geocode.costs"),
        ({"plans": {"free": {"limit": []}}}, "plans.free.limit"),
        (plan({"rate": "1/s", "bursts": 2}), "plans.p.limits[0].bursts"),
        ({"providers": {"g": {"prices": "1 USD"}}}, "providers.g.prices"),
        ({"providers": {"g": {"limits": [{"rate": "1/s", "x": 1}]}}}, "providers.g.limits[0].x"),
        ({"providers": {"g": {}}, "routes": {"r": {"providers": ["g"], "w": 1}}}, "routes.r.w"),
        ({"limits": []}, "limits"),
    ],
)
def test_unknown_keys_at_every_level(document: dict[str, Any], path: str) -> None:
    message = issue_at(document, path)
    assert message.startswith(("unknown key", "unknown section"))
    assert "expected one of" in message


def test_unknown_section_lists_the_allowed_ones() -> None:
    message = issue_at({"plan": {}}, "plan")
    assert message == (
        'unknown section "plan"; expected one of store, defaults, operations, plans, '
        'providers, routes, ledger, hooks, keys, billing, coupons, admin (did you mean "plans"?)'
    )


def test_failed_key_attempts_are_limited_by_default_and_set_in_keys() -> None:
    assert load({}).keys.failed_attempts == Quota(20, "minute", "20/minute")
    assert load({"keys": {"failed_attempts": "5/hour"}}).keys.failed_attempts == Quota(
        5, "hour", "5/hour"
    )
    assert load({"keys": {"failed_attempts": False}}).keys.failed_attempts is None
    assert issue_at({"keys": {"failed_attempts": "5/s"}}, "keys.failed_attempts") == (
        '"5/s" is not a quota; expected N/PERIOD with PERIOD one of minute, hour, day, week, month'
    )
    assert issue_at({"keys": {"failed_attempts": True}}, "keys.failed_attempts") == (
        'expected a quota such as "20/minute", or false, got true (a boolean)'
    )
    assert issue_at({"keys": {"failed": 1}}, "keys.failed").startswith('unknown key "failed"')
    validator = jsonschema.Draft202012Validator(policy_schema())
    for good in ("5/hour", False):
        assert not list(validator.iter_errors({"keys": {"failed_attempts": good}}))
    for bad in ("5/s", True, 5):
        assert list(validator.iter_errors({"keys": {"failed_attempts": bad}}))


def test_typo_in_a_limit_key_suggests_the_right_one() -> None:
    found = issues(plan({"qouta": "1000/hour"}))
    assert [issue.path for issue in found] == ["plans.p.limits[0].qouta", "plans.p.limits[0]"]
    assert found[0].message.startswith('unknown key "qouta"')
    assert found[0].message.endswith('(did you mean "quota"?)')


def test_errors_carry_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[store]\ntimeout_ms = "10"\n', encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load(path)
    (issue,) = info.value.issues
    assert issue.source == str(path)
    assert str(issue).startswith(f"{path}: store.timeout_ms: expected an integer")


# -- files and syntax --------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[store]\nurl = "memory://"\ntimeout_ms = \n', encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load(path)
    (issue,) = info.value.issues
    assert issue.source == str(path)
    assert issue.message.startswith("invalid TOML")
    assert "line 3" in issue.message
    assert str(path) in str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text("store:\n  url: memory://\n  timeout_ms: [50\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load(path)
    (issue,) = info.value.issues
    assert issue.source == str(path)
    assert issue.message.startswith("invalid YAML")
    assert "line 4" in issue.message


def test_yaml_repeated_key_is_an_error() -> None:
    with pytest.raises(PolicyError, match=r'found the key "limits" twice.*line 4'):
        loads("plans:\n  free:\n    limits: []\n    limits: []\n", format="yaml")


def test_yaml_document_must_be_a_table() -> None:
    with pytest.raises(PolicyError, match=r'expected a table, got "just text" \(a string\)'):
        loads("just text", format="yaml")


def test_yaml_without_pyyaml_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    with pytest.raises(PolicyError, match=r"pip install 'tollway\[yaml\]'"):
        loads("store: {}", format="yaml")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as info:
        load(path)
    (issue,) = info.value.issues
    assert issue.source == str(path)
    assert "no such file" in issue.message


def test_unknown_text_format() -> None:
    with pytest.raises(PolicyError, match=r'expected "toml" or "yaml"'):
        loads("", format="json")  # type: ignore[arg-type]


# -- the JSON Schema -------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = policy_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert policy_schema() is not schema  # a fresh copy each call


@pytest.mark.parametrize("path", [DESIGN_TOML, DESIGN_YAML])
def test_sample_policies_validate_against_the_schema(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    document = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    jsonschema.Draft202012Validator(policy_schema()).validate(document)


def _broken(change: str) -> dict[str, Any]:
    document = design()
    free = document["plans"]["free"]["limits"]
    if change == "bad-quota":
        free[1]["quota"] = "1000/hr"
    elif change == "unknown-key":
        free[0]["bursts"] = 3
    elif change == "two-kinds":
        free[1]["rate"] = "5/s"
    elif change == "burst-on-quota":
        free[1]["burst"] = 3
    elif change == "grace-on-rate":
        free[0]["grace"] = "10%"
    elif change == "unknown-section":
        document["plan"] = {}
    elif change == "bad-price":
        document["operations"]["geocode"]["price"] = "0.001"
    elif change == "provider-limit-operations":
        document["providers"]["google"]["limits"][0]["operations"] = ["geocode"]
    return document


@pytest.mark.parametrize(
    "change",
    [
        "bad-quota",
        "unknown-key",
        "two-kinds",
        "burst-on-quota",
        "grace-on-rate",
        "unknown-section",
        "bad-price",
        "provider-limit-operations",
    ],
)
def test_invalid_documents_fail_schema_and_load(change: str) -> None:
    document = _broken(change)
    validator = jsonschema.Draft202012Validator(policy_schema())
    assert list(validator.iter_errors(document))
    with pytest.raises(PolicyError):
        load(document)


# -- immutability and versions -------------------------------------------------------------


def test_policy_is_frozen_and_read_only() -> None:
    policy = load(DESIGN_TOML)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.version = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.plans["free"].limits[0].name = "x"  # type: ignore[misc]
    for mapping in (policy.operations, policy.plans, policy.providers, policy.routes):
        assert isinstance(mapping, types.MappingProxyType)
    with pytest.raises(TypeError):
        policy.plans["gold"] = policy.plans["free"]  # type: ignore[index]
    assert isinstance(policy.plans["free"].limits, tuple)
    assert isinstance(policy.routes["geocoding"].providers, tuple)
    assert isinstance(policy.operations["search"].endpoints, tuple)
    assert isinstance(policy.plans["pro"].limits[2].operations, tuple)
    assert isinstance(policy.plans["free"].limits[2].thresholds, tuple)


def test_loading_does_not_keep_the_callers_document() -> None:
    document = design()
    policy = load(document)
    document["plans"]["free"]["limits"].clear()
    assert len(policy.plans["free"].limits) == 3


def test_version_is_stable_and_follows_the_content() -> None:
    first, second = load(design()), load(design())
    assert first.version == second.version
    assert len(first.version) == 12
    assert int(first.version, 16) >= 0
    changed = design()
    changed["plans"]["free"]["limits"][1]["quota"] = "1001/hour"
    assert load(changed).version != first.version
    reordered = design()
    reordered["operations"] = dict(reversed(list(reordered["operations"].items())))
    assert load(reordered).version == first.version  # keys are sorted before hashing


def test_public_names() -> None:
    assert set(tollway.policy.__all__) == {
        "load",
        "loads",
        "policy_schema",
        "Policy",
        "StoreConfig",
        "Defaults",
        "Operation",
        "Plan",
        "Limit",
        "Rate",
        "Quota",
        "Budget",
        "Grace",
        "Provider",
        "Route",
        "RouteSpec",
    }
    assert tollway.policy.Route is tollway.policy.RouteSpec
    assert all(hasattr(tollway.policy, name) for name in tollway.policy.__all__)
    assert isinstance(load({}), Policy)


# -- properties --------------------------------------------------------------------------


def _with_underscores(count: int) -> str:
    return f"{count:_}"


@given(
    count=st.integers(min_value=1, max_value=10**15),
    period=st.sampled_from(PERIODS),
    underscores=st.booleans(),
)
def test_quota_strings_round_trip(count: int, period: str, underscores: bool) -> None:
    written = f"{_with_underscores(count) if underscores else count}/{period}"
    quota = parse_quota(written)
    assert (quota.count, quota.period, quota.text) == (count, period, written)
    (limit,) = load(plan({"quota": written})).plans["p"].limits
    assert limit.quota == quota
    assert limit.name == f"quota_{period}"


@given(
    count=st.integers(min_value=1, max_value=1000),
    multiplier=st.integers(min_value=1, max_value=100),
    unit=st.sampled_from([("s", 1), ("min", 60), ("hours", 3600), ("d", 86_400)]),
)
def test_rate_strings_round_trip(count: int, multiplier: int, unit: tuple[str, int]) -> None:
    word, seconds = unit
    rate = parse_rate(f"{count}/{multiplier}{word}")
    assert rate.count == count
    assert rate.period_us == multiplier * seconds * 1_000_000
    assert rate.emission_us * count >= rate.period_us
