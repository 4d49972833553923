"""tollway.http.routes: requests to operations, by method and path pattern."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.errors import ConfigurationError, PolicyError
from tollway.http.routes import EXEMPT, MAX_PATH, EndpointMap, Match
from tollway.policy import Operation, Policy, loads


def policy(**endpoints: tuple[str, ...] | list[str]) -> Policy:
    return Policy(
        operations={name: Operation(name=name, endpoints=tuple(e)) for name, e in endpoints.items()}
    )


def op(result: object) -> str | None:
    return result.operation if isinstance(result, Match) else None


DESIGN = policy(
    geocode=["GET /v1/geocode"],
    search=["GET /v1/search", "POST /v1/search/*"],
)


def test_design_example() -> None:
    routes = EndpointMap.from_policy(DESIGN)
    assert routes.match("GET", "/v1/geocode") == Match("geocode", "GET /v1/geocode")
    assert routes.match("GET", "/v1/search") == Match("search", "GET /v1/search")
    assert routes.match("POST", "/v1/search/x/y") == Match("search", "POST /v1/search/*")
    assert routes.match("POST", "/v1/search/x") == Match("search", "POST /v1/search/*")
    assert routes.match("POST", "/v1/geocode") is None
    assert routes.match("GET", "/v1/search/x") is None
    assert routes.match("GET", "/v1/geocodes") is None
    assert routes.match("GET", "/v1") is None


def test_from_a_loaded_policy() -> None:
    loaded = loads(
        """
        [defaults]
        plan = "free"
        [operations]
        geocode = { cost = 1, endpoints = ["GET /v1/geocode"] }
        search = { cost = 5, endpoints = ["GET /v1/search", "POST /v1/search/*"] }
        [plans.free]
        limits = [{ rate = "5/s" }]
        """
    )
    routes = EndpointMap.from_policy(loaded)
    assert op(routes.match("POST", "/v1/search/batch")) == "search"
    assert op(routes.match("GET", "/v1/geocode")) == "geocode"


def test_wildcard_does_not_match_its_own_prefix() -> None:
    routes = EndpointMap.from_policy(policy(search=["POST /v1/search/*"]))
    assert routes.match("POST", "/v1/search") is None
    assert routes.match("POST", "/v1/search/") is None  # the trailing slash variant of the same
    assert routes.match("POST", "/v1/searches") is None
    assert op(routes.match("POST", "/v1/search/a")) == "search"


def test_root_wildcard_matches_everything_but_root() -> None:
    routes = EndpointMap.from_policy(policy(everything=["* /*"]))
    assert op(routes.match("DELETE", "/a/b/c")) == "everything"
    assert op(routes.match("GET", "/x")) == "everything"
    assert routes.match("GET", "/") is None


def test_params_match_one_segment() -> None:
    routes = EndpointMap.from_policy(policy(jobs=["GET /v1/users/{id}/jobs"]))
    assert routes.match("GET", "/v1/users/42/jobs") == Match("jobs", "GET /v1/users/{id}/jobs")
    assert routes.match("GET", "/v1/users//jobs") is None
    assert routes.match("GET", "/v1/users/4/2/jobs") is None
    assert routes.match("GET", "/v1/users/42/jobs/x") is None
    assert op(routes.match("GET", "/v1/users/42/jobs/")) == "jobs"


def test_precedence_exact_then_params_then_wildcards() -> None:
    routes = EndpointMap.from_policy(
        policy(
            exact=["GET /v1/users/me/jobs"],
            param=["GET /v1/users/{id}/jobs"],
            deep=["GET /v1/users/{id}/*"],
            shallow=["GET /v1/*"],
        )
    )
    assert op(routes.match("GET", "/v1/users/me/jobs")) == "exact"
    assert op(routes.match("GET", "/v1/users/7/jobs")) == "param"
    assert op(routes.match("GET", "/v1/users/7/other")) == "deep"
    assert op(routes.match("GET", "/v1/users/7/jobs/1")) == "deep"
    assert op(routes.match("GET", "/v1/users/7")) == "shallow"
    assert op(routes.match("GET", "/v1/x")) == "shallow"


def test_params_beat_wildcards_even_when_the_wildcard_is_more_literal() -> None:
    routes = EndpointMap.from_policy(policy(param=["GET /v1/{x}/jobs"], wild=["GET /v1/search/*"]))
    assert op(routes.match("GET", "/v1/search/jobs")) == "param"
    assert op(routes.match("GET", "/v1/search/other")) == "wild"


def test_longer_wildcards_win_regardless_of_declaration_order() -> None:
    for order in (("short", "long"), ("long", "short")):
        patterns = {"short": ["* /v1/*"], "long": ["* /v1/{x}/b/*"]}
        routes = EndpointMap.from_policy(policy(**{name: patterns[name] for name in order}))
        assert op(routes.match("GET", "/v1/a/b/c")) == "long"
        assert op(routes.match("GET", "/v1/a/c/c")) == "short"


def test_leftmost_literal_wins_between_params() -> None:
    routes = EndpointMap.from_policy(policy(left=["GET /v1/x/{b}"], right=["GET /v1/{a}/x"]))
    assert op(routes.match("GET", "/v1/x/x")) == "left"
    assert op(routes.match("GET", "/v1/y/x")) == "right"


def test_method_specific_beats_any_method_on_the_same_pattern() -> None:
    routes = EndpointMap.from_policy(policy(reads=["GET /v1/items"], other=["* /v1/items"]))
    assert op(routes.match("GET", "/v1/items")) == "reads"
    assert op(routes.match("POST", "/v1/items")) == "other"
    assert op(routes.match("PATCH", "/v1/items")) == "other"
    assert op(routes.match("M-SEARCH", "/v1/items")) == "other"


def test_the_path_decides_before_the_method() -> None:
    routes = EndpointMap.from_policy(policy(any_exact=["* /v1/me"], get_param=["GET /v1/{id}"]))
    assert op(routes.match("GET", "/v1/me")) == "any_exact"
    assert op(routes.match("GET", "/v1/42")) == "get_param"


def test_head_matches_get_unless_head_is_listed() -> None:
    routes = EndpointMap.from_policy(
        policy(reads=["GET /v1/a", "GET /v1/b", "GET /v1/c/*"], heads=["HEAD /v1/b"])
    )
    assert routes.match("HEAD", "/v1/a") == Match("reads", "GET /v1/a")
    assert op(routes.match("HEAD", "/v1/b")) == "heads"
    assert op(routes.match("GET", "/v1/b")) == "reads"
    assert op(routes.match("HEAD", "/v1/c/d")) == "reads"
    only_head = EndpointMap.from_policy(policy(h=["HEAD /x"]))
    assert only_head.match("GET", "/x") is None


def test_methods_are_case_insensitive() -> None:
    routes = EndpointMap.from_policy(DESIGN)
    assert op(routes.match("get", "/v1/geocode")) == "geocode"
    assert op(routes.match("Post", "/v1/search/a")) == "search"
    assert op(routes.match("head", "/v1/geocode")) == "geocode"


def test_trailing_slash_both_ways_and_nothing_else_normalized() -> None:
    routes = EndpointMap.from_policy(policy(a=["GET /v1/geocode"], b=["GET /v1/trail/"]))
    assert op(routes.match("GET", "/v1/geocode/")) == "a"
    assert op(routes.match("GET", "/v1/trail")) == "b"
    assert op(routes.match("GET", "/v1/trail/")) == "b"
    assert routes.match("GET", "/v1/geocode//") is None
    assert routes.match("GET", "/v1//geocode") is None
    assert routes.match("GET", "/v1/%67eocode") is None  # no percent-decoding
    assert routes.match("GET", "/v1/geocode?q=1") is None  # the path, never the query
    assert routes.match("GET", "/v1/./geocode") is None


def test_literal_dots_and_regex_characters_are_literal() -> None:
    routes = EndpointMap.from_policy(policy(a=["GET /v1/a.b+c(d)/{x}"]))
    assert op(routes.match("GET", "/v1/a.b+c(d)/1")) == "a"
    assert routes.match("GET", "/v1/aXb+c(d)/1") is None


def test_exempt_paths_win_over_every_endpoint() -> None:
    routes = EndpointMap.from_policy(
        policy(everything=["* /*"], geocode=["GET /v1/geocode"]),
        exempt=["/health", "GET /metrics", "/internal/*", "/v1/geocode"],
    )
    assert routes.match("GET", "/health") is EXEMPT
    assert routes.match("POST", "/health/") is EXEMPT
    assert routes.match("GET", "/metrics") is EXEMPT
    assert routes.match("HEAD", "/metrics") is EXEMPT
    assert op(routes.match("POST", "/metrics")) == "everything"
    assert routes.match("PUT", "/internal/a/b") is EXEMPT
    assert routes.match("GET", "/v1/geocode") is EXEMPT
    assert op(routes.match("GET", "/healthz")) == "everything"
    assert repr(EXEMPT) == "EXEMPT"


def test_overrides_replace_add_and_exempt() -> None:
    routes = EndpointMap.from_policy(
        DESIGN,
        overrides={
            "POST /v1/search/*": "geocode",
            "GET /v1/search/": None,
            "DELETE /v1/geocode": "geocode",
        },
    )
    assert routes.match("POST", "/v1/search/a") == Match("geocode", "POST /v1/search/*")
    assert routes.match("GET", "/v1/search") is EXEMPT
    assert routes.match("DELETE", "/v1/geocode") == Match("geocode", "DELETE /v1/geocode")
    assert op(routes.match("GET", "/v1/geocode")) == "geocode"


def test_bad_overrides_and_exempts_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match=r'overrides\["GET /x"\]: "nope" is not an'):
        EndpointMap.from_policy(DESIGN, overrides={"GET /x": "nope"})
    with pytest.raises(ConfigurationError, match="is not an endpoint"):
        EndpointMap.from_policy(DESIGN, overrides={"get /x": "geocode"})
    with pytest.raises(ConfigurationError, match=r"exempt\[1\]"):
        EndpointMap.from_policy(DESIGN, exempt=["/ok", "health"])
    with pytest.raises(ConfigurationError, match=r"exempt\[0\]: expected a string"):
        EndpointMap.from_policy(DESIGN, exempt=[42])  # type: ignore[list-item]


def test_a_single_exempt_string_is_one_path() -> None:
    routes = EndpointMap.from_policy(DESIGN, exempt="/health")
    assert routes.match("GET", "/health") is EXEMPT


def test_two_operations_claiming_one_endpoint_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as caught:
        EndpointMap.from_policy(
            policy(geocode=["GET /v1/geocode"], search=["GET /v1/search", "GET /v1/geocode/"])
        )
    (issue,) = caught.value.issues
    assert issue.path == "operations.search.endpoints[1]"
    assert "operations.geocode.endpoints[0]" in issue.message
    assert '"geocode"' in issue.message
    assert '"search"' in issue.message
    assert "operations.search.endpoints[1]: " in str(caught.value)


def test_param_names_do_not_make_patterns_different() -> None:
    with pytest.raises(PolicyError) as caught:
        EndpointMap.from_policy(policy(a=["GET /u/{id}"], b=["GET /u/{user}"]))
    assert caught.value.issues[0].path == "operations.b.endpoints[0]"


def test_same_operation_twice_and_different_methods_are_fine() -> None:
    routes = EndpointMap.from_policy(
        policy(a=["GET /x", "GET /x/"], b=["POST /x", "* /x"], c=["HEAD /x"])
    )
    assert op(routes.match("GET", "/x")) == "a"
    assert op(routes.match("HEAD", "/x")) == "c"
    assert op(routes.match("PUT", "/x")) == "b"


def test_every_conflict_and_bad_pattern_is_reported_at_once() -> None:
    bad = policy(
        a=["GET /x", "GET /v1/*/jobs", "GET /v1/file.{ext}", "GET /v1/{}"],
        b=["GET /x", "BAD"],
    )
    with pytest.raises(PolicyError) as caught:
        EndpointMap.from_policy(bad)
    paths = [issue.path for issue in caught.value.issues]
    assert paths == [
        "operations.a.endpoints[1]",
        "operations.a.endpoints[2]",
        "operations.a.endpoints[3]",
        "operations.b.endpoints[0]",
        "operations.b.endpoints[1]",
    ]
    assert '"*" may only be the last segment' in caught.value.issues[0].message


def test_policy_source_is_named() -> None:
    bad = Policy(
        operations={
            "a": Operation(name="a", endpoints=("GET /x",)),
            "b": Operation(name="b", endpoints=("GET /x",)),
        },
        source="policy.toml",
    )
    with pytest.raises(PolicyError, match=r"policy\.toml: operations\.b\.endpoints\[0\]"):
        EndpointMap.from_policy(bad)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (None, "/v1/geocode"),
        ("GET", None),
        (b"GET", "/v1/geocode"),
        ("GET", b"/v1/geocode"),
        (1, 2),
        ("", "/v1/geocode"),
        ("GET", ""),
        ("GET", "v1/geocode"),
        ("GET", "*"),
        ("GET", "http://example.com/v1/geocode"),
        ("GE T", "/v1/geocode"),
        ("GET\r\n", "/v1/geocode"),
        ("G\x00ET", "/v1/geocode"),
        ("GÉT", "/v1/geocode"),
        ("G" * 33, "/v1/geocode"),
        ("GET", "/v1/geocode" + "/" * MAX_PATH),
        ("GET", "/" + "a" * MAX_PATH),
    ],
)
def test_odd_input_gives_none(method: object, path: object) -> None:
    routes = EndpointMap.from_policy(policy(everything=["* /*"], geocode=["GET /v1/geocode"]))
    assert routes.match(method, path) is None  # type: ignore[arg-type]


def test_a_path_at_the_size_limit_still_matches() -> None:
    routes = EndpointMap.from_policy(policy(everything=["* /*"]))
    assert op(routes.match("GET", "/" + "a" * (MAX_PATH - 1))) == "everything"


def test_odd_characters_in_paths_are_just_characters() -> None:
    routes = EndpointMap.from_policy(policy(jobs=["GET /u/{id}/jobs"], rest=["GET /w/*"]))
    assert op(routes.match("GET", "/u/\n/jobs")) == "jobs"
    assert op(routes.match("GET", "/u/é\x00/jobs")) == "jobs"
    assert op(routes.match("GET", "/w/\n\n")) == "rest"


def test_empty_policy_matches_nothing() -> None:
    routes = EndpointMap.from_policy(Policy())
    assert routes.match("GET", "/") is None


ROUTES = EndpointMap.from_policy(
    policy(
        geocode=["GET /v1/geocode"],
        search=["GET /v1/search", "POST /v1/search/*"],
        jobs=["* /v1/users/{id}/jobs"],
        rest=["DELETE /*"],
    ),
    exempt=["/health"],
)


@given(method=st.text(max_size=40), path=st.text(max_size=200))
def test_match_never_raises(method: str, path: str) -> None:
    result = ROUTES.match(method, path)
    assert result is None or result is EXEMPT or isinstance(result, Match)


@given(
    method=st.sampled_from(["GET", "get", "POST", "DELETE", "HEAD", "PUT"]),
    segments=st.lists(st.text(alphabet="abv1{}*/%.?#é\n", max_size=6), max_size=6),
)
def test_match_never_raises_on_path_like_input(method: str, segments: list[str]) -> None:
    result = ROUTES.match(method, "/" + "/".join(segments))
    assert result is None or result is EXEMPT or isinstance(result, Match)
