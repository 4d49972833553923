"""Standard Webhooks signing and at-least-once delivery, against a real HTTP receiver.

The receiver is a stdlib `ThreadingHTTPServer` on 127.0.0.1 whose answers are scripted per
request (500, hang, slow, 410, redirect, Retry-After, then 200). Every request it records is
verified twice: with the `standardwebhooks` package from PyPI and with tollway's `verify`.
Schedules run on a fake clock whose sleep only advances it; the receiver's hangs against a
0.2 s client timeout are the only real waits.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import standardwebhooks

from tollway.errors import (
    ConfigurationError,
    InvalidArgumentError,
    TollwayError,
    WebhookVerificationError,
)
from tollway.metering.cloudevents import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    USAGE_RECORDED,
    decode,
    decode_batch,
    encode,
    make_event,
)
from tollway.metering.delivery import (
    DEFAULT_DELAYS,
    Attempt,
    CallableSink,
    DeadLetter,
    Delivered,
    Deliverer,
    DeliveryState,
    Message,
    RetrySchedule,
    SendResult,
    WebhookSink,
    check_sink_url,
    outcome_of,
)
from tollway.metering.webhooks import (
    WEBHOOK_ID,
    WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP,
    WebhookSecret,
    generate_secret,
    headers_for,
    parse_secret,
    parse_secrets,
    sign,
    verify,
)

OCCURRED = datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc)
CLIENT_TIMEOUT = 0.2
HANG = 1.0  # longer than CLIENT_TIMEOUT; released early when the receiver stops

# The test vector of the standard-webhooks repository's own libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# --------------------------------------------------------------------------- the receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    """Answers for the next requests, in order; then ``default`` for every one after."""

    steps: list[tuple[Any, ...]] = field(default_factory=list)
    default: tuple[Any, ...] = ("status", 200)


class Receiver:
    """A webhook receiver on 127.0.0.1:<free port>. Steps: ``("status", code)``,
    ``("status", code, {header: value})``, ``("hang",)`` (answer after `HANG` s, long after
    the client gave up), ``("slow", seconds)`` (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script = Script()
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    step = (
                        receiver.script.steps.pop(0)
                        if receiver.script.steps
                        else receiver.script.default
                    )
                status, extra = 200, {}
                if step[0] == "hang":
                    receiver.release.wait(HANG)
                elif step[0] == "slow":
                    time.sleep(step[1])
                elif step[0] == "status":
                    status = step[1]
                    extra = step[2] if len(step) > 2 else {}
                payload = f"answer {status}".encode()
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a hang): nothing to answer
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tollway?k=1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, *steps: tuple[Any, ...], default: tuple[Any, ...] = ("status", 200)) -> None:
        with self.lock:
            self.script = Script(list(steps), default)

    def ids(self) -> list[str]:
        return [request.headers["webhook-id"] for request in self.requests]

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


class FakeClock:
    """Unix seconds that move only when `sleep` is called (it never waits)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def event(n: int = 1, **data: Any) -> dict[str, Any]:
    return make_event(
        USAGE_RECORDED,
        {"operation": "geocode", "amount": "0.005", "n": n, **data},
        source="/tollway/test",
        id=f"evt_{n}",
        subject="acct_42",
        time=OCCURRED,
    )


def deliverer(
    sink: Any, clock: FakeClock, schedule: RetrySchedule | None = None, **kwargs: Any
) -> Deliverer:
    return Deliverer(
        sink,
        schedule=schedule or RetrySchedule(jitter=0.0),
        timeout=CLIENT_TIMEOUT,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )


def assert_verifies(request: Received, secret: str) -> None:
    """The request verifies under ``secret`` with standardwebhooks AND with tollway."""
    payload = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert payload == json.loads(request.body)
    found = verify(request.body, request.headers, secret)
    assert found.id == request.headers["webhook-id"]
    assert found.timestamp == int(request.headers["webhook-timestamp"])


def assert_rejected(request: Received, secret: str) -> None:
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError) as info:
        verify(request.body, request.headers, secret)
    assert info.value.reason == "no_matching_signature"


# --------------------------------------------------------------------------- secrets, signatures


def test_the_signature_matches_the_standard_webhooks_test_vector() -> None:
    assert sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, SPEC_SECRET) == SPEC_SIGNATURE
    assert sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.encode(), [SPEC_SECRET]) == SPEC_SIGNATURE
    when = datetime.fromtimestamp(SPEC_TIMESTAMP, timezone.utc)
    theirs = standardwebhooks.Webhook(SPEC_SECRET).sign(SPEC_ID, when, SPEC_BODY)
    assert theirs == SPEC_SIGNATURE
    headers = {
        "Webhook-Id": SPEC_ID,
        "Webhook-Timestamp": str(SPEC_TIMESTAMP),
        "Webhook-Signature": SPEC_SIGNATURE,
    }
    assert verify(SPEC_BODY, headers, SPEC_SECRET, now=SPEC_TIMESTAMP + 299).id == SPEC_ID


def test_generated_secrets_are_whsec_base64_of_32_random_bytes() -> None:
    text = generate_secret()
    assert text.startswith("whsec_")
    secret = parse_secret(text)
    assert len(secret.key) == 32
    assert base64.b64decode(text[len("whsec_") :]) == secret.key
    assert secret.text == text
    assert generate_secret() != text
    assert len(parse_secret(generate_secret(24)).key) == 24
    assert text not in repr(secret) and text not in str(secret)
    assert secret.fingerprint in str(secret)
    # The PyPI package reads our secrets and checks our signatures.
    headers = headers_for("msg_1", b'{"a":1}', text)
    assert standardwebhooks.Webhook(text).verify(b'{"a":1}', headers) == {"a": 1}


def test_secrets_parse_without_padding_and_with_surrounding_whitespace() -> None:
    key = bytes(range(25))
    encoded = base64.b64encode(key).decode().rstrip("=")
    assert parse_secret(f"  whsec_{encoded}\n").key == key
    assert WebhookSecret.parse(f"whsec_{encoded}==").key == key


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        ("", "empty"),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with 'whsec_'"),
        ("whsec_", "not base64"),
        ("whsec_not*base64*at+all===", "not base64"),
        ("whsec_A", "not base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "16 bytes; expected 24 to 64"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "65 bytes; expected 24 to 64"),
        (b"whsec_bytes", "expected a string"),
    ],
)
def test_a_bad_secret_is_refused_clearly_without_echoing_it(secret: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as info:
        parse_secret(secret)
    assert isinstance(info.value, TollwayError)
    if isinstance(secret, str) and len(secret) > 8:
        assert secret[6:] not in str(info.value)
    with pytest.raises(ConfigurationError):
        WebhookSink("http://127.0.0.1:9/", secret)


def test_rotation_secrets_are_deduplicated_and_errors_say_which_one() -> None:
    one, two = generate_secret(), generate_secret()
    assert [s.text for s in parse_secrets([one, two, one])] == [one, two]
    with pytest.raises(ConfigurationError, match=r"secrets\[1\]"):
        parse_secrets([one, "whsec_"])
    with pytest.raises(ConfigurationError, match="none given"):
        parse_secrets([])
    assert len(sign("m1", 1, b"x", [one, two]).split(" ")) == 2


@pytest.mark.parametrize("msg_id", ["a.b", "", "a b", "é", 5])
def test_a_message_id_that_would_make_the_signature_ambiguous_is_refused(msg_id: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="webhook-id"):
        sign(msg_id, 1, b"x", SPEC_SECRET)


@pytest.mark.parametrize("timestamp", [-1, 1.5, "1", True])
def test_a_timestamp_must_be_integer_seconds(timestamp: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="integer Unix seconds"):
        sign("m1", timestamp, b"x", SPEC_SECRET)


# --------------------------------------------------------------------------- verify


def signed(body: bytes = b'{"x":1}', secret: str = SPEC_SECRET, **kw: Any) -> dict[str, str]:
    return headers_for("msg_1", body, secret, timestamp=kw.get("timestamp", int(time.time())))


@pytest.mark.parametrize("missing", [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE])
def test_verify_names_a_missing_header(missing: str) -> None:
    headers = signed()
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=missing) as info:
        verify(b'{"x":1}', headers, SPEC_SECRET)
    assert (info.value.reason, info.value.header) == ("missing_header", missing)


@pytest.mark.parametrize("stamp", ["abc", "12.5", "-5", ""])
def test_verify_refuses_a_timestamp_that_is_not_integer_seconds(stamp: str) -> None:
    headers = {**signed(), WEBHOOK_TIMESTAMP: stamp}
    with pytest.raises(WebhookVerificationError) as info:
        verify(b'{"x":1}', headers, SPEC_SECRET)
    assert info.value.header == WEBHOOK_TIMESTAMP
    assert info.value.reason in {"invalid_header", "missing_header"}


def test_verify_allows_five_minutes_either_way_and_no_more() -> None:
    now = 1_700_000_000
    for offset in (-300, 0, 300):
        headers = signed(timestamp=now + offset)
        assert verify(b'{"x":1}', headers, SPEC_SECRET, now=now).timestamp == now + offset
    with pytest.raises(WebhookVerificationError, match="301 s old") as info:
        verify(b'{"x":1}', signed(timestamp=now - 301), SPEC_SECRET, now=now)
    assert info.value.reason == "timestamp_too_old"
    with pytest.raises(WebhookVerificationError, match="in the future") as info:
        verify(b'{"x":1}', signed(timestamp=now + 301), SPEC_SECRET, now=now)
    assert info.value.reason == "timestamp_too_new"
    assert verify(b'{"x":1}', signed(timestamp=now - 600), SPEC_SECRET, now=now, tolerance=600)


def test_verify_refuses_a_changed_body_or_another_secret() -> None:
    headers = signed()
    with pytest.raises(WebhookVerificationError, match="none of its 1 v1 signature "):
        verify(b'{"x":2}', headers, SPEC_SECRET)
    with pytest.raises(WebhookVerificationError) as info:
        verify(b'{"x":1}', headers, generate_secret())
    assert info.value.reason == "no_matching_signature"
    changed_id = {**headers, WEBHOOK_ID: "msg_2"}
    with pytest.raises(WebhookVerificationError):
        verify(b'{"x":1}', changed_id, SPEC_SECRET)


def test_verify_tries_every_signature_and_skips_other_versions() -> None:
    good = signed()[WEBHOOK_SIGNATURE]
    fake = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    header = f"v1a,{fake[3:]} garbage {fake} v1,!!notbase64 v2,{good[3:]} {good} {fake}"
    headers = {**signed(), WEBHOOK_SIGNATURE: header}
    assert verify(b'{"x":1}', headers, SPEC_SECRET).id == "msg_1"
    assert standardwebhooks.Webhook(SPEC_SECRET).verify(
        b'{"x":1}', {**headers, WEBHOOK_SIGNATURE: f"{fake} v2,{good[3:]} {good}"}
    )
    only_others = {**headers, WEBHOOK_SIGNATURE: f"v1a,{good[3:]} v2,{good[3:]}"}
    with pytest.raises(WebhookVerificationError, match="no readable v1 signature"):
        verify(b'{"x":1}', only_others, SPEC_SECRET)


def test_verify_reports_which_rotation_secret_matched() -> None:
    old, new = generate_secret(), generate_secret()
    headers = headers_for("msg_9", b"{}", old)
    assert verify(b"{}", headers, [new, old]).secret_index == 1
    assert verify(b"{}", headers_for("msg_9", b"{}", [new, old]), [new]).secret_index == 0


# --------------------------------------------------------------------------- over HTTP


def test_a_delivery_is_a_signed_cloudevent_that_both_verifiers_accept(
    receiver: Receiver,
) -> None:
    secret = generate_secret()
    clock = FakeClock()
    result = deliverer(WebhookSink(receiver.url, secret), clock).deliver(event(1))
    assert isinstance(result, Delivered)
    assert [a.status for a in result.attempts] == [200]
    (request,) = receiver.requests
    assert request.path == "/hooks/tollway?k=1"
    assert request.headers["content-type"] == CONTENT_TYPE
    assert request.headers["webhook-id"] == "evt_1" == result.message_id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    assert request.headers["user-agent"].startswith("tollway/")
    assert request.body == encode(event(1))
    assert decode(request.body)["data"]["amount"] == "0.005"
    assert_verifies(request, secret)
    assert_rejected(request, generate_secret())


def test_rotation_sends_two_signatures_and_each_secret_verifies_alone(
    receiver: Receiver,
) -> None:
    current, previous = generate_secret(), generate_secret()
    sink = WebhookSink(receiver.url, [current, previous])
    assert isinstance(deliverer(sink, FakeClock()).deliver(event(2)), Delivered)
    sink.set_secrets(current)  # the rotation is over
    assert isinstance(deliverer(sink, FakeClock()).deliver(event(3)), Delivered)
    during, after = receiver.requests
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in during.headers["webhook-signature"].split(" "))
    assert_verifies(during, current)
    assert_verifies(during, previous)
    assert_rejected(during, generate_secret())
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert_verifies(after, current)
    assert_rejected(after, previous)


def test_a_receiver_that_fails_then_recovers_loses_nothing(receiver: Receiver) -> None:
    secret = generate_secret()
    receiver.answer(
        ("status", 500),  # evt_1: attempt 1
        ("hang",),  # evt_1: attempt 2 times out (the receiver did get it)
        ("status", 503),  # evt_1: attempt 3
        ("slow", 0.05),  # evt_1: attempt 4, slow but within the timeout
        ("status", 502),  # evt_2: attempt 1
        # evt_2 attempt 2 and evt_3 attempt 1: the default 200
    )
    clock = FakeClock()
    worker = deliverer(WebhookSink(receiver.url, secret), clock)
    results = [worker.deliver(event(n)) for n in (1, 2, 3)]
    assert all(isinstance(result, Delivered) for result in results)
    assert [[a.status for a in r.attempts] for r in results] == [
        [500, None, 503, 200],
        [502, 200],
        [200],
    ]
    assert "timed out after 0.2 s" in (results[0].attempts[1].error or "")
    assert results[0].attempts[1].duration < CLIENT_TIMEOUT + 0.3 < HANG  # the timeout is real
    assert results[0].attempts[0].error == "HTTP 500 Internal Server Error: answer 500"
    # Every attempt of an event carried its id; every event arrived; none was lost.
    assert receiver.ids() == ["evt_1"] * 4 + ["evt_2"] * 2 + ["evt_3"]
    assert {decode(r.body)["id"] for r in receiver.requests} == {"evt_1", "evt_2", "evt_3"}
    for request in receiver.requests:
        assert_verifies(request, secret)
    # A body signed again on each attempt, with the same bytes each time.
    assert len({r.body for r in receiver.requests if r.headers["webhook-id"] == "evt_1"}) == 1
    # The waits followed the schedule: 5 s, 5 min, 30 min for evt_1; 5 s for evt_2.
    assert clock.sleeps == [5.0, 300.0, 1800.0, 5.0]


def test_a_receiver_that_always_fails_ends_dead_lettered_with_every_attempt(
    receiver: Receiver,
) -> None:
    receiver.answer(default=("status", 500))
    clock = FakeClock()
    started = clock.now
    worker = deliverer(WebhookSink(receiver.url, generate_secret()), clock)
    dead = worker.deliver(event(7))
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "exhausted"
    assert [a.number for a in dead.attempts] == list(range(1, 11))
    assert [a.status for a in dead.attempts] == [500] * 10
    assert all(a.outcome == "failed" and "HTTP 500" in (a.error or "") for a in dead.attempts)
    assert receiver.ids() == ["evt_7"] * 10
    # Ten attempts over the default schedule: 75 h 35 min 5 s, a little over three days.
    assert sum(clock.sleeps) == pytest.approx(75 * 3600 + 35 * 60 + 5)
    assert dead.attempts[-1].at - started == pytest.approx(sum(DEFAULT_DELAYS))
    assert decode(dead.body) == event(7)
    assert json.loads(json.dumps(dead.to_dict()))["attempts"][9]["status"] == 500
    # Replayed once the receiver is back: the same id, so it can dedupe.
    receiver.answer()
    replayed = worker.run(worker.replay(dead))
    assert isinstance(replayed, Delivered)
    assert receiver.ids()[-1] == "evt_7"


def test_410_gone_disables_the_sink(receiver: Receiver) -> None:
    receiver.answer(("status", 410))
    sink = WebhookSink(receiver.url, generate_secret())
    worker = deliverer(sink, FakeClock())
    gone = worker.deliver(event(1))
    assert isinstance(gone, DeadLetter)
    assert (gone.reason, [a.status for a in gone.attempts]) == ("gone", [410])
    assert sink.disabled
    later = worker.deliver(event(2))
    assert isinstance(later, DeadLetter)
    assert (later.reason, later.attempts) == ("disabled", ())
    assert receiver.ids() == ["evt_1"]  # nothing sent to a disabled sink
    sink.enable()
    assert isinstance(worker.run(worker.replay(later)), Delivered)
    assert receiver.ids() == ["evt_1", "evt_2"]


def test_a_redirect_is_a_failure_and_is_not_followed(receiver: Receiver) -> None:
    receiver.answer(("status", 308, {"Location": "/elsewhere"}))
    result = deliverer(WebhookSink(receiver.url, generate_secret()), FakeClock()).deliver(event())
    assert isinstance(result, Delivered)
    assert [a.status for a in result.attempts] == [308, 200]
    assert [r.path for r in receiver.requests] == ["/hooks/tollway?k=1"] * 2


def test_retry_after_postpones_the_next_attempt_up_to_the_longest_delay(
    receiver: Receiver,
) -> None:
    receiver.answer(
        ("status", 429, {"Retry-After": "120"}),
        ("status", 503, {"Retry-After": str(10**9)}),
    )
    clock = FakeClock()
    schedule = RetrySchedule((0, 5, 60, 3600), jitter=0)
    result = deliverer(WebhookSink(receiver.url, generate_secret()), clock, schedule).deliver(
        event()
    )
    assert isinstance(result, Delivered)
    assert clock.sleeps == [120.0, 3600.0]
    clock = FakeClock()
    receiver.answer(("status", 429, {"Retry-After": "120"}))
    ignoring = deliverer(
        WebhookSink(receiver.url, generate_secret()), clock, schedule, honour_retry_after=False
    )
    assert isinstance(ignoring.deliver(event(2)), Delivered)
    assert clock.sleeps == [5.0]


def test_a_refused_connection_is_retried_then_dead_lettered() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = FakeClock()
    worker = deliverer(
        WebhookSink(f"http://127.0.0.1:{port}/", generate_secret()),
        clock,
        RetrySchedule((0, 1, 2), jitter=0),
    )
    dead = worker.deliver(event())
    assert isinstance(dead, DeadLetter)
    assert [a.status for a in dead.attempts] == [None, None, None]
    assert all("ConnectionRefusedError" in (a.error or "") for a in dead.attempts)
    assert clock.sleeps == [1.0, 2.0]


def test_a_batch_is_one_signed_request_with_a_stable_id(receiver: Receiver) -> None:
    secret = generate_secret()
    batch = [event(n) for n in (1, 2, 3)]
    worker = deliverer(WebhookSink(receiver.url, secret), FakeClock())
    state = worker.prepare(batch)
    assert state.message_id == worker.prepare(list(batch)).message_id
    assert state.message_id.startswith("batch_")
    assert state.message_id != worker.prepare(batch[:2]).message_id
    assert state.event_ids == ["evt_1", "evt_2", "evt_3"]
    assert isinstance(worker.run(state), Delivered)
    (request,) = receiver.requests
    assert request.headers["content-type"] == BATCH_CONTENT_TYPE
    assert request.headers["webhook-id"] == state.message_id
    assert decode_batch(request.body) == batch
    assert_verifies(request, secret)
    with pytest.raises(InvalidArgumentError, match="empty batch"):
        worker.prepare([])
    with pytest.raises(InvalidArgumentError, match="repeats ids evt_1"):
        worker.prepare([event(1), event(1)])


# --------------------------------------------------------------------------- resuming


class Crash(Exception):
    """Stands for the worker dying after a checkpoint."""


def test_a_serialized_state_resumes_the_schedule_where_it_stopped(receiver: Receiver) -> None:
    secret = generate_secret()
    receiver.answer(default=("status", 500))
    clock = FakeClock()
    saved: list[str] = []

    def checkpoint(state: DeliveryState) -> None:
        saved.append(state.to_json())
        if len(state.attempts) == 3:
            raise Crash

    first = deliverer(WebhookSink(receiver.url, secret), clock)
    with pytest.raises(Crash):
        first.deliver(event(5), checkpoint=checkpoint)
    assert len(saved) == 3
    assert clock.sleeps == [5.0, 300.0]
    # A new process: a new sink, deliverer and clock; the state comes back from its JSON.
    state = DeliveryState.from_json(saved[-1])
    assert [a.status for a in state.attempts] == [500, 500, 500]
    assert state.next_at == pytest.approx(clock.now + 1800.0)
    receiver.answer(("status", 500))  # one more failure, then it recovers
    later = FakeClock(clock.now + 60)  # restarted a minute later
    second = deliverer(WebhookSink(receiver.url, secret), later)
    result = second.run(state)
    assert isinstance(result, Delivered)
    assert [a.number for a in result.attempts] == [1, 2, 3, 4, 5]
    assert [a.status for a in result.attempts] == [500, 500, 500, 500, 200]
    assert later.sleeps == [pytest.approx(1800.0 - 60), 7200.0]
    assert receiver.ids() == ["evt_5"] * 5
    for request in receiver.requests:
        assert_verifies(request, secret)


def test_a_resumed_state_that_already_used_the_schedule_is_dead_lettered() -> None:
    clock = FakeClock()
    calls: list[Message] = []
    worker = deliverer(CallableSink(calls.append), clock, RetrySchedule((0, 5), jitter=0))
    state = worker.prepare(event())
    state.attempts = [
        Attempt(number=n, at=clock.now, duration=0.0, outcome="failed", error="x") for n in (1, 2)
    ]
    resumed = DeliveryState.from_json(state.to_json())
    dead = worker.run(resumed)
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "exhausted"
    assert calls == []


def test_step_attempts_only_when_due() -> None:
    clock = FakeClock()
    failures = iter([RuntimeError("down")])

    def flaky(message: Message) -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    worker = deliverer(CallableSink(flaky), clock, RetrySchedule((0, 10), jitter=0))
    state = worker.prepare(event())
    assert worker.step(state) is None  # attempt 1 fails
    assert len(state.attempts) == 1
    assert worker.step(state) is None  # not due yet: no attempt
    assert len(state.attempts) == 1
    clock.now += 10
    result = worker.step(state)
    assert isinstance(result, Delivered)
    assert worker.step(state) == result == outcome_of(state)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"version": 2}, "version 2"),
        ({"message_id": "a.b"}, "webhook-id"),
        ({"event_ids": []}, "event_ids"),
        ({"status": "lost"}, "status"),
        ({"status": "dead"}, "dead_reason"),
        ({"next_at": "soon"}, "next_at"),
        ({"attempts": [{"number": 2}]}, r"attempts\[0\]\.number"),
        (
            {"attempts": [{"number": 1, "at": 1, "duration": 0, "outcome": "maybe"}]},
            r"attempts\[0\]\.outcome",
        ),
    ],
)
def test_a_bad_saved_state_is_refused_naming_the_field(
    change: dict[str, Any], fragment: str
) -> None:
    state = deliverer(CallableSink(print), FakeClock()).prepare(event()).to_dict()
    state.update(change)
    with pytest.raises(InvalidArgumentError, match=fragment):
        DeliveryState.from_dict(state)
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        DeliveryState.from_json("{")


# --------------------------------------------------------------------------- schedules


def test_the_default_schedule_spans_about_three_days() -> None:
    schedule = RetrySchedule()
    assert schedule.delays == DEFAULT_DELAYS
    assert schedule.attempts == 10
    assert 3 * 86400 <= schedule.span <= 3.2 * 86400
    assert schedule.delays[:4] == (0.0, 5.0, 300.0, 1800.0)


def test_jitter_stays_inside_its_bounds() -> None:
    rng = random.Random(7).random
    for schedule in (
        RetrySchedule(jitter=0.1),
        RetrySchedule(jitter=0.5),
        RetrySchedule.exponential(12, base=2, cap=600),  # full jitter
    ):
        for index in range(schedule.attempts):
            low, high = schedule.bounds(index)
            assert low == pytest.approx(schedule.delays[index] * (1 - schedule.jitter))
            draws = [schedule.delay(index, rng) for _ in range(200)]
            assert all(low <= d <= high for d in draws)
            if high > 0:
                assert len(set(draws)) > 1  # it does jitter
        assert schedule.delay(schedule.attempts - 1, lambda: 0.0) == schedule.delays[-1]
        assert schedule.delay(schedule.attempts - 1, lambda: 1.0) == pytest.approx(
            schedule.bounds(schedule.attempts - 1)[0]
        )
        assert schedule.delay(1, lambda: 7.0) >= schedule.bounds(1)[0]  # a wild rng is clamped
    full = RetrySchedule.exponential(4, base=10)
    assert full.bounds(3) == (0.0, 40.0)


def test_a_jittered_delivery_sleeps_inside_the_bounds() -> None:
    clock = FakeClock()
    schedule = RetrySchedule((0, 100, 1000, 5000), jitter=0.5)
    dead = Deliverer(
        CallableSink(lambda m: 1 / 0),
        schedule=schedule,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(3).random,
    ).deliver(event())
    assert isinstance(dead, DeadLetter)
    assert "ZeroDivisionError" in (dead.attempts[0].error or "")
    assert len(clock.sleeps) == 3
    for index, slept in enumerate(clock.sleeps, start=1):
        low, high = schedule.bounds(index)
        assert low <= slept <= high
    assert clock.sleeps != [100.0, 1000.0, 5000.0]


def test_exponential_backoff_doubles_up_to_its_cap() -> None:
    schedule = RetrySchedule.exponential(7, base=5, factor=2, cap=60, first=1, jitter=0)
    assert schedule.delays == (1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 60.0)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"delays": ()}, "non-empty"),
        ({"delays": (0, -1)}, r"delays\[1\]"),
        ({"delays": (0, float("inf"))}, r"delays\[1\]"),
        ({"delays": (0, "5")}, r"delays\[1\]"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_a_bad_schedule_is_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        RetrySchedule(**kwargs)


def test_bad_exponential_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="attempts"):
        RetrySchedule.exponential(0)
    with pytest.raises(InvalidArgumentError, match="factor"):
        RetrySchedule.exponential(3, factor=0.5)


# --------------------------------------------------------------------------- sinks


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://hooks.example.com/x", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("hooks.example.com/x", "no scheme"),
        ("http://", "no host"),
        ("https:///only/a/path", "no host"),
        ("http://host:99999/", "Port out of range"),
        ("http://host:0/", "port 0"),
        ("http://exa mple.com/", "without spaces"),
        ("", "expected an http"),
    ],
)
def test_a_sink_url_that_is_not_http_with_a_host_is_refused_naming_it(
    url: str, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as info:
        WebhookSink(url, generate_secret())
    assert repr(url) in str(info.value)
    with pytest.raises(ConfigurationError):
        check_sink_url(url)


def test_credentials_in_a_sink_url_are_refused_without_showing_them() -> None:
    with pytest.raises(ConfigurationError, match="credentials") as info:
        WebhookSink("https://user:hunter2@hooks.example.com/x", generate_secret())
    assert "hunter2" not in str(info.value)
    assert "hooks.example.com" in str(info.value)
    assert check_sink_url("https://hooks.example.com:8443/x?y=1") == (
        "https://hooks.example.com:8443/x?y=1"
    )


def test_extra_headers_are_sent_but_cannot_replace_the_signature(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, generate_secret(), headers={"Authorization": "Bearer t"})
    assert isinstance(deliverer(sink, FakeClock()).deliver(event()), Delivered)
    assert receiver.requests[0].headers["authorization"] == "Bearer t"
    with pytest.raises(ConfigurationError, match="set by the sink"):
        WebhookSink(receiver.url, generate_secret(), headers={"Webhook-Signature": "v1,x"})


def test_a_callable_sink_gets_the_message_and_its_exceptions_are_retried() -> None:
    seen: list[Message] = []
    failures = [ConnectionError("queue full"), ValueError()]

    def handle(message: Message) -> None:
        seen.append(message)
        if failures:
            raise failures.pop(0)

    clock = FakeClock()
    sink = CallableSink(handle)
    assert sink.target.startswith("callable:") and "handle" in sink.target
    result = deliverer(sink, clock).deliver(event(4))
    assert isinstance(result, Delivered)
    assert [a.error for a in result.attempts] == [
        "ConnectionError: queue full",
        "ValueError",
        None,
    ]
    assert {m.id for m in seen} == {"evt_4"}
    assert seen[0].events() == [event(4)]
    assert clock.sleeps == [5.0, 300.0]
    with pytest.raises(ConfigurationError, match="not callable"):
        CallableSink("nope")  # type: ignore[arg-type]


def test_a_sink_that_raises_or_answers_nonsense_only_fails_the_attempt() -> None:
    class Broken:
        target = "broken"
        disabled = False

        def __init__(self) -> None:
            self.calls = 0

        def send(self, message: Message, *, timeout: float) -> SendResult:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            if self.calls == 2:
                return "ok"  # type: ignore[return-value]
            assert timeout == CLIENT_TIMEOUT
            return SendResult.delivered()

    result = deliverer(Broken(), FakeClock()).deliver(event())
    assert isinstance(result, Delivered)
    assert [a.error for a in result.attempts] == [
        "RuntimeError: boom",
        "the sink returned 'ok', not a SendResult",
        None,
    ]
    with pytest.raises(ConfigurationError, match="expected a Sink"):
        Deliverer(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        Deliverer(Broken(), timeout=0)
