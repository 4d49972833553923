"""RateLimit fields, Retry-After and problem+json built from real decisions (memory store).

Every header is parsed back with http-sf (an RFC 9651 parser from PyPI) and compared with the
decision's own figures, computed here independently of tollway.http.
"""

from __future__ import annotations

import json
import math
import socket
from decimal import Decimal
from typing import Any

import http_sf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway
from tollway.engine.decision import Decision, LimitState
from tollway.engine.step import ACQUIRE, degraded
from tollway.http.headers import (
    legacy_fields,
    policy_items,
    ratelimit_fields,
    retry_after_field,
    sf_string,
)
from tollway.http.problem import (
    QUOTA_EXCEEDED,
    TEMPORARY_REDUCED_CAPACITY,
    problem,
    problem_for,
)
from tollway.testing import FakeClock

# 2023-11-14 22:13:20 UTC: 2800 s before the end of the hour, 6400 s before the end of the day.
START = 1_700_000_000.0

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {
        "geocode": {"cost": 1, "price": "0.001 USD"},
        "search": {"cost": 5, "price": "0.002 USD"},
    },
    "plans": {
        "free": {
            "limits": [
                {"name": "burst", "rate": "5/s", "burst": 10},
                {"name": "hourly", "quota": "1000/hour"},
                {"name": "spend", "budget": "1.00 USD/day"},
                {"name": "canary", "quota": "3/minute", "shadow": True},
                {
                    "name": "v1.search-daily",
                    "quota": "50/day",
                    "per": "operation",
                    "operations": ["search"],
                },
            ]
        },
        "slow": {"limits": [{"name": "drip", "rate": "6/minute", "burst": 3}]},
        "ties": {
            "limits": [
                {"name": "minute", "quota": "10/minute"},
                {"name": "hour", "quota": "10/hour"},
            ]
        },
        "tight": {"limits": [{"name": "hourly", "quota": "3/hour"}]},
        "wide": {
            "limits": [
                {"name": "burst", "rate": "100/s", "burst": 1000},
                {"name": "hourly", "quota": "1000/hour"},
                {"name": "spend", "budget": "10.00 USD/day"},
            ]
        },
    },
}


def make(policy: dict[str, Any] | None = None) -> tuple[tollway.Tollway, FakeClock]:
    clock = FakeClock(START)
    return tollway.Tollway(policy or POLICY, clock=clock), clock


def fields(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out = dict(pairs)
    assert len(out) == len(pairs), f"a field name repeats: {pairs}"
    return out


def parse(value: str) -> list[tuple[str, dict[str, Any]]]:
    parsed: Any = http_sf.parse(value.encode(), tltype="list")
    assert isinstance(parsed, list)
    return [(name, dict(params)) for name, params in parsed]


def parsed_fields(decision: Decision, mode: str = "all") -> tuple[dict[str, Any], dict[str, Any]]:
    """(RateLimit-Policy, RateLimit) as {policy name: parameters}."""
    got = fields(ratelimit_fields(decision, mode=mode))  # type: ignore[arg-type]
    assert set(got) == {"RateLimit-Policy", "RateLimit"}
    policy, limits = parse(got["RateLimit-Policy"]), parse(got["RateLimit"])
    assert [n for n, _ in policy] == [n for n, _ in limits]
    return dict(policy), dict(limits)


def ceil_s(seconds: float) -> int:
    return math.ceil(round(seconds, 6))


def expected_name(state: LimitState) -> str:
    return state.name if state.operation is None else f"{state.name}:{state.operation}"


# ------------------------------------------------------------------ the fields agree


def test_every_enforcing_limit_parses_and_matches_the_decision() -> None:
    tw, clock = make()
    for _ in range(3):
        tw.acquire("acct", "geocode")
        clock.advance(0.05)
    d = tw.acquire("acct", "search")
    assert d.allowed
    policy, limits = parsed_fields(d)
    assert list(policy) == ["burst", "hourly", "spend", "v1.search-daily:search"]

    burst = d.limit("burst")
    assert policy["burst"] == {"q": 10, "w": 2}  # 10 at 5/s refill in 2 s; q/w = the rate
    assert limits["burst"] == {"r": burst.remaining, "t": ceil_s(burst.reset_after)}
    assert burst.remaining == 2  # 8 taken within 0.15 s: nothing dripped back yet

    hourly = d.limit("hourly")
    assert policy["hourly"] == {"q": 1000, "w": 3600}
    assert limits["hourly"] == {"r": 992, "t": ceil_s(hourly.reset_after)}
    assert limits["hourly"]["t"] == 2800  # 2799.85 s to the hour, rounded up

    spend = d.limit("spend")
    assert spend.remaining == Decimal("0.987")  # 3 x 0.001 + 5 x 0.002
    assert policy["spend"] == {"q": 1_000_000, "qu": "tollway-usd-micros", "w": 86_400}
    assert limits["spend"] == {"r": 987_000, "t": ceil_s(spend.reset_after)}

    daily = d.limit("v1.search-daily", "search")
    assert daily.remaining == 45
    assert policy["v1.search-daily:search"] == {"q": 50, "w": 86_400}
    assert limits["v1.search-daily:search"] == {"r": 45, "t": 6400}


def test_raw_serialization_is_rfc_9651_list_syntax() -> None:
    tw, _ = make()
    got = fields(ratelimit_fields(tw.acquire("acct", "geocode")))
    assert got["RateLimit-Policy"] == (
        '"burst";q=10;w=2, "hourly";q=1000;w=3600, '
        '"spend";q=1000000;qu="tollway-usd-micros";w=86400'
    )
    assert got["RateLimit"] == '"burst";r=9;t=1, "hourly";r=999;t=2800, "spend";r=999000;t=6400'


def test_per_operation_limit_is_named_with_its_operation_only_where_it_applies() -> None:
    tw, _ = make()
    policy, _ = parsed_fields(tw.acquire("acct", "geocode"))
    assert not any(name.startswith("v1.search-daily") for name in policy)
    policy, _ = parsed_fields(tw.acquire("acct", "search"))
    assert "v1.search-daily:search" in policy


def test_shadow_limits_never_appear_even_when_they_would_deny() -> None:
    tw, clock = make()
    for _ in range(4):
        d = tw.acquire("acct", "geocode")
        clock.advance(0.3)
    assert d.allowed
    assert d.shadow_violated == ("canary",)
    every = ratelimit_fields(d) + ratelimit_fields(d, mode="closest") + legacy_fields(d)
    assert every
    assert not any("canary" in value for _, value in every)
    assert "canary" not in {item.name for item in policy_items(d)}


def test_none_mode_and_bad_mode() -> None:
    tw, _ = make()
    d = tw.acquire("acct", "geocode")
    assert ratelimit_fields(d, mode="none") == []
    with pytest.raises(ValueError, match="mode"):
        ratelimit_fields(d, mode="some")  # type: ignore[arg-type]


# ------------------------------------------------------------------ t for a rate


def test_rate_t_is_full_refill_while_units_remain_and_next_unit_at_zero() -> None:
    tw, clock = make()
    # The "slow" plan: 6/minute, burst 3 -> one unit every 10 s, w = 30.
    tw.assign("drip", "slow")
    d = tw.acquire("drip", "geocode")
    policy, limits = parsed_fields(d)
    assert policy["drip"] == {"q": 3, "w": 30}
    assert limits["drip"] == {"r": 2, "t": 10}  # whole again in 10 s
    tw.acquire("drip", "geocode")
    d = tw.acquire("drip", "geocode")
    _, limits = parsed_fields(d)
    assert d.limit("drip").reset_after == 30.0
    assert limits["drip"] == {"r": 0, "t": 10}  # empty: the next unit drips back in 10 s
    clock.advance(4.5)
    d = tw.acquire("drip", "geocode")
    assert not d.allowed
    _, limits = parsed_fields(d)
    assert d.limit("drip").retry_after == pytest.approx(5.5)
    assert limits["drip"] == {"r": 0, "t": 6}
    assert retry_after_field(d) == ("Retry-After", "6")


def test_denied_rate_with_units_left_has_t_of_its_own_wait() -> None:
    tw, _ = make()
    for _ in range(7):
        tw.acquire("acct", "geocode")
    d = tw.acquire("acct", "search")  # costs 5, only 3 left in the burst
    assert not d.allowed
    assert d.violated == ("burst",)
    burst = d.limit("burst")
    _, limits = parsed_fields(d)
    assert limits["burst"]["r"] == 3
    assert limits["burst"]["t"] == ceil_s(burst.retry_after or 0) == 1  # 0.4 s for 2 more
    assert ceil_s(burst.reset_after) == 2  # the full refill would overstate the wait


# ------------------------------------------------------------------ closest


def test_closest_is_the_smallest_remaining_ratio() -> None:
    tw, _ = make()
    d = tw.acquire("acct", "geocode")
    # burst 9/10, hourly 999/1000, spend 0.999/1.00: burst is closest.
    policy, limits = parsed_fields(d, "closest")
    assert list(policy) == ["burst"]
    assert limits["burst"] == {"r": 9, "t": 1}
    # The "wide" plan after one search (cost 5, 0.01 USD): burst 995/1000 and hourly 995/1000
    # tie, spend 9.99/10.00 is further away; the tie goes to the later reset: hourly.
    tw.assign("w", "wide")
    d = tw.acquire("w", "search")
    policy, limits = parsed_fields(d, "closest")
    assert list(policy) == ["hourly"]
    assert limits["hourly"] == {"r": 995, "t": 2800}
    _, every = parsed_fields(d)
    assert every["burst"] == {"r": 995, "t": 1}
    assert every["spend"] == {"r": 9_990_000, "t": 6400}
    assert fields(legacy_fields(d)) == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "995",
        "X-RateLimit-Reset": "2800",
    }


def test_closest_tie_goes_to_the_largest_t() -> None:
    tw, _ = make()
    tw.assign("t", "ties")
    d = tw.acquire("t", "search")  # 5 of 10 in both: same ratio
    _, limits = parsed_fields(d)
    assert limits["minute"]["r"] == limits["hour"]["r"] == 5
    assert limits["minute"]["t"] < limits["hour"]["t"]
    policy, _ = parsed_fields(d, "closest")
    assert list(policy) == ["hour"]


# ------------------------------------------------------------------ Retry-After, 429


def test_no_retry_after_when_allowed() -> None:
    tw, _ = make()
    d = tw.acquire("acct", "geocode")
    assert d.allowed
    assert retry_after_field(d) is None
    with pytest.raises(ValueError, match="allowed"):
        problem_for(d)


def test_burst_denial_429_problem() -> None:
    tw, _ = make()
    for _ in range(10):
        assert tw.acquire("acct", "geocode").allowed
    d = tw.acquire("acct", "geocode")
    assert not d.allowed
    status, headers, body = problem_for(d, instance="/v1/geocode")
    assert status == 429
    h = fields(headers)
    assert h["Content-Type"] == "application/problem+json"
    assert h["Cache-Control"] == "no-store"
    assert h["Retry-After"] == "1" == str(ceil_s(d.retry_after or 0))
    doc = json.loads(body)
    assert doc == {
        "type": QUOTA_EXCEEDED,
        "title": "Quota exceeded",
        "status": 429,
        "detail": 'Limit "burst" is exhausted; retry in 1 second.',
        "instance": "/v1/geocode",
        "violated-policies": ["burst"],
    }
    assert body.startswith(f'{{"type":"{QUOTA_EXCEEDED}","title":"Quota exceeded",'.encode())


def test_retry_after_never_earlier_than_any_violated_t() -> None:
    tw, _ = make()
    tw.assign("x", "tight")
    for _ in range(3):
        assert tw.acquire("x", "geocode").allowed
    d = tw.acquire("x", "geocode")
    assert d.violated == ("hourly",)
    _, limits = parsed_fields(d)
    retry = retry_after_field(d)
    assert retry is not None
    assert int(retry[1]) == limits["hourly"]["t"] == 2800
    status, _, body = problem_for(d)
    assert status == 429
    assert json.loads(body)["violated-policies"] == ["hourly"]


def test_several_violated_limits_are_all_named_and_retry_after_covers_them() -> None:
    policy = {
        **POLICY,
        "plans": {
            **POLICY["plans"],
            "tight": {
                "limits": [
                    {"name": "rps", "rate": "1/s"},
                    {"name": "hourly", "quota": "1/hour"},
                ]
            },
        },
    }
    tw, _ = make(policy)
    tw.assign("x", "tight")
    assert tw.acquire("x", "geocode").allowed
    d = tw.acquire("x", "geocode")
    assert set(d.violated) == {"rps", "hourly"}
    _, limits = parsed_fields(d)
    violated_t = [limits[name]["t"] for name in d.violated]
    retry = retry_after_field(d)
    assert retry is not None
    assert int(retry[1]) >= max(violated_t)
    assert int(retry[1]) == 2800
    doc = json.loads(problem_for(d)[2])
    assert doc["violated-policies"] == ["rps", "hourly"]
    assert '"rps", "hourly"' in doc["detail"]
    assert "2800 seconds" in doc["detail"]


def test_a_denial_that_can_never_pass_has_no_retry_after() -> None:
    tw, _ = make()
    d = tw.acquire("acct", "geocode", cost=11)  # more than the burst of 10
    assert not d.allowed
    assert d.retry_after is None
    assert retry_after_field(d) is None
    status, headers, body = problem_for(d)
    assert status == 429
    assert "Retry-After" not in fields(headers)
    doc = json.loads(body)
    assert doc["violated-policies"] == ["burst"]
    assert "never" in doc["detail"]
    # The fields still parse, and nothing is negative.
    _, limits = parsed_fields(d)
    assert limits["burst"] == {"r": 10, "t": 0}


# ------------------------------------------------------------------ degraded: 503


def _closed_policy() -> dict[str, Any]:
    return {
        **POLICY,
        "store": {"timeout_ms": 50, "on_error": "closed"},
    }


def test_degraded_closed_denial_is_503_with_retry_after() -> None:
    tw, clock = make(_closed_policy())
    step = tw.engine.consume("acct", "geocode", None, None, ACQUIRE)
    d = degraded(step, "redis: connection refused at 10.1.2.3", 2.5, clock())
    assert d.degraded
    assert not d.allowed
    assert ratelimit_fields(d) == []
    assert legacy_fields(d) == []
    assert retry_after_field(d) == ("Retry-After", "3")
    status, headers, body = problem_for(d)
    assert status == 503
    h = fields(headers)
    assert h["Retry-After"] == "3"
    assert h["Cache-Control"] == "no-store"
    assert h["Content-Type"] == "application/problem+json"
    doc = json.loads(body)
    assert doc["type"] == TEMPORARY_REDUCED_CAPACITY
    assert doc["title"] == "Service temporarily unavailable"
    assert doc["status"] == 503
    assert "3 seconds" in doc["detail"]
    assert "10.1.2.3" not in body.decode()  # the internal reason is not sent


def test_degraded_open_decision_gives_no_fields() -> None:
    tw, clock = make()  # on_error defaults to open
    step = tw.engine.consume("acct", "geocode", None, None, ACQUIRE)
    d = degraded(step, "store down", 2.5, clock())
    assert d.degraded
    assert d.allowed
    assert ratelimit_fields(d) == []
    assert ratelimit_fields(d, mode="closest") == []
    assert retry_after_field(d) is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_store_failure_fail_closed_gives_503() -> None:
    pytest.importorskip("redis")
    policy = _closed_policy()
    tw = tollway.Tollway(policy, store=f"redis://127.0.0.1:{_closed_port()}/0")
    d = tw.acquire("acct", "geocode")
    assert d.degraded
    assert not d.allowed
    status, headers, _ = problem_for(d)
    assert status == 503
    retry = fields(headers)["Retry-After"]
    assert int(retry) >= 1
    assert ratelimit_fields(d) == []


# ------------------------------------------------------------------ sf-strings, problem()


@pytest.mark.parametrize(
    "name", ["a", "v1.search-daily", "a_b.c-d", 'say "hi"', "back\\slash", "x" * 64, ""]
)
def test_sf_string_round_trips(name: str) -> None:
    value = f"{sf_string(name)};q=1"
    assert http_sf.parse(value.encode(), tltype="list") == [(name, {"q": 1})]


def test_sf_string_refuses_what_it_cannot_carry() -> None:
    for bad in ("é", "tab\there", "new\nline", "\x7f"):
        with pytest.raises(ValueError, match="sf-string"):
            sf_string(bad)


def test_problem_for_other_errors() -> None:
    extensions: dict[str, Any] = {
        "balance": Decimal("12.50"),
        "doc-url": "https://example.test/keys",
    }
    status, headers, body = problem(
        401,
        "Unknown API key",
        "The API key is unknown or revoked.",
        instance="/v1/geocode",
        **extensions,
    )
    assert status == 401
    assert fields(headers)["Content-Type"] == "application/problem+json"
    assert "Retry-After" not in fields(headers)
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Unknown API key",
        "status": 401,
        "detail": "The API key is unknown or revoked.",
        "instance": "/v1/geocode",
        "balance": "12.50",
        "doc-url": "https://example.test/keys",
    }
    assert body.startswith(b'{"type":"about:blank","title":"Unknown API key","status":401,')
    status, _, body = problem(400, "Bad request", type="https://example.test/bad")
    assert status == 400
    assert json.loads(body) == {
        "type": "https://example.test/bad",
        "title": "Bad request",
        "status": 400,
    }
    with pytest.raises(ValueError, match="standard members"):
        clash: dict[str, Any] = {"status": 200}
        problem(400, "Bad request", **clash)
    with pytest.raises(ValueError, match="error status"):
        problem(200, "OK")


# ------------------------------------------------------------------ property


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["geocode", "search"]),
            st.integers(min_value=1, max_value=12),
            st.floats(min_value=0, max_value=4000, allow_nan=False),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_fields_stay_parseable_and_consistent(steps: list[tuple[str, int, float]]) -> None:
    tw, clock = make()
    for operation, cost, advance in steps:
        clock.advance(advance)
        d = tw.acquire("acct", operation, cost=cost)
        policy, limits = parsed_fields(d)
        states = {expected_name(s): s for s in d.limits if not s.shadow}
        assert set(policy) == set(states)
        for name, params in policy.items():
            state, live = states[name], limits[name]
            assert isinstance(params["q"], int) and params["q"] >= 0
            assert isinstance(params["w"], int) and params["w"] >= 1
            assert isinstance(live["r"], int) and 0 <= live["r"] <= params["q"]
            assert isinstance(live["t"], int) and live["t"] >= 0
            scale = 1_000_000 if state.kind == "budget" else 1
            assert params["q"] == state.limit * scale
            assert live["r"] == state.remaining * scale
            if state.kind != "rate":
                assert live["t"] == ceil_s(state.reset_after)
            assert live["t"] <= ceil_s(state.reset_after)
        closest = parsed_fields(d, "closest")[1]
        (name,) = closest
        ratio = closest[name]["r"] / policy[name]["q"]
        assert all(ratio <= limits[n]["r"] / policy[n]["q"] for n in policy)
        retry = retry_after_field(d)
        if d.allowed or d.retry_after is None:
            assert retry is None
        else:
            assert retry is not None
            wait = int(retry[1])
            assert wait >= 1
            assert wait >= ceil_s(d.retry_after)
            assert all(wait >= limits[expected_name(d.limit(v))]["t"] for v in d.violated)
            assert problem_for(d)[0] == 429
