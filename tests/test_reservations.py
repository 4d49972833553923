"""Reservations on the memory store: reserve an estimate, then commit the actual cost or release.

Holds live ``[store] hold_ttl_ms`` (30 s here) and are given back by themselves after that.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from tollway import (
    Crossing,
    InvalidArgumentError,
    LimitExceeded,
    ReservationError,
    Tollway,
    TollwayError,
)
from tollway.testing import FakeClock

US = 1_000_000
HOLD_TTL_US = 30 * US

POLICY: dict[str, Any] = {
    "store": {"hold_ttl_ms": 30_000},
    "defaults": {"plan": "free"},
    "operations": {
        "call": {"cost": 1, "price": "explicit"},
        "geocode": {"cost": 1, "price": "0.01 USD"},
        "llm": {"cost": 1, "price": "explicit"},
    },
    "plans": {
        "free": {"limits": [{"name": "hourly", "quota": "10/hour", "thresholds": [0.5]}]},
        "money": {"limits": [{"name": "spend", "budget": "1.00 USD/day"}]},
        "rated": {"limits": [{"name": "burst", "rate": "5/s", "burst": 10}]},
    },
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 15, 10, tzinfo=timezone.utc))


@pytest.fixture
def tw(clock: FakeClock) -> Tollway:
    tw = Tollway(POLICY, clock=clock)
    tw.assign("m", "money")
    tw.assign("r", "rated")
    return tw


def hourly(tw: Tollway, subject: str = "a") -> Any:
    return tw.usage(subject).limit("hourly").used


def spend(tw: Tollway, subject: str = "m") -> Any:
    return tw.usage(subject).limit("spend").used


# -- commit and release ----------------------------------------------------------------------------


def test_reserve_holds_the_estimate(tw: Tollway) -> None:
    reservation = tw.reserve("a", "call", 3)
    assert reservation.allowed
    assert reservation
    assert reservation.estimate == 3
    assert reservation.id
    assert not reservation.settled
    assert reservation.decision.limit("hourly").used == 3
    assert hourly(tw) == 3
    assert tw.reserve("a", "call", 3).id != reservation.id


def test_commit_less_than_the_estimate_gives_the_rest_back(tw: Tollway) -> None:
    reservation = tw.reserve("a", "call", 3)
    decision = reservation.commit(2)
    assert reservation.settled
    assert decision.allowed
    assert decision.cost == 2
    assert decision.limit("hourly").used == 2
    assert hourly(tw) == 2


def test_commit_more_than_the_estimate_takes_it_even_past_the_limit(tw: Tollway) -> None:
    tw.acquire("a", "call", 7)
    reservation = tw.reserve("a", "call", 3)
    assert hourly(tw) == 10
    decision = reservation.commit(5)
    assert decision.limit("hourly").used == 12
    assert decision.limit("hourly").remaining == 0
    assert hourly(tw) == 12
    assert not tw.acquire("a", "call").allowed


def test_commit_defaults_to_the_estimate(tw: Tollway) -> None:
    tw.reserve("a", "call", 4).commit()
    assert hourly(tw) == 4


def test_commit_zero_gives_everything_back(tw: Tollway) -> None:
    tw.reserve("a", "call", 4).commit(0)
    assert hourly(tw) == 0
    assert tw.acquire("a", "call", 10).allowed


def test_release_gives_everything_back(tw: Tollway) -> None:
    tw.acquire("a", "call", 2)
    reservation = tw.reserve("a", "call", 3)
    assert hourly(tw) == 5
    reservation.release()
    assert reservation.settled
    assert hourly(tw) == 2
    assert tw.acquire("a", "call", 8).allowed


def test_holds_are_per_reservation(tw: Tollway) -> None:
    first = tw.reserve("a", "call", 3)
    second = tw.reserve("a", "call", 4)
    assert hourly(tw) == 7
    first.release()
    assert hourly(tw) == 4
    second.commit(1)
    assert hourly(tw) == 1


def test_reset_during_a_hold_then_release_leaves_nothing_negative(tw: Tollway) -> None:
    tw.acquire("a", "call", 2)
    reservation = tw.reserve("a", "call", 3)
    assert tw.reset("a") == 1
    reservation.release()
    assert hourly(tw) == 0
    assert tw.acquire("a", "call", 10).allowed
    assert not tw.acquire("a", "call").allowed


# -- expiry ----------------------------------------------------------------------------------------


def test_an_unsettled_hold_expires_by_itself(tw: Tollway, clock: FakeClock) -> None:
    tw.reserve("a", "call", 10)
    assert not tw.acquire("a", "call").allowed
    clock.advance(us=HOLD_TTL_US - 1)
    assert hourly(tw) == 10
    assert not tw.acquire("a", "call").allowed
    clock.advance(us=2)
    assert hourly(tw) == 0
    assert tw.acquire("a", "call", 10).allowed


def test_commit_after_expiry_takes_the_whole_actual_cost(tw: Tollway, clock: FakeClock) -> None:
    reservation = tw.reserve("a", "call", 3)
    clock.advance(31)
    assert hourly(tw) == 0
    decision = reservation.commit(2)
    assert decision.limit("hourly").used == 2
    assert hourly(tw) == 2


def test_default_commit_after_expiry_takes_the_estimate(tw: Tollway, clock: FakeClock) -> None:
    reservation = tw.reserve("a", "call", 3)
    clock.advance(31)
    reservation.commit()
    assert hourly(tw) == 3


def test_release_after_expiry_gives_back_nothing_more(tw: Tollway, clock: FakeClock) -> None:
    tw.acquire("a", "call", 4)
    reservation = tw.reserve("a", "call", 3)
    clock.advance(31)
    assert hourly(tw) == 4
    reservation.release()
    assert hourly(tw) == 4


def test_one_hold_expires_while_another_is_committed(tw: Tollway, clock: FakeClock) -> None:
    kept = tw.reserve("a", "call", 2)
    clock.advance(20)
    forgotten = tw.reserve("a", "call", 5)
    clock.advance(11)  # the first hold has expired, the second has 19 s left
    assert hourly(tw) == 5
    kept.commit(2)
    assert hourly(tw) == 7
    forgotten.commit(1)
    assert hourly(tw) == 3


# -- settling twice, settling a denial -------------------------------------------------------------


def test_double_commit_raises(tw: Tollway) -> None:
    reservation = tw.reserve("a", "call", 3)
    reservation.commit(2)
    with pytest.raises(ReservationError) as caught:
        reservation.commit(2)
    assert reservation.id in str(caught.value)
    with pytest.raises(ReservationError):
        reservation.release()
    assert hourly(tw) == 2


def test_commit_after_release_raises(tw: Tollway) -> None:
    reservation = tw.reserve("a", "call", 3)
    reservation.release()
    with pytest.raises(ReservationError):
        reservation.commit()
    assert hourly(tw) == 0


def test_settling_a_denied_reservation_raises(tw: Tollway) -> None:
    tw.acquire("a", "call", 9)
    reservation = tw.reserve("a", "call", 3)
    assert not reservation.allowed
    assert not reservation
    assert reservation.decision.violated == ("hourly",)
    assert reservation.decision.retry_after == 3600.0
    assert hourly(tw) == 9
    with pytest.raises(ReservationError, match="denied"):
        reservation.commit(1)
    with pytest.raises(ReservationError, match="denied"):
        reservation.release()
    assert hourly(tw) == 9


@pytest.mark.parametrize("actual", [-1, True, 1.5, "2", 10**15 + 1])
def test_bad_actual_cost_raises_and_leaves_the_reservation_open(tw: Tollway, actual: Any) -> None:
    reservation = tw.reserve("a", "call", 3)
    with pytest.raises(InvalidArgumentError) as caught:
        reservation.commit(actual)
    assert "actual" in str(caught.value)
    assert str(actual) in str(caught.value)
    assert not reservation.settled
    assert hourly(tw) == 3
    reservation.commit(1)
    assert hourly(tw) == 1


# -- as a context manager --------------------------------------------------------------------------


def test_context_manager_raises_limit_exceeded_on_entry_when_denied(tw: Tollway) -> None:
    tw.acquire("a", "call", 9)
    entered = False
    with pytest.raises(LimitExceeded) as caught, tw.reserve("a", "call", 3):
        entered = True
    assert not entered
    assert isinstance(caught.value, TollwayError)
    assert caught.value.decision.violated == ("hourly",)
    assert "hourly" in str(caught.value)
    assert hourly(tw) == 9


def test_context_manager_releases_on_exception(tw: Tollway) -> None:
    tw.acquire("a", "call", 2)
    with pytest.raises(RuntimeError, match="boom"), tw.reserve("a", "call", 3) as reservation:
        assert hourly(tw) == 5
        raise RuntimeError("boom")
    assert reservation.settled
    assert hourly(tw) == 2


def test_context_manager_commits_the_estimate_on_normal_exit(tw: Tollway) -> None:
    tw.acquire("a", "call", 2)
    with tw.reserve("a", "call", 3) as reservation:
        assert not reservation.settled
    assert reservation.settled
    assert hourly(tw) == 5


def test_context_manager_keeps_an_explicit_commit(tw: Tollway) -> None:
    with tw.reserve("a", "call", 3) as reservation:
        reservation.commit(1)
    assert hourly(tw) == 1
    with tw.reserve("a", "call", 3) as reservation:
        reservation.release()
    assert hourly(tw) == 1


# -- rates and budgets -----------------------------------------------------------------------------


def test_rate_reservation(tw: Tollway) -> None:
    reservation = tw.reserve("r", "call", 4)
    assert reservation.decision.limit("burst").remaining == 6
    decision = reservation.commit(2)
    assert decision.limit("burst").remaining == 8
    assert decision.limit("burst").reset_after == 0.4
    assert tw.usage("r").limit("burst").remaining == 8
    tw.reserve("r", "call", 8).release()
    assert tw.usage("r").limit("burst").remaining == 8


def test_budget_reservation_at_the_operation_price(tw: Tollway) -> None:
    reservation = tw.reserve("m", "geocode", 10)
    assert reservation.decision.amount_decimal == Decimal("0.10")
    assert spend(tw) == Decimal("0.10")
    decision = reservation.commit(4)
    assert decision.cost == 4
    assert decision.amount_decimal == Decimal("0.04")
    assert decision.limit("spend").used == Decimal("0.04")
    assert spend(tw) == Decimal("0.04")


def test_budget_reservation_with_amounts(tw: Tollway) -> None:
    reservation = tw.reserve("m", "llm", amount=Decimal("0.50"))
    assert spend(tw) == Decimal("0.50")
    assert not tw.acquire("m", "llm", amount=Decimal("0.51")).allowed
    decision = reservation.commit(amount=Decimal("0.2"))
    assert decision.amount_decimal == Decimal("0.2")
    assert spend(tw) == Decimal("0.20")
    tw.reserve("m", "llm", amount=Decimal("0.30")).commit()
    assert spend(tw) == Decimal("0.50")
    tw.reserve("m", "llm", amount=Decimal("0.25")).release()
    assert spend(tw) == Decimal("0.50")


def test_budget_commit_can_give_an_amount_for_a_priced_operation(tw: Tollway) -> None:
    reservation = tw.reserve("m", "geocode", 10)
    reservation.commit(amount=Decimal("0.0333"))
    assert spend(tw) == Decimal("0.0333")


def test_default_commit_of_an_amount_reservation_takes_the_reserved_amount(tw: Tollway) -> None:
    """The estimate of a reservation made with ``amount=`` is that amount, whether or not the
    operation has a price: committing the estimate must not re-price it."""
    with tw.reserve("m", "geocode", amount=Decimal("0.50")):
        assert spend(tw) == Decimal("0.50")
    assert spend(tw) == Decimal("0.50")


def test_budget_reservation_above_the_budget_is_denied_forever(tw: Tollway) -> None:
    reservation = tw.reserve("m", "llm", amount=Decimal("1.01"))
    assert not reservation.allowed
    assert reservation.decision.retry_after is None
    assert spend(tw) == Decimal("0")


def test_commit_with_a_bad_amount_leaves_the_reservation_open(tw: Tollway) -> None:
    reservation = tw.reserve("m", "llm", amount=Decimal("0.50"))
    with pytest.raises(InvalidArgumentError, match="amount"):
        reservation.commit(amount=Decimal("0.0000001"))
    with pytest.raises(InvalidArgumentError, match="float"):
        reservation.commit(amount=0.2)  # type: ignore[arg-type]
    assert not reservation.settled
    reservation.commit(amount=Decimal("0.1"))
    assert spend(tw) == Decimal("0.10")


# -- thresholds through reservations ---------------------------------------------------------------


def test_reserve_then_commit_reports_a_threshold_once(tw: Tollway) -> None:
    reservation = tw.reserve("a", "call", 5)
    crossings = list(reservation.decision.crossings)
    crossings += reservation.commit(5).crossings
    assert crossings == [Crossing("hourly", Decimal("0.5"), 5)]


def test_release_and_retake_reports_a_threshold_once_per_window(tw: Tollway) -> None:
    reservation = tw.reserve("a", "call", 5)
    crossings = list(reservation.decision.crossings)
    reservation.release()
    crossings += tw.acquire("a", "call", 5).crossings
    assert crossings == [Crossing("hourly", Decimal("0.5"), 5)]
