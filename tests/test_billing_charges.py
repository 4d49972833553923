"""The charge models, exact: the issue's conformance vectors, properties, and bad input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.billing import Charge
from tollway.errors import PolicyError

D = Decimal

SEVEN = [{"up_to": 5, "unit": "7"}, {"up_to": 10, "unit": "6.5"}, {"unit": "6"}]


def charge(model: str, **spec: Any) -> Charge:
    return Charge.parse({"model": model, **spec})


@pytest.mark.parametrize(
    ("quantity", "amount"), [(1, "7"), (5, "35"), (6, "39"), (20, "120"), (25, "150")]
)
def test_volume_tiers(quantity: int, amount: str) -> None:
    assert charge("volume", tiers=SEVEN).total(D(quantity)) == D(amount)


@pytest.mark.parametrize(("quantity", "amount"), [(5, "35"), (6, "41.50"), (20, "127.50")])
def test_graduated_tiers(quantity: int, amount: str) -> None:
    assert charge("graduated", tiers=SEVEN).total(D(quantity)) == D(amount)


def test_volume_with_a_flat_fee_on_every_tier() -> None:
    tiers = [
        {"up_to": 10_000, "unit": "0.0010", "flat": "10"},
        {"up_to": 50_000, "unit": "0.0008", "flat": "10"},
        {"up_to": 100_000, "unit": "0.0006", "flat": "10"},
        {"unit": "0.0004", "flat": "10"},
    ]
    assert charge("volume", tiers=tiers).total(D(65_000)) == D(49)
    assert Charge.parse({"model": "volume", "tiers": tiers}).amount(D("65000")) == D(49)


@pytest.mark.parametrize(
    ("quantity", "amount"), [(0, 2), (1, 12), (10, 102), (11, 110), (12, 115), (21, 163)]
)
def test_graduated_with_the_first_flat_due_at_zero(quantity: int, amount: int) -> None:
    tiers = [
        {"up_to": 10, "unit": "10", "flat": "2"},
        {"up_to": 20, "unit": "5", "flat": "3"},
        {"unit": "5", "flat": "3"},
    ]
    priced = charge("graduated", tiers=tiers, flat_at_zero=True)
    assert priced.total(D(quantity)) == D(amount)
    assert charge("graduated", tiers=tiers).total(D(0)) == 0  # not due by default


def test_unit_package_block_minimum_maximum() -> None:
    assert charge("unit", unit="0.0015").total(D(1000)) == D("1.5000")
    search = charge("package", size=100, amount="5.00", free=100)
    assert [search.total(D(q)) for q in (0, 100, 101, 200, 201)] == [0, 0, 5, 5, 10]
    enrich = charge("volume", block=10, tiers=[{"up_to": 100, "unit": "1.00"}, {"unit": "0.50"}])
    assert enrich.total(D(65)) == D(7)  # 7 blocks, a started block counts whole
    assert enrich.total(D(1001)) == D("50.50")  # 101 blocks: past 100, all at 0.50
    floor = charge("unit", unit="1", minimum="10", maximum="50")
    assert [floor.total(D(q)) for q in (0, 3, 30, 99)] == [10, 10, 30, 50]
    free = charge(
        "graduated",
        tiers=[{"up_to": 1000, "unit": "0"}, {"up_to": 10000, "unit": "0.004"}, {"unit": "0.002"}],
    )
    assert free.total(D(12_000)) == D("40.000")  # 9,000 at 0.004 and 2,000 at 0.002


def test_a_fractional_quantity_selects_its_volume_tier_by_its_ceiling() -> None:
    assert charge("volume", tiers=SEVEN).total(D("5.5")) == D("35.75")  # tier 6-10


def test_progressive_amounts_after_what_the_period_already_has() -> None:
    volume = charge("volume", tiers=SEVEN)
    assert volume.amount(D(1), already=D(5)) == D(4)  # 35 -> 39
    graduated = charge("graduated", tiers=SEVEN)
    assert graduated.amount(D(10), already=D(12)) == D(60)
    drop = charge("volume", tiers=[{"up_to": 10, "unit": "2"}, {"unit": "1"}])
    assert drop.amount(D(1), already=D(10)) == D(-9)  # 20 -> 11: a volume part can be negative


tier_lists = st.lists(
    st.tuples(
        st.integers(1, 50), st.decimals("0", "10", places=3), st.decimals("0", "5", places=2)
    ),
    min_size=1,
    max_size=5,
)


def _tiers(raw: list[tuple[int, Decimal, Decimal]]) -> list[dict[str, Any]]:
    tiers, top = [], 0
    for width, unit, flat in raw[:-1]:
        top += width
        tiers.append({"up_to": top, "unit": str(unit), "flat": str(flat)})
    _, unit, flat = raw[-1]
    tiers.append({"unit": str(unit), "flat": str(flat)})
    return tiers


@given(tier_lists, st.integers(0, 400), st.integers(0, 400))
def test_graduated_totals_never_decrease(raw: list[Any], a: int, b: int) -> None:
    priced = charge("graduated", tiers=_tiers(raw))
    low, high = sorted((a, b))
    assert priced.total(D(low)) <= priced.total(D(high))


@given(
    tier_lists,
    st.sampled_from(["graduated", "volume"]),
    st.lists(st.decimals("0", "60", places=2), max_size=8),
)
def test_progressive_parts_add_up_to_the_whole(
    raw: list[Any], model: str, parts: list[Decimal]
) -> None:
    priced = charge(model, tiers=_tiers(raw))
    already, billed = D(0), D(0)
    for part in parts:
        billed += priced.amount(part, already=already)
        already += part
    assert billed == priced.total(already)


@pytest.mark.parametrize(
    ("spec", "path", "says"),
    [
        ({"model": "tiered"}, "charge.model", "expected one of"),
        ({"model": "unit", "unit": 0.0015}, "charge.unit", "a float is not exact"),
        ({"model": "unit", "unit": "-1"}, "charge.unit", "negative"),
        ({"model": "unit"}, "charge.unit", "is missing"),
        ({"model": "unit", "unit": "1", "tiers": []}, "charge.tiers", "not a key of a unit charge"),
        ({"model": "package", "size": 0, "amount": "5"}, "charge.size", "1 or more"),
        (
            {
                "model": "volume",
                "tiers": [{"up_to": 10, "unit": "1"}, {"up_to": 5, "unit": "1"}, {"unit": "1"}],
            },
            "charge.tiers[1].up_to",
            "not above the previous tier's 10",
        ),
        (
            {"model": "volume", "tiers": [{"unit": "1"}, {"unit": "1"}]},
            "charge.tiers[0].up_to",
            "only the last",
        ),
        (
            {"model": "volume", "tiers": [{"up_to": 5, "unit": "1"}]},
            "charge.tiers[0].up_to",
            "the last tier has no end",
        ),
        ({"model": "graduated", "tiers": "cheap"}, "charge.tiers", "expected a list"),
        (
            {"model": "unit", "unit": "1", "minimum": "5", "maximum": "2"},
            "charge.maximum",
            "below the minimum",
        ),
        (
            {"model": "unit", "unit": "1", "aggregation": "unique"},
            "charge.attribute",
            "names the attribute",
        ),
        ({"model": "unit", "unit": "NaN"}, "charge.unit", "expected a decimal number"),
    ],
)
def test_bad_charges_name_the_key_path(spec: dict[str, Any], path: str, says: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Charge.parse(spec)
    assert any(issue.path == path and says in issue.message for issue in caught.value.issues), str(
        caught.value
    )


@pytest.mark.parametrize(
    ("amount", "currency", "line"),
    [
        ("1.005", "USD", "1.00"),  # half to even
        ("1.015", "USD", "1.02"),
        ("1.5000", "usd", "1.50"),
        ("1234.5", "JPY", "1234"),
        ("1235.5", "JPY", "1236"),
        ("0.0005", "KWD", "0.000"),
        ("0.0015", "KWD", "0.002"),
        ("-9.995", "EUR", "-10.00"),
    ],
)
def test_lines_round_half_even_to_the_currency_minor_unit(
    amount: str, currency: str, line: str
) -> None:
    from tollway.billing import round_line

    rounded = round_line(D(amount), currency)
    assert rounded == D(line) and str(rounded) == line
