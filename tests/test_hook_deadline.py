"""No receiver can hold a delivery past its deadline, nor the drain, nor another hook.

Real parts: the misbehaving receivers of `hostile_http` on raw loopback sockets (trickling
headers or a body, hanging after accept, reading nothing, a huge answer), a normal one, SQLite
ledgers in files. Deadlines are real time (that is what they bound), kept short; every wait is
a poll with a deadline.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostile_http import HostileReceiver
from test_hooks import ENV, SECRET, ev, webhook
from tollway.metering.hookrunner import HookRunner
from tollway.metering.hooks import Dispatcher
from tollway.metering.ledger import Ledger, open_ledger
from tollway.metering.sinks import Message, WebhookSink

DEADLINE = 0.6
SLACK = 0.5  # a loaded test machine: thread wake-ups, the timer's own latency


def message(n: int = 1, size: int = 64) -> Message:
    return Message(
        id=f"msg_{n}", body=b"{" + b" " * size + b"}", content_type="application/json",
        event_ids=(f"evt-{n}",),
    )  # fmt: skip


def wait_for(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.01)


@pytest.fixture
def receivers() -> Iterator[Callable[..., HostileReceiver]]:
    started: list[HostileReceiver] = []

    def make(mode: str, **kw: float) -> HostileReceiver:
        receiver = HostileReceiver(mode, **kw).start()  # type: ignore[arg-type]
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


# =========================================================================== one attempt


@pytest.mark.parametrize(
    ("mode", "size"),
    [("trickle", 64), ("trickle_body", 64), ("hang", 64), ("no_read", 16 * 1024 * 1024)],
)
def test_an_attempt_ends_at_its_deadline_whatever_the_receiver_does(
    receivers: Callable[..., HostileReceiver], mode: str, size: int
) -> None:
    receiver = receivers(mode, interval=0.05)
    sink = WebhookSink(receiver.url, SECRET)
    started = time.monotonic()
    result = sink.send(message(size=size), timeout=DEADLINE)
    took = time.monotonic() - started
    assert result.outcome == "failed"
    assert result.error == f"timed out after {DEADLINE:g} s (connect, send and answer in all)"
    assert DEADLINE - 0.05 <= took < DEADLINE + SLACK, took


def test_a_huge_answer_is_read_only_as_far_as_the_record_needs(
    receivers: Callable[..., HostileReceiver],
) -> None:
    failed, ok = receivers("huge"), receivers("huge_ok")
    started = time.monotonic()
    result = WebhookSink(failed.url, SECRET).send(message(), timeout=5)
    assert result.outcome == "failed" and result.status == 500
    assert result.error is not None and result.error.startswith("HTTP 500 Oops: xxx")
    assert len(result.error) < 300
    assert WebhookSink(ok.url, SECRET).send(message(), timeout=5).outcome == "delivered"
    assert time.monotonic() - started < 2
    # 64 KiB read; the rest only ever reached the socket buffers, never this process's memory
    assert failed.written < 32 * 1024 * 1024 and ok.written < 32 * 1024 * 1024


def test_a_slow_receiver_within_the_deadline_is_delivered(
    receivers: Callable[..., HostileReceiver],
) -> None:
    receiver = receivers("slow", delay=0.3)
    result = WebhookSink(receiver.url, SECRET).send(message(), timeout=2)
    assert (result.outcome, result.status) == ("delivered", 200)


def test_abort_ends_an_attempt_in_flight_at_once(
    receivers: Callable[..., HostileReceiver],
) -> None:
    receiver = receivers("hang")
    sink = WebhookSink(receiver.url, SECRET)
    results = []
    thread = threading.Thread(target=lambda: results.append(sink.send(message(), timeout=30)))
    thread.start()
    wait_for(lambda: len(receiver.seen) == 1, "the request read")
    started = time.monotonic()
    sink.abort()
    thread.join(5)
    assert time.monotonic() - started < 0.5
    assert [r.error for r in results] == ["aborted: the deliverer is stopping"]


# =========================================================================== the dispatcher


def test_a_stop_hands_the_attempt_in_flight_back_uncounted(
    ledger: Ledger, receivers: Callable[..., HostileReceiver]
) -> None:
    receiver = receivers("trickle", interval=0.5)
    hook = webhook(receiver.url, timeout_ms=30_000)
    ledger.commit([ev(1)], hooks=[hook])
    stopping = threading.Event()
    with Dispatcher(ledger, [hook], env=ENV, stop=stopping.is_set) as d:
        thread = threading.Thread(target=d.run_once)
        thread.start()
        wait_for(lambda: len(receiver.seen) == 1, "the request read")
        started = time.monotonic()
        stopping.set()
        d.abort()
        thread.join(5)
        assert time.monotonic() - started < 0.5
    (held,) = ledger.hook_messages()
    assert (held.status, held.attempts, held.lease_owner) == ("pending", (), None)
    assert held.next_at_us <= time.time_ns() // 1000  # due at once, for the next worker
    receiver.mode = "ok"
    with Dispatcher(ledger, [hook], env=ENV) as d:
        assert d.run_once() == 1
    (done,) = ledger.hook_messages()
    assert done.status == "delivered" and [a.outcome for a in done.attempts] == ["delivered"]
    assert receiver.ids() == [done.id, done.id]  # sent again under the same webhook-id


def test_a_round_hands_back_what_its_lease_cannot_cover(
    ledger: Ledger, receivers: Callable[..., HostileReceiver]
) -> None:
    receiver = receivers("hang")
    hook = webhook(receiver.url, timeout_ms=300)
    ledger.commit([ev(1), ev(2), ev(3)], hooks=[hook])
    with Dispatcher(ledger, [hook], env=ENV, lease_margin_s=0.1) as d:
        assert d.run_once() == 1  # the lease (0.3 + 0.1 s) covers one hanging attempt
    messages = {m.id: m for m in ledger.hook_messages()}
    tried = [m for m in messages.values() if m.attempts]
    assert len(tried) == 1 and tried[0].attempts[0].error is not None
    assert "timed out after 0.3 s" in tried[0].attempts[0].error
    assert all(m.status == "pending" and m.lease_owner is None for m in messages.values())
    assert len(receiver.seen) == 1


# =========================================================================== the runner


def test_a_hanging_hook_never_holds_back_another(
    ledger: Ledger, receivers: Callable[..., HostileReceiver]
) -> None:
    hanging, normal = receivers("hang"), receivers("ok")
    hooks = [
        webhook(hanging.url, name="slow", timeout_ms=2_000),
        webhook(normal.url, name="fast", path="hooks[1]"),
    ]
    runner = HookRunner(ledger, hooks, env=ENV, idle_s=0.2).start()
    try:
        for n in range(5):
            ledger.commit([ev(n)], hooks=hooks)
            runner.wake()
            wait_for(lambda n=n: len(normal.seen) == n + 1, f"evt-{n} at the normal receiver", 1)
        assert len(set(normal.ids())) == 5
        assert len(hanging.seen) == 1  # still in its first attempt
    finally:
        started = time.monotonic()
        runner.stop()
        assert time.monotonic() - started < 1.0
        assert not runner.running
    slow = {m.id: m for m in ledger.hook_messages(hook="slow")}
    assert all(m.status == "pending" and not m.attempts for m in slow.values())
    fast = ledger.hook_messages(hook="fast")
    assert [m.status for m in fast] == ["delivered"] * 5


def test_settle_waits_for_what_is_due_and_not_for_what_is_later(
    ledger: Ledger, receivers: Callable[..., HostileReceiver]
) -> None:
    trickle = receivers("trickle", interval=0.5)
    hook = webhook(trickle.url, timeout_ms=400, schedule=(0.0, 60.0))
    ledger.commit([ev(1)], hooks=[hook])
    runner = HookRunner(ledger, [hook], env=ENV, idle_s=0.2).start()
    try:
        started = time.monotonic()
        assert runner.settle(5)
        assert 0.35 < time.monotonic() - started < 0.4 + 1.0  # one cut attempt, then settled
    finally:
        runner.stop()
    (held,) = ledger.hook_messages()
    assert held.status == "pending" and [a.outcome for a in held.attempts] == ["failed"]
    assert 0.35 < held.attempts[0].duration < 0.4 + SLACK


# =========================================================================== embedded mode


def test_embedded_writes_go_on_while_a_receiver_hangs(
    tmp_path: Path, receivers: Callable[..., HostileReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tollway import Tollway

    monkeypatch.setenv("HOOK_SECRET", SECRET)
    hanging, normal = receivers("hang"), receivers("ok")
    db = tmp_path / "ledger.db"
    hooks = [
        {"name": n, "url": r.url, "secret_env": "HOOK_SECRET", "timeout_ms": 1_000,
         "schedule": [0, 60]}
        for n, r in (("hanging", hanging), ("normal", normal))
    ]  # fmt: skip
    policy = {
        "store": {"url": "memory://"},
        "operations": {"geocode": {"cost": 1}},
        "plans": {"free": {"limits": [{"name": "daily", "quota": "1000/day"}]}},
        "defaults": {"plan": "free"},
        "ledger": {"url": f"sqlite:///{db}", "flush_ms": 20},
        "hooks": hooks,
    }
    tw = Tollway(policy)
    try:
        with open_ledger(f"sqlite:///{db}") as ledger:
            for n in range(5):
                assert tw.acquire("acct_e", "geocode", id=f"e-{n}").allowed
                # written by the background thread, never behind the hanging attempt
                wait_for(lambda n=n: ledger.count() == n + 1, f"e-{n} in the ledger", 0.8)
                wait_for(lambda n=n: len(normal.seen) == n + 1, f"e-{n} delivered", 0.8)
        assert len(hanging.seen) == 1  # its first attempt is still in flight
        hanging.mode = "ok"  # the rest get their first attempt answered at close
    finally:
        started = time.monotonic()
        tw.close()
        assert time.monotonic() - started < 1.0 + 5 * 0.2 + SLACK
    with open_ledger(f"sqlite:///{db}") as ledger:
        statuses = Counter((m.hook, m.status) for m in ledger.hook_messages())
    assert statuses == Counter({("normal", "delivered"): 5, ("hanging", "delivered"): 4,
                                ("hanging", "pending"): 1})  # fmt: skip


# =========================================================================== over TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (the server's context, a client's)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


@pytest.mark.parametrize("mode", ["trickle", "hang", "no_handshake"])
def test_the_deadline_holds_over_tls(
    receivers: Callable[..., HostileReceiver],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
    mode: str,
) -> None:
    server, client = tls
    receiver = receivers(mode, interval=0.05, tls=server)
    sink = WebhookSink(receiver.url, SECRET, ssl_context=client)
    started = time.monotonic()
    result = sink.send(message(), timeout=DEADLINE)
    assert result.error == f"timed out after {DEADLINE:g} s (connect, send and answer in all)"
    assert time.monotonic() - started < DEADLINE + SLACK


def test_a_tls_receiver_that_answers_is_delivered(
    receivers: Callable[..., HostileReceiver], tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server, client = tls
    receiver = receivers("ok", tls=server)
    result = WebhookSink(receiver.url, SECRET, ssl_context=client).send(message(), timeout=5)
    assert (result.outcome, result.status) == ("delivered", 200)
    assert len(receiver.seen) == 1


def test_embedded_close_delivers_even_when_nothing_ran_before(
    tmp_path: Path, receivers: Callable[..., HostileReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tollway import Tollway

    monkeypatch.setenv("HOOK_SECRET", SECRET)
    normal = receivers("ok")
    db = tmp_path / "ledger.db"
    policy = {
        "store": {"url": "memory://"},
        "operations": {"geocode": {"cost": 1}},
        "plans": {"free": {"limits": [{"name": "daily", "quota": "1000/day"}]}},
        "defaults": {"plan": "free"},
        "ledger": {"url": f"sqlite:///{db}", "flush_ms": 60_000},
        "hooks": [{"name": "normal", "url": normal.url, "secret_env": "HOOK_SECRET"}],
    }
    with Tollway(policy) as tw:
        assert tw.acquire("acct_c", "geocode", id="c-1").allowed
    assert len(normal.seen) == 1
