"""``[[hooks]]`` in the policy: the frozen `HookConfig`, every issue with its key path, and the
JSON Schema agreeing with `load`."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tollway.errors import PolicyError, PolicyIssue
from tollway.policy import load, loads, policy_schema
from tollway.policy.model import HookConfig

REDIS = {"store": {"url": "redis://127.0.0.1:6379/0"}}


def issues(document: dict[str, Any]) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        load(document)
    return list(info.value.issues)


def issue_at(document: dict[str, Any], path: str) -> str:
    found = [issue.message for issue in issues(document) if issue.path == path]
    assert len(found) == 1, (path, issues(document))
    return found[0]


def hooks(*items: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {"hooks": list(items), **sections}


def url_hook(**kw: Any) -> dict[str, Any]:
    return {"name": "billing", "url": "https://billing.example.com/h", "secret_env": "S", **kw}


def test_hooks_parse_into_frozen_configs_with_defaults() -> None:
    policy = loads(
        """
[store]
url = "redis://127.0.0.1:6379/0"

[[hooks]]
name = "billing"
url = "https://billing.example.com/tollway"
secret_env = "BILLING_HOOK_SECRET"

[[hooks]]
name = "alerts"
callable = "myapp.alerts:on_event"
events = ["tollway.limit.threshold", "tollway.limit.exceeded"]
schedule = [0, 5, 60]
timeout_ms = 2000

[[hooks]]
name = "stream"
stream = "tw:billing"
aggregate = "hour"
batch = 50
"""
    )
    billing, alerts, stream = policy.hooks
    assert billing == HookConfig(
        name="billing",
        kind="url",
        path="hooks[0]",
        url="https://billing.example.com/tollway",
        secret_env="BILLING_HOOK_SECRET",
    )
    assert (billing.events, billing.aggregate, billing.timeout_ms, billing.batch) == (
        ("tollway.usage.recorded",), "none", 5_000, 1,
    )  # fmt: skip
    assert billing.schedule is None
    assert alerts.kind == "callable" and alerts.callable == "myapp.alerts:on_event"
    assert alerts.events == ("tollway.limit.threshold", "tollway.limit.exceeded")
    assert alerts.schedule == (0.0, 5.0, 60.0) and alerts.timeout_ms == 2000
    assert stream.stream_url == "redis://127.0.0.1:6379/0"  # the store's
    assert (stream.aggregate, stream.batch) == ("hour", 50)
    with pytest.raises(AttributeError):
        billing.url = "x"  # type: ignore[misc]
    assert load({}).hooks == ()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://billing.example.com/h", 'its scheme is "ftp"'),
        ("billing.example.com/h", "it has no scheme"),
        ("https:///h", "has no host"),
        ("https://u:p@billing.example.com/h", "credentials"),
        ("https://billing.example.com/a b", "spaces"),
    ],
)
def test_a_url_that_is_not_http_is_refused_naming_the_key(url: str, words: str) -> None:
    message = issue_at(hooks(url_hook(url=url)), "hooks[0].url")
    assert words in message
    assert "expected an http:// or https:// URL" in message or "credentials" in message
    if "credentials" not in message:
        assert url in message


def test_unknown_event_types_are_refused_with_a_suggestion() -> None:
    found = issues(hooks(url_hook(events=["tollway.usage.recorded", "tollway.usage.recordd", 3])))
    assert [i.path for i in found] == ["hooks[0].events[1]", "hooks[0].events[2]"]
    assert 'did you mean "tollway.usage.recorded"' in found[0].message
    assert "expected one of" in found[1].message
    assert "listed twice" in issue_at(
        hooks(url_hook(events=["tollway.limit.exceeded"] * 2)), "hooks[0].events[1]"
    )
    assert "non-empty" in issue_at(hooks(url_hook(events=[])), "hooks[0].events")


def test_duplicate_hook_names_are_refused() -> None:
    message = issue_at(hooks(url_hook(), {"name": "billing", "callable": "a.b:c"}), "hooks[1].name")
    assert message == (
        '"billing" is already the name of hooks[0]; expected a name unique among the hooks'
    )


def test_secrets_never_go_in_the_file() -> None:
    message = issue_at(hooks(url_hook(secret_env="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
                       "hooks[0].secret_env")  # fmt: skip
    assert "looks like a secret" in message and "MfKQ" not in message
    missing = {"name": "b", "url": "https://x.example/h"}
    assert 'missing key "secret_env"' in issue_at(hooks(missing), "hooks[0]")
    assert "environment variable name" in issue_at(
        hooks(url_hook(secret_env="1BAD")), "hooks[0].secret_env"
    )
    assert "only applies to a url hook" in issue_at(
        hooks({"name": "c", "callable": "a:b", "secret_env": "S"}), "hooks[0].secret_env"
    )


def test_every_other_fault_is_collected_with_its_path() -> None:
    document = hooks(
        {"url": "https://x.example/h", "callable": "a:b", "secret_env": "S"},
        {"name": "s", "stream": "tw:x"},
        {"name": "c", "callable": "not a callable"},
        {"name": "d", "callable": "a:b", "aggregate": "day", "timeout_ms": 0, "batch": 0,
         "schedule": [0, -1, "5"], "colour": "red"},
        "not a table",
    )  # fmt: skip
    found = {(i.path, i.message.split(";")[0]) for i in issues(document)}
    paths = {path for path, _ in found}
    assert paths == {
        "hooks[0]",
        "hooks[1]",
        "hooks[2].callable",
        "hooks[3].aggregate",
        "hooks[3].timeout_ms",
        "hooks[3].batch",
        "hooks[3].schedule[1]",
        "hooks[3].schedule[2]",
        "hooks[3].colour",
        "hooks[4]",
    }
    text = "\n".join(str(i) for i in issues(document))
    assert "expected exactly one of url, callable, stream; got url and callable" in text
    assert 'missing key "name"' in text
    assert 'the [store] url "memory://" is not a Redis one' in text
    assert '"package.module:function"' in text
    assert "Traceback" not in text
    assert issues(hooks({"name": "s", "stream": "x", "stream_url": "memory://"}))[0].path == (
        "hooks[0].stream_url"
    )
    assert load(hooks({"name": "s", "stream": "x"}, **REDIS)).hooks[0].stream_url is not None
    assert "expected a list" in issue_at({"hooks": {"name": "x"}}, "hooks")


def test_the_schema_accepts_what_load_accepts_and_refuses_the_rest() -> None:
    validator = jsonschema.Draft202012Validator(policy_schema())
    good = hooks(url_hook(events=["tollway.limit.exceeded"], schedule=[0, 5], batch=10),
                 {"name": "s", "stream": "x", "aggregate": "minute"}, **REDIS)  # fmt: skip
    load(good)
    assert list(validator.iter_errors(good)) == []
    for bad in (
        hooks({"name": "b", "url": "https://x.example/h"}),  # no secret_env
        hooks(url_hook(url="ftp://x.example/h")),
        hooks(url_hook(events=["tollway.nope"])),
        hooks(url_hook(aggregate="day")),
        hooks({"name": "x", "url": "https://x.example/h", "callable": "a:b", "secret_env": "S"}),
    ):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(PolicyError):
            load(bad)
