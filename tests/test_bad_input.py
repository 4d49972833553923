"""Bad input: every refusal is a `TollwayError` subclass whose message names the field and the bad
value, and nothing is consumed by a refused call."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tollway import (
    AsyncTollway,
    ConfigurationError,
    InvalidArgumentError,
    PolicyError,
    Tollway,
    TollwayError,
    UnknownOperationError,
    UnknownSubjectError,
)
from tollway.keyspace import MAX_SUBJECT
from tollway.testing import FakeClock

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1}, "search": {"cost": 5}},
    "plans": {"free": {"limits": [{"name": "hourly", "quota": "100/hour"}]}},
}
NO_DEFAULT_PLAN: dict[str, Any] = {**POLICY, "defaults": {}}

Call = Callable[..., Any]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_767_225_600)


@pytest.fixture
def tw(clock: FakeClock) -> Tollway:
    tw = Tollway(POLICY, clock=clock)
    assert tw.acquire("good", "geocode", 3).allowed
    return tw


def snapshot(tw: Tollway) -> tuple[Any, int]:
    """The known subject's counters and the store's size: a refused call changes neither."""
    return tw.usage("good").limit("hourly").used, tw.store.size()  # type: ignore[attr-defined]


def entry_points(tw: Tollway) -> dict[str, Call]:
    return {"acquire": tw.acquire, "reserve": tw.reserve}


# -- costs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (-1, "-1"),
        (0, "0"),
        (True, "True"),
        (False, "False"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        ("3", "'3'"),
        (10**15 + 1, "1000000000000001"),
        (10**30, str(10**30)),
    ],
)
@pytest.mark.parametrize("entry", ["acquire", "reserve"])
def test_bad_costs(tw: Tollway, entry: str, cost: Any, shown: str) -> None:
    before = snapshot(tw)
    with pytest.raises(InvalidArgumentError) as caught:
        entry_points(tw)[entry]("good", "geocode", cost)
    message = str(caught.value)
    assert message.startswith("cost: ")
    assert shown in message
    assert snapshot(tw) == before


def test_largest_cost_is_accepted_and_denied_by_the_quota(tw: Tollway) -> None:
    decision = tw.acquire("good", "geocode", 10**15)
    assert not decision.allowed
    assert decision.retry_after is None
    assert tw.usage("good").limit("hourly").used == 3


# -- operations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["nope", "Geocode", "", None, 7])
@pytest.mark.parametrize("entry", ["acquire", "reserve"])
def test_unknown_operation_lists_the_known_ones(tw: Tollway, entry: str, operation: Any) -> None:
    before = snapshot(tw)
    with pytest.raises(UnknownOperationError) as caught:
        entry_points(tw)[entry]("good", operation)
    message = str(caught.value)
    assert message.startswith("operation: ")
    assert repr(operation) in message
    assert "geocode, search" in message
    assert isinstance(caught.value, TollwayError)
    assert snapshot(tw) == before


# -- subjects --------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["acquire", "reserve", "usage"])
def test_unknown_subject_without_default_plan(clock: FakeClock, entry: str) -> None:
    tw = Tollway(NO_DEFAULT_PLAN, clock=clock)
    tw.assign("good", "free")
    tw.acquire("good", "geocode", 3)
    calls: dict[str, Callable[[], Any]] = {
        "acquire": lambda: tw.acquire("stranger", "geocode"),
        "reserve": lambda: tw.reserve("stranger", "geocode"),
        "usage": lambda: tw.usage("stranger"),
    }
    with pytest.raises(UnknownSubjectError) as caught:
        calls[entry]()
    message = str(caught.value)
    assert message.startswith("subject 'stranger'")
    assert "no plan" in message
    assert isinstance(caught.value, TollwayError)
    assert tw.usage("good").limit("hourly").used == 3
    tw.assign("stranger", "free")
    assert tw.usage("stranger").limit("hourly").used == 0


BAD_SUBJECTS = [
    "",
    "line\nbreak",
    "carriage\rreturn",
    "tab\there",
    "nul\x00byte",
    "\x1b[31mred",
    "line\u2028separator",
    "x" * (MAX_SUBJECT + 1),
    "x" * 5000,
    "lone \ud800 surrogate",
    "trailing \udfff",
]


@pytest.mark.parametrize("subject", BAD_SUBJECTS, ids=range(len(BAD_SUBJECTS)))
@pytest.mark.parametrize("entry", ["acquire", "reserve", "usage", "reset", "assign", "plan_of"])
def test_bad_subjects(tw: Tollway, entry: str, subject: str) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "acquire": lambda: tw.acquire(subject, "geocode"),
        "reserve": lambda: tw.reserve(subject, "geocode"),
        "usage": lambda: tw.usage(subject),
        "reset": lambda: tw.reset(subject),
        "assign": lambda: tw.assign(subject, "free"),
        "plan_of": lambda: tw.plan_of(subject),
    }
    before = snapshot(tw)
    with pytest.raises(InvalidArgumentError) as caught:
        calls[entry]()
    message = str(caught.value)
    assert message.startswith("subject: ")
    assert repr(subject[:80]) in message
    assert len(message) < 400  # a long subject is shown cut short
    assert snapshot(tw) == before


@pytest.mark.parametrize("subject", [None, 42, b"bytes", ("a",)])
def test_subject_of_the_wrong_type(tw: Tollway, subject: Any) -> None:
    before = snapshot(tw)
    with pytest.raises(InvalidArgumentError) as caught:
        tw.acquire(subject, "geocode")
    message = str(caught.value)
    assert message.startswith("subject: ")
    assert repr(subject) in message
    assert type(subject).__name__ in message
    assert snapshot(tw) == before


def test_longest_subject_is_accepted(tw: Tollway) -> None:
    assert tw.acquire("x" * MAX_SUBJECT, "geocode").allowed


ODD_SUBJECTS = [
    "ünïcødé",
    "😀",
    "😀😃",
    "שלום עולם",
    "مرحبا",
    "a}b{c",
    "{a}",
    "with:colons",
    "with:colons:r:hourly",
    "tw:{good}:plan",
    "good ",
    " good",
    "%s%d",
    "x" * MAX_SUBJECT,
]


def test_odd_but_valid_subjects_are_independent_counters(tw: Tollway) -> None:
    for n, subject in enumerate(ODD_SUBJECTS, start=1):
        decision = tw.acquire(subject, "geocode", n)
        assert decision.allowed, subject
        assert decision.subject == subject
        assert decision.limit("hourly").used == n, subject
    for n, subject in enumerate(ODD_SUBJECTS, start=1):
        usage = tw.usage(subject)
        assert usage.subject == subject
        assert usage.limit("hourly").used == n, subject
    assert tw.usage("good").limit("hourly").used == 3
    tw.assign("a}b{c", "free")
    assert tw.plan_of("a}b{c") == "free"
    assert tw.reset("with:colons") == 1
    assert tw.usage("with:colons").limit("hourly").used == 0
    assert (
        tw.usage("with:colons:r:hourly").limit("hourly").used
        == ODD_SUBJECTS.index("with:colons:r:hourly") + 1
    )


# -- store URLs ------------------------------------------------------------------------------------


BAD_URLS = [
    "http://x",
    "memory://foo",
    "memory://?x=1",
    "redis://",
    "redis://:6379/0",
    "redis://h:99999",
    "redis://h:port",
    "redis://h:0",
    "redis://h:6379/zero",
    "redis+cluster://h:7000/3",
    "",
    "   ",
    "no scheme",
]


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("face", [Tollway, AsyncTollway])
def test_bad_store_urls_fail_at_construction(clock: FakeClock, face: type, url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        face(POLICY, store=url, clock=clock)
    message = str(caught.value)
    assert message.startswith("store url: ")
    assert repr(url) in message or repr(url.strip()) in message
    assert isinstance(caught.value, TollwayError)


@pytest.mark.parametrize("url", ["redis://", "redis://h:99999"])
def test_bad_store_url_in_the_policy_fails_at_construction(clock: FakeClock, url: str) -> None:
    policy = {**POLICY, "store": {"url": url}}
    with pytest.raises(ConfigurationError) as caught:
        Tollway(policy, clock=clock)
    assert repr(url) in str(caught.value)


def test_store_url_that_is_no_url_is_a_policy_error(clock: FakeClock) -> None:
    with pytest.raises(PolicyError) as caught:
        Tollway({**POLICY, "store": {"url": "http://x"}}, clock=clock)
    assert isinstance(caught.value, TollwayError)
    assert caught.value.issues[0].path == "store.url"
    assert '"http://x"' in str(caught.value)


@pytest.mark.parametrize("url", ["memory://", "memory:///", " memory:// "])
def test_memory_urls_are_accepted(clock: FakeClock, url: str) -> None:
    tw = Tollway(POLICY, store=url, clock=clock)
    assert tw.acquire("a", "geocode").allowed


# -- a budget over what the policy cannot price -------------------------------------------------

UNPRICED: dict[str, Any] = {
    **POLICY,
    "plans": {"free": {"limits": [{"name": "spend", "budget": "1.00 USD/day"}]}},
}


@pytest.mark.parametrize("face", [Tollway, AsyncTollway])
def test_a_budget_it_cannot_price_fails_at_construction(clock: FakeClock, face: type) -> None:
    """Not one 400 per request that blames the client: the policy itself is refused."""
    with pytest.raises(PolicyError) as caught:
        face(UNPRICED, clock=clock)
    assert [issue.path for issue in caught.value.issues] == ["plans.free.limits[0].budget"] * 2
    message = str(caught.value)
    assert 'counts operation "geocode", which has no price' in message
    assert 'counts operation "search", which has no price' in message


def test_an_explicit_price_without_an_amount_is_refused_and_consumes_nothing(
    clock: FakeClock,
) -> None:
    policy = {**UNPRICED, "operations": {"geocode": {"cost": 1, "price": "explicit"}}}
    tw = Tollway(policy, clock=clock)
    with pytest.raises(InvalidArgumentError, match="amount") as caught:
        tw.acquire("a", "geocode")
    assert "'geocode'" in str(caught.value)
    assert tw.usage("a").limit("spend").used == Decimal("0")
    assert tw.acquire("a", "geocode", amount=Decimal("0.75")).allowed
    assert not tw.acquire("a", "geocode", amount=Decimal("0.30")).allowed


def test_the_subjects_of_failed_key_attempts_are_reserved() -> None:
    from tollway import Tollway
    from tollway.errors import InvalidArgumentError

    tw = Tollway({"defaults": {"plan": "p"}, "plans": {"p": {"limits": []}}})
    with pytest.raises(InvalidArgumentError, match="reserved for the counts of failed API-key"):
        tw.acquire("@key-failures:ip:203.0.113.7", "x")
