"""Which grant paid what: the draw order, expiry, refunds, and interval sums."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tollway.billing.credits import allocate, change_points
from tollway.billing.records import GrantRecord


def grant(
    id_: str, amount: int, at: int = 0, expires: int | None = None, priority: int = 0
) -> GrantRecord:
    return GrantRecord(
        id=id_,
        subject="acct",
        currency="USD",
        amount_micros=amount,
        granted_us=at,
        expires_us=expires,
        priority=priority,
    )


def test_priority_then_soonest_expiry_then_oldest() -> None:
    grants = [
        grant("old", 10, at=0),
        grant("new", 10, at=5),
        grant("soon", 10, at=6, expires=1000),
        grant("vip", 10, at=7, priority=1),
    ]
    got = allocate(grants, [(10, 35)])
    assert got.drawn == {"vip": 10, "soon": 10, "old": 10, "new": 5}
    assert got.remaining["new"] == 5 and got.uncovered == 0


def test_a_grant_is_usable_from_its_grant_to_its_expiry() -> None:
    grants = [grant("a", 100, at=10, expires=20), grant("b", 100, at=0)]
    got = allocate(grants, [(5, 1), (10, 2), (19, 3), (20, 4)])
    assert got.drawn == {"a": 5, "b": 5}
    assert got.expired == {"a": 95}
    assert got.remaining == {"a": 0, "b": 95}


def test_window_reports_only_its_draws_and_expiries() -> None:
    grants = [grant("a", 100, at=0, expires=50), grant("b", 100, at=0)]
    got = allocate(grants, [(10, 30), (60, 20)], start_us=40, end_us=100)
    assert got.drawn == {"b": 20}
    assert got.expired == {"a": 70}
    before = allocate(grants, [(10, 30), (60, 20)], start_us=0, end_us=40)
    assert before.drawn == {"a": 30} and before.expired == {}


def test_refund_gives_back_to_the_grants_last_drawn() -> None:
    grants = [grant("a", 10, priority=1), grant("b", 100)]
    got = allocate(grants, [(1, 15), (2, -7)])
    assert got.drawn == {"a": 8}  # b's 5 back first, then 2 of a's
    assert got.remaining == {"a": 2, "b": 100}


def test_uncovered_draw_is_reported_and_refunded_first() -> None:
    got = allocate([grant("a", 10)], [(1, 15)])
    assert got.drawn == {"a": 10} and got.uncovered == 5
    got = allocate([grant("a", 10)], [(1, 15), (1, -3)])
    assert got.drawn == {"a": 10} and got.uncovered == 2


def test_change_points() -> None:
    grants = [grant("a", 1, at=5, expires=50), grant("b", 1, at=-3)]
    assert change_points(grants, 0, 40) == [0, 5, 40]


draw_list = st.lists(st.tuples(st.integers(0, 99), st.integers(0, 40)), max_size=30)
grant_list = st.lists(
    st.tuples(
        st.integers(1, 200),
        st.integers(0, 99),
        st.one_of(st.none(), st.integers(1, 120)),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=6,
)


@given(grant_list, draw_list, st.lists(st.integers(0, 15), max_size=20))
def test_interval_sums_allocate_as_the_draws_one_by_one(raw_grants, draws, refunds) -> None:  # type: ignore[no-untyped-def]
    grants = [
        grant(f"g{n}", amount, at=at, expires=None if life is None else at + life, priority=prio)
        for n, (amount, at, life, prio) in enumerate(raw_grants)
    ]
    # Refunds of an interval's own draws: each right after a draw, never more than it.
    events: list[tuple[int, int]] = []
    for n, (t, m) in enumerate(sorted(draws)):
        events.append((t, m))
        if n < len(refunds):
            events.append((t, -min(m, refunds[n])))
    points = change_points(grants, 0, 100)
    sums: dict[int, int] = {}
    for t, m in events:
        start = max(p for p in points if p <= t)
        sums[start] = sums.get(start, 0) + m
    one = allocate(grants, events, 0, 100)
    summed = allocate(grants, sorted(sums.items()), 0, 100)
    assert one.drawn == summed.drawn
    assert one.expired == summed.expired
    assert one.uncovered == summed.uncovered
    assert one.total + one.uncovered == sum(m for _, m in events)


def test_credits_lines_sum_to_the_rounded_draw() -> None:
    from decimal import Decimal

    from tollway.billing.rating import credits_lines

    grants = [
        grant("a", 1_004_000, priority=2),
        grant("b", 1_004_000, priority=1),
        grant("c", 10_000_000),
    ]
    allocation = allocate(grants, [(1, 3_012_000)])
    lines = credits_lines(
        allocation=allocation, currency="USD", drawn_micros=3_012_000, period=(0, 10)
    )
    assert [(x.grant, x.amount) for x in lines] == [
        ("a", Decimal("-1.00")),
        ("b", Decimal("-1.00")),
        ("c", Decimal("-1.01")),
    ]
    assert sum(x.amount for x in lines) == Decimal("-3.01")
    # What the allocation does not account for is a line of its own.
    rest = credits_lines(
        allocation=allocate([], []), currency="USD", drawn_micros=500_000, period=(0, 10)
    )
    assert [(x.grant, x.amount) for x in rest] == [(None, Decimal("-0.50"))]
