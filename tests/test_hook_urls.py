"""Webhook URL rules (no SSRF through a hook URL, `tollway.netrules`): https except to
loopback unless ``allow_http``; redirects never followed; private, link-local, unique-local,
multicast and unspecified addresses refused unless ``allow_private``, checked on the address
each attempt resolves to. Real receivers on 127.0.0.1; the refused addresses are refused
before any connection, so nothing is sent to them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tollway.errors import ConfigurationError, PolicyError
from tollway.metering.cloudevents import USAGE_RECORDED, make_event
from tollway.metering.delivery import (
    DeadLetter,
    Delivered,
    Deliverer,
    RetrySchedule,
    WebhookSink,
    check_sink_url,
)
from tollway.metering.hooks import Dispatcher
from tollway.metering.httpattempt import AttemptGuard, Target, post
from tollway.metering.ledger import open_ledger
from tollway.metering.webhooks import generate_secret
from tollway.netrules import address_refusal, is_loopback_host, scheme_refusal
from tollway.policy.model import HookConfig
from tollway.policy.parse import build_policy

SECRET = generate_secret()


class Receiver:
    """A real HTTP server on 127.0.0.1 answering ``status`` (with ``headers``) and recording
    every request's path and Host header."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                owner.requests.append((self.path, self.headers.get("Host") or ""))
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def deliver(sink: WebhookSink) -> Delivered | DeadLetter:
    clock = Clock()
    schedule = RetrySchedule((0, 5, 60), jitter=0.0)
    worker = Deliverer(sink, schedule=schedule, timeout=2.0, clock=clock, sleep=clock.sleep)
    event = make_event(
        USAGE_RECORDED,
        {"n": 1},
        source="/t",
        id="evt_1",
        subject="acct",
        time=datetime(2025, 1, 1, tzinfo=timezone.utc),
    )
    return worker.deliver(event)


# ---------------------------------------------------------------- the rules themselves

REFUSED = {
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "shared",
    "169.254.169.254": "link-local",  # the cloud metadata service
    "fe80::1": "link-local",
    "fd00::1": "unique-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "::ffff:10.0.0.1": "private",  # an IPv4-mapped address is what it maps to
    "240.0.0.1": "reserved",
}


@pytest.mark.parametrize(("address", "kind"), sorted(REFUSED.items()))
def test_addresses_inside_the_network_are_refused_unless_allowed(address: str, kind: str) -> None:
    why = address_refusal(address, allow_private=False)
    assert why is not None and kind in why
    assert address_refusal(address, allow_private=True) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "93.184.216.34", "2606::1"])
def test_loopback_and_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(address, allow_private=False) is None


def test_http_only_to_loopback_unless_allowed() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST.", "[::1]", "::1"):
        assert is_loopback_host(host)
        assert scheme_refusal("http", host, allow_http=False) is None
    for host in ("example.com", "10.0.0.1", "localhost.example.com", "2130706433"):
        assert scheme_refusal("http", host, allow_http=False) is not None
        assert scheme_refusal("http", host, allow_http=True) is None
    assert scheme_refusal("https", "example.com", allow_http=False) is None


# ---------------------------------------------------------------- the policy


def hooks_policy(url: str, **extra: Any) -> dict[str, Any]:
    return {"hooks": [{"name": "b", "url": url, "secret_env": "S", **extra}]}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://billing.example.com/h", "allow_http = true"),
        ("https://10.0.0.7/h", "10.0.0.7 is a private address"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://[fd00::1]/h", "unique-local"),
        ("https://[::ffff:192.168.0.1]/h", "private"),
        ("https://224.0.0.1/h", "multicast"),
        ("https://0.0.0.0/h", "unspecified"),
    ],
)
def test_the_policy_refuses_a_hook_url_naming_the_key(url: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        build_policy(hooks_policy(url))
    text = str(caught.value)
    assert "hooks[0].url" in text and words in text, text


def test_the_policy_takes_what_the_hook_allows() -> None:
    for url in ("http://127.0.0.1:9/h", "http://localhost/h", "http://[::1]:8/h"):
        assert build_policy(hooks_policy(url)).hooks[0].url == url
    hook = build_policy(hooks_policy("http://billing.example.com/h", allow_http=True)).hooks[0]
    assert hook.allow_http and not hook.allow_private
    hook = build_policy(hooks_policy("https://10.0.0.7/h", allow_private=True)).hooks[0]
    assert hook.allow_private and not hook.allow_http
    # A name is not refused when parsed: it is checked on what it resolves to, at delivery.
    assert build_policy(hooks_policy("https://hooks.internal.example/h")).hooks


def test_allow_keys_only_on_a_url_hook_and_only_booleans() -> None:
    doc = {"hooks": [{"name": "c", "callable": "a:b", "allow_private": True}]}
    with pytest.raises(PolicyError, match=r"hooks\[0\]\.allow_private: only applies to a url"):
        build_policy(doc)
    with pytest.raises(PolicyError, match=r"hooks\[0\]\.allow_http: expected true or false"):
        build_policy(hooks_policy("https://x.example/h", allow_http="yes"))


def test_a_programmatic_sink_follows_the_same_rules() -> None:
    with pytest.raises(ConfigurationError, match="allow_http"):
        WebhookSink("http://billing.example.com/h", SECRET)
    with pytest.raises(ConfigurationError, match="link-local"):
        check_sink_url("https://169.254.169.254/")
    assert WebhookSink("http://billing.example.com/h", SECRET, allow_http=True)
    assert WebhookSink("https://10.0.0.1/h", SECRET, allow_private=True)


def test_a_dispatcher_names_the_hook_of_a_refused_url(tmp_path: Path) -> None:
    hook = HookConfig("b", "url", url="http://billing.example.com/h", secret_env="S")
    with (
        open_ledger(f"sqlite:///{tmp_path / 'l.db'}") as ledger,
        pytest.raises(ConfigurationError, match=r"hooks\[0\]\.url: .*allow_http"),
    ):
        Dispatcher(ledger, [hook], env={"S": SECRET})


# ---------------------------------------------------------------- delivery


def test_a_loopback_receiver_gets_the_message(receiver: Receiver) -> None:
    result = deliver(WebhookSink(receiver.url(), SECRET))
    assert isinstance(result, Delivered)
    assert receiver.requests == [("/hook", f"127.0.0.1:{receiver.port}")]


def test_a_redirect_is_not_followed_even_to_a_loopback_receiver(receiver: Receiver) -> None:
    hop = Receiver(302, {"Location": receiver.url() + "?stolen=1"})
    try:
        result = deliver(WebhookSink(hop.url(), SECRET))
    finally:
        hop.close()
    assert isinstance(result, DeadLetter) and result.reason == "exhausted"
    assert [a.status for a in result.attempts] == [302, 302, 302]
    assert result.attempts[0].error is not None
    assert "not followed" in result.attempts[0].error and "stolen" in result.attempts[0].error
    assert receiver.requests == []  # the target of the redirect never heard of it
    assert len(hop.requests) == 3


def test_a_name_resolving_inside_the_network_is_refused_at_delivery() -> None:
    # ``167772161`` is not an address literal to a URL parser, but the resolver answers it as
    # 10.0.0.1: the check is on the resolved address, before any connection.
    sink = WebhookSink("https://167772161/hook", SECRET)
    result = deliver(sink)
    assert isinstance(result, DeadLetter) and result.reason == "refused"
    assert len(result.attempts) == 1  # no retry can mend it
    error = result.attempts[0].error or ""
    assert "10.0.0.1 is a private address" in error and "allow_private" in error
    assert result.attempts[0].status is None


def test_a_name_resolving_to_loopback_is_delivered_to_the_address_checked(
    receiver: Receiver,
) -> None:
    # 2130706433 resolves to 127.0.0.1 (loopback: allowed); http needs allow_http as the
    # name itself is not loopback. The Host header keeps the name.
    url = f"http://2130706433:{receiver.port}/hook"
    result = deliver(WebhookSink(url, SECRET, allow_http=True))
    assert isinstance(result, Delivered)
    assert receiver.requests == [("/hook", f"2130706433:{receiver.port}")]


def test_refused_addresses_are_never_connected() -> None:
    # 0.0.0.0 would connect to this machine; refused before a socket is made.
    target = Target(host="0", port=9, path="/", https=False)
    result = post(target, b"{}", {}, AttemptGuard(2.0))
    assert result.refused and result.outcome == "failed"
    assert "0.0.0.0 is an unspecified address" in (result.error or "")
    allowed = post(
        Target(host="0", port=9, path="/", https=False, allow_private=True),
        b"{}",
        {},
        AttemptGuard(2.0),
    )
    assert not allowed.refused  # tried, and failed to connect (nothing listens on port 9)
