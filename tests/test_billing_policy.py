"""The billing parts of a policy: ``[billing]``, plan fees, trials and charges, ``[coupons]``.

Every bad value is reported with its key path and nothing is built; a good document gives
the frozen model, and the JSON Schema agrees with the parser on the sample.
"""

from __future__ import annotations

import copy
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tollway.errors import PolicyError, PolicyIssue
from tollway.money import Money
from tollway.policy import load, policy_schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SAMPLE = Path(__file__).parent / "data" / "policies" / "billing.toml"


def sample() -> dict[str, Any]:
    return tomllib.loads(SAMPLE.read_text(encoding="utf-8"))


def issues(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(PolicyError) as info:
        load(document)
    found: list[PolicyIssue] = list(info.value.issues)
    return {issue.path: issue.message for issue in found}


def test_the_sample_parses_into_the_model() -> None:
    policy = load(SAMPLE)
    billing = policy.billing
    assert billing is not None
    assert (billing.currency, billing.period, billing.invoice_grace_s) == ("USD", "month", 3600)
    assert billing.numbering == "INV-{year}-{seq:06d}"
    pro = policy.plans["pro"]
    assert pro.fee is not None and pro.fee.amount == Money(49_000_000, "USD")
    assert pro.fee.timing == "advance" and pro.trial_days == 14
    assert [charge.meter for charge in pro.charges] == ["geocode", "search", "enrich"]
    geocode = pro.charges[0]
    assert geocode.amount(Decimal(20_000)) == Decimal("56.000")  # 0 + 9000*0.004 + 10000*0.002
    coupon = policy.coupons["LAUNCH20"]
    assert (coupon.percent, coupon.duration, coupon.applies_to) == (Decimal(20), 3, ("fee",))
    assert coupon.max_redemptions == 1000
    assert policy.plans["free"].fee is None and policy.plans["free"].charges == ()


def test_the_sample_passes_the_json_schema() -> None:
    jsonschema.validate(sample(), policy_schema())


def test_a_policy_without_billing_has_none() -> None:
    document = sample()
    del document["billing"], document["coupons"], document["plans"]["pro"]
    policy = load(document)
    assert policy.billing is None and dict(policy.coupons) == {}


def test_defaults_and_timezone_from_defaults() -> None:
    document = sample()
    document["billing"] = {}
    document["defaults"]["timezone"] = "Europe/Paris"
    billing = load(document).billing
    assert billing is not None
    assert (billing.currency, billing.period, billing.anchor) == ("USD", "month", "calendar")
    assert billing.timezone == "Europe/Paris" and billing.credit_note_numbering.startswith("CN-")


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (
            lambda d: d["plans"]["pro"]["charges"][0].__setitem__("meter", "geocod"),
            "plans.pro.charges[0].meter",
            ['"geocod" is not a meter', 'did you mean "geocode"'],
        ),
        (
            lambda d: d["plans"]["pro"]["charges"][0].__setitem__(
                "tiers", [{"up_to": 100, "unit": "1"}, {"up_to": 50, "unit": "1"}, {"unit": "1"}]
            ),
            "plans.pro.charges[0].tiers[1].up_to",
            ["50"],
        ),
        (
            lambda d: d["plans"]["pro"]["charges"][1].__setitem__("amount", "-5.00"),
            "plans.pro.charges[1].amount",
            ["negative"],
        ),
        (
            lambda d: d["plans"]["pro"]["charges"][1].__setitem__("amount", 5.0),
            "plans.pro.charges[1].amount",
            ["float"],
        ),
        (
            lambda d: d["plans"]["pro"].__setitem__("fee", {"amount": "49.00 EUR"}),
            "plans.pro.fee.amount",
            ["EUR", "USD"],
        ),
        (
            lambda d: d["plans"]["pro"].__setitem__("trial_then", "gold"),
            "plans.pro.trial_then",
            ['"gold"', '"free"'],
        ),
        (
            lambda d: d["billing"].__setitem__("period", "fortnight"),
            "billing.period",
            ['"fortnight"', "month"],
        ),
        (
            lambda d: d["billing"].__setitem__("numbering", "INV-{year}"),
            "billing.numbering",
            ["{seq}"],
        ),
        (
            lambda d: d["billing"].__setitem__("invoice_grace", "1 hour"),
            "billing.invoice_grace",
            ["duration"],
        ),
        (
            lambda d: d["billing"].__setitem__("currency", "usd"),
            "billing.currency",
            ["3 uppercase letters"],
        ),
        (
            lambda d: d["coupons"]["LAUNCH20"].__setitem__("amount", "10.00 USD"),
            "coupons.LAUNCH20",
            ["exactly one of percent or amount"],
        ),
        (
            lambda d: d["coupons"]["LAUNCH20"].__setitem__("percent", 120),
            "coupons.LAUNCH20.percent",
            ["at most 100"],
        ),
        (
            lambda d: d["coupons"]["LAUNCH20"].__setitem__("applies_to", ["fees"]),
            "coupons.LAUNCH20.applies_to[0]",
            ['"fees"', "meter name"],
        ),
        (
            lambda d: d["coupons"]["LAUNCH20"].__setitem__("duration", 0),
            "coupons.LAUNCH20.duration",
            ["once", "forever"],
        ),
        (
            lambda d: d["plans"]["pro"]["charges"].append(
                {"meter": "search", "model": "unit", "unit": "1"}
            ),
            "plans.pro.charges[3].meter",
            ["charged twice"],
        ),
        (
            lambda d: d["plans"]["pro"]["charges"].append(
                {"meter": "lookup", "model": "unit", "unit": "1"}
            ),
            "plans.pro.charges[3].meter",
            ["prepaid credits"],
        ),
        (
            lambda d: d["billing"].__setitem__("cycle", "month"),
            "billing.cycle",
            ["unknown"],
        ),
    ],
)
def test_bad_billing_values_name_their_path(change: Any, path: str, words: list[str]) -> None:
    document = sample()
    change(document)
    found = issues(document)
    assert path in found, found
    for word in words:
        assert word in found[path], (word, found[path])


def test_money_and_charges_without_a_billing_section_are_refused() -> None:
    document = sample()
    del document["billing"]
    found = issues(document)
    assert "charges need a [billing] section" in found["plans.pro.charges"]
    assert "needs a [billing] section" in found["plans.pro.fee.amount"]
    assert "coupons need a [billing] section" in found["coupons"]


def test_every_issue_is_reported_at_once() -> None:
    document = sample()
    document["billing"]["period"] = "year"
    document["plans"]["pro"]["trial_days"] = -1
    document["coupons"]["bad code!"] = {"percent": 5}
    found = issues(document)
    assert {"billing.period", "plans.pro.trial_days"} <= set(found)
    assert any(path.startswith("coupons.") and "coupon code" in msg for path, msg in found.items())


def test_the_schema_refuses_what_the_parser_refuses() -> None:
    schema = policy_schema()
    for change in (
        lambda d: d["plans"]["pro"]["charges"][0].__setitem__("model", "tiered"),
        lambda d: d["billing"].__setitem__("period", "year"),
        lambda d: d["coupons"]["LAUNCH20"].__setitem__("amount", "1.00 USD"),
        lambda d: d["plans"]["pro"]["limits"][0].__setitem__("overage", "yes"),
        lambda d: d["plans"]["free"]["limits"][0].__setitem__("overage", True),
    ):
        document = copy.deepcopy(sample())
        change(document)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(document, schema)
        with pytest.raises(PolicyError):
            load(document)
