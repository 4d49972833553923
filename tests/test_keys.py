"""API keys: issued, verified, listed, revoked and rotated, on the memory store and on real
Redis servers (standalone and a 3-master Cluster); hashes only at rest; constant-time checks;
the `tollway keys` commands."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

import tollway.keys
from tollway import AsyncTollway, Tollway
from tollway.cli.main import main
from tollway.errors import (
    ConfigurationError,
    InvalidArgumentError,
    StoreError,
    UnknownNameError,
)
from tollway.keys import SECRET_ENV, ApiKeys, AsyncApiKeys, index_key, record_key
from tollway.keyspace import MAX_SUBJECT
from tollway.stores import AsyncMemoryStore
from tollway.stores.memory import MemoryStore
from tollway.testing import FakeClock

SECRET = b"k" * 32
OTHER_SECRET = b"o" * 32

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"geocode": {"cost": 1}},
    "plans": {"free": {"limits": [{"name": "daily", "quota": "10/day"}]}},
}
NETWORKED: dict[str, Any] = {**POLICY, "store": {"timeout_ms": 2000}}
"""On Redis: a first connection on a loaded 2-CPU machine may take longer than the default
50 ms; these tests are about keys, not timeouts."""
TOML = """\
[defaults]
plan = "free"

[operations]
geocode = { cost = 1 }

[plans.free]
limits = [{ name = "daily", quota = "10/day" }]
"""


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(SECRET_ENV, raising=False)


@dataclass
class Backend:
    name: str
    tw: Tollway
    dump: Callable[[], list[str]]
    """Every key and every value in the store, as text."""


def _dump_redis(client: Any, keys: Iterator[bytes]) -> list[str]:
    out: list[str] = []
    for raw in keys:
        out.append(raw.decode())
        kind = client.type(raw).decode()
        if kind == "hash":
            for name, value in client.hgetall(raw).items():
                out += [name.decode(), value.decode()]
        elif kind == "set":
            out += [member.decode() for member in client.smembers(raw)]
        elif kind == "string":
            out.append(client.get(raw).decode())
        else:  # pragma: no cover - nothing else is written
            raise AssertionError(f"unexpected {kind} at {raw!r}")
    return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000)


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Backend]:
    if request.param == "memory":
        tw = Tollway(POLICY, "memory://", clock=clock)
        store = tw.store
        assert isinstance(store, MemoryStore)

        def dump_memory() -> list[str]:
            return [text for pair in store.records.items() for text in pair]

        yield Backend("memory", tw, dump_memory)
        return
    if request.param == "redis":
        client = request.getfixturevalue("redis_client")
        url = request.getfixturevalue("redis_url")

        def dump() -> list[str]:
            return _dump_redis(client, client.scan_iter())

    else:
        client = request.getfixturevalue("redis_cluster_client")
        url = request.getfixturevalue("redis_cluster_url")

        def dump() -> list[str]:
            keys = client.scan_iter(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            return _dump_redis(client, keys)

    with Tollway(NETWORKED, url, clock=clock) as tw:
        yield Backend(request.param, tw, dump)


class Awaited:
    """`AsyncApiKeys` driven from a sync test: each method's coroutine run to its end on one
    event loop (the async Redis client's connections belong to it)."""

    def __init__(self, keys: AsyncApiKeys, loop: asyncio.AbstractEventLoop) -> None:
        self.keys = keys
        self.loop = loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.keys, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))


@pytest.fixture(params=["sync", "async"])
def keys(request: pytest.FixtureRequest, backend: Backend, clock: FakeClock) -> Iterator[Any]:
    """`ApiKeys` on the backend's `Tollway`, or `AsyncApiKeys` on an `AsyncTollway` over the
    same store: every test below holds both faces to the same behaviour."""
    if request.param == "sync":
        yield ApiKeys(backend.tw, secret=SECRET)
        return
    store = backend.tw.store
    loop = asyncio.new_event_loop()  # asyncio.Runner is 3.11+
    if isinstance(store, MemoryStore):
        atw = AsyncTollway(POLICY, AsyncMemoryStore(store), clock=clock)
    else:
        atw = AsyncTollway(NETWORKED, store.url, clock=clock)
    try:
        yield Awaited(AsyncApiKeys(atw, secret=SECRET), loop)
        loop.run_until_complete(atw.aclose())
    finally:
        loop.close()


# ------------------------------------------------------------------------------ lifecycle


def test_create_then_verify(keys: ApiKeys, clock: FakeClock) -> None:
    issued = keys.create("alice", label="ci")
    assert issued.key.startswith(f"tw_{issued.key_id}_")
    assert len(issued.key) == tollway.keys.KEY_LENGTH
    assert issued.subject == "alice"
    assert issued.created_at.timestamp() == 1_700_000_000
    assert issued.expires_at is None
    assert issued.key not in repr(issued)
    assert keys.verify(issued.key) == "alice"
    assert keys.verify(keys.create("bob").key) == "bob"
    assert keys.verify(issued.key) == "alice"


def test_every_key_is_different(keys: ApiKeys) -> None:
    issued = [keys.create("alice") for _ in range(20)]
    assert len({i.key for i in issued}) == len({i.key_id for i in issued}) == 20
    assert all(keys.verify(i.key) == "alice" for i in issued)


def test_list_shows_the_subjects_keys_without_secrets(keys: ApiKeys, clock: FakeClock) -> None:
    first = keys.create("alice", label="laptop")
    clock.advance(5)
    second = keys.create("alice", expires_in=3600)
    keys.create("bob")
    listed = keys.list("alice")
    assert [info.key_id for info in listed] == [first.key_id, second.key_id]
    assert [info.state for info in listed] == ["active", "active"]
    assert listed[0].label == "laptop"
    assert listed[1].expires_at is not None
    assert listed[1].expires_at.timestamp() == 1_700_000_000 + 5 + 3600
    for info in listed:
        text = json.dumps(info.to_dict())
        assert first.key not in text
        assert second.key not in text
        assert "digest" not in text
    assert keys.list("carol") == []


def test_revoke_refuses_the_key_at_once_and_only_that_key(keys: ApiKeys, clock: FakeClock) -> None:
    doomed = keys.create("alice")
    kept = keys.create("alice")
    clock.advance(1)
    info = keys.revoke(doomed.key_id)
    assert info.state == "revoked"
    assert info.revoked_at is not None
    assert info.revoked_at.timestamp() == 1_700_000_001
    assert keys.verify(doomed.key) is None
    assert keys.verify(kept.key) == "alice"
    clock.advance(10)
    again = keys.revoke(doomed.key_id)  # idempotent: the first revocation time stands
    assert again.revoked_at == info.revoked_at
    assert {i.key_id: i.state for i in keys.list("alice")} == {
        doomed.key_id: "revoked",
        kept.key_id: "active",
    }


def test_rotate_keeps_the_old_key_for_the_overlap_only(keys: ApiKeys, clock: FakeClock) -> None:
    old = keys.create("alice", label="prod")
    clock.advance(100)
    new = keys.rotate(old.key_id, overlap=60)
    assert new.subject == "alice"
    assert new.label == "prod"
    assert new.key_id != old.key_id
    assert keys.verify(old.key) == "alice"
    assert keys.verify(new.key) == "alice"
    clock.advance(59.9)
    assert keys.verify(old.key) == "alice"
    clock.advance(0.1)
    assert keys.verify(old.key) is None
    assert keys.verify(new.key) == "alice"
    states = {i.key_id: (i.state, i.rotated_to) for i in keys.list("alice")}
    assert states == {old.key_id: ("expired", new.key_id), new.key_id: ("active", None)}


def test_rotate_with_no_overlap_stops_the_old_key_now(keys: ApiKeys) -> None:
    old = keys.create("alice")
    new = keys.rotate(old.key_id, overlap=0)
    assert keys.verify(old.key) is None
    assert keys.verify(new.key) == "alice"


def test_rotate_never_extends_an_earlier_expiry(keys: ApiKeys, clock: FakeClock) -> None:
    old = keys.create("alice", expires_in=10)
    keys.rotate(old.key_id, overlap=3600)
    clock.advance(10)
    assert keys.verify(old.key) is None


def test_only_an_active_key_can_be_rotated(keys: ApiKeys, clock: FakeClock) -> None:
    revoked = keys.create("alice")
    keys.revoke(revoked.key_id)
    with pytest.raises(InvalidArgumentError, match="is revoked"):
        keys.rotate(revoked.key_id, overlap=10)
    expired = keys.create("alice", expires_in=1)
    clock.advance(1)
    with pytest.raises(InvalidArgumentError, match="is expired"):
        keys.rotate(expired.key_id, overlap=10)


def test_expires_in(keys: ApiKeys, clock: FakeClock) -> None:
    issued = keys.create("alice", expires_in=30)
    assert issued.expires_at is not None
    assert issued.expires_at.timestamp() == 1_700_000_030
    clock.advance(29.999999)
    assert keys.verify(issued.key) == "alice"
    clock.advance(us=1)
    assert keys.verify(issued.key) is None
    assert keys.get(issued.key_id).state == "expired"


# ------------------------------------------------------------------------------ at rest


def test_the_raw_key_appears_nowhere_in_the_store(keys: ApiKeys, backend: Backend) -> None:
    issued = [keys.create("alice", label="x"), keys.create("bob")]
    keys.rotate(issued[0].key_id, overlap=5)
    keys.revoke(issued[1].key_id)
    contents = backend.dump()
    assert contents, "the store holds the records"
    for one in issued:
        secret_part = one.key[len("tw_") + 8 + 1 :]
        for text in contents:
            assert one.key not in text
            assert secret_part not in text
    # What is stored is the keyed hash (and the public id), nothing that yields the key.
    digest = hmac.new(SECRET, issued[1].key.encode(), hashlib.sha256).hexdigest()
    everything = "\n".join(contents)
    assert digest in everything
    assert hashlib.sha256(issued[1].key.encode()).hexdigest() not in everything
    assert SECRET.decode() not in everything


def test_layout(keys: ApiKeys, backend: Backend) -> None:
    issued = keys.create("alice")
    contents = backend.dump()
    assert record_key(issued.key_id) == f"tw:key:{{{issued.key_id}}}"
    assert index_key("alice") == "tw:{alice}:keys"
    assert record_key(issued.key_id) in contents
    assert index_key("alice") in contents
    assert issued.key_id in "\n".join(contents)


def test_the_index_shares_the_subjects_hash_tag() -> None:
    """The subject's index shares the subject's slot (its counters' hash tag)."""
    from redis.crc import key_slot

    assert key_slot(index_key("alice").encode()) == key_slot(b"tw:{alice}")
    assert key_slot(record_key("abcdefgh").encode()) == key_slot(b"abcdefgh")


def test_a_key_checked_with_another_secret_is_refused(backend: Backend) -> None:
    issued = ApiKeys(backend.tw, secret=SECRET).create("alice")
    assert ApiKeys(backend.tw, secret=OTHER_SECRET).verify(issued.key) is None
    assert ApiKeys(backend.tw, secret=SECRET.decode()).verify(issued.key) == "alice"


def tampered(key: str) -> list[object]:
    def flip(i: int) -> str:
        return key[:i] + ("A" if key[i] != "A" else "B") + key[i + 1 :]

    return [
        flip(len(key) - 1),  # last character of the secret
        flip(20),  # inside the secret
        key[:5] + ("b" if key[5] != "b" else "c") + key[6:],  # inside the id
        key[:-1],
        key + "A",
        key[:20],
        "tx" + key[2:],
        "TW" + key[2:],
        key.replace("tw_", "", 1),
        key[:11] + "-" + key[12:],
        key.upper(),
        " " + key,
        key + "\n",
        "Bearer " + key,
        "",
        "tw_",
        "tw__",
        "x" * 10_000_000,
        key * 1000,
        key[:-1] + "é",
        key[:-1] + "\udcff",
        key[:-1] + "\x00",
        "tw_" + "é" * 8 + "_" + key[12:],
        None,
        b"tw_abc",
        key.encode(),
        42,
        [key],
    ]


def test_tampered_and_malformed_keys_are_refused_never_raise(keys: ApiKeys) -> None:
    key = keys.create("alice").key
    for candidate in tampered(key):
        assert candidate != key
        assert keys.verify(candidate) is None, repr(candidate)[:80]  # type: ignore[arg-type]
    assert keys.verify(key) == "alice"


def test_comparison_is_constant_time(keys: ApiKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    issued = keys.create("alice")
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what tollway.keys calls
    wrong = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")
    assert keys.verify(wrong) is None
    assert len(calls) == 1
    presented, stored = calls[0]
    assert presented == hmac.new(SECRET, wrong.encode(), hashlib.sha256).hexdigest().encode()
    assert stored == hmac.new(SECRET, issued.key.encode(), hashlib.sha256).hexdigest().encode()

    # An unknown id costs the same comparison (against a dummy digest).
    unknown = "tw_" + ("a" if issued.key_id[0] != "a" else "b") + issued.key[4:]
    assert keys.verify(unknown) is None
    assert len(calls) == 2

    assert keys.verify(issued.key) == "alice"
    assert len(calls) == 3


# ------------------------------------------------------------------------------ arguments


def test_the_secret_is_required_and_names_the_variable(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match=SECRET_ENV):
        ApiKeys(backend.tw)
    with pytest.raises(ConfigurationError, match=SECRET_ENV):
        ApiKeys(backend.tw, secret="")
    with pytest.raises(ConfigurationError, match="at least 16"):
        ApiKeys(backend.tw, secret="short")
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    issued = ApiKeys(backend.tw).create("alice")
    assert ApiKeys(backend.tw, secret=SECRET).verify(issued.key) == "alice"
    assert SECRET.decode() not in repr(ApiKeys(backend.tw))


@pytest.mark.parametrize("subject", ["", "a\nb", "x" * (MAX_SUBJECT + 1), 7])
def test_bad_subjects(keys: ApiKeys, subject: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="subject"):
        keys.create(subject)
    with pytest.raises(InvalidArgumentError, match="subject"):
        keys.list(subject)


@pytest.mark.parametrize("key_id", ["", "abc", "ABCDEFGH1", "abcdefg1", "tw_abcdefgh", 5])
def test_bad_key_ids(keys: ApiKeys, key_id: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="key id"):
        keys.revoke(key_id)
    with pytest.raises(InvalidArgumentError, match="key id"):
        keys.rotate(key_id, overlap=1)


def test_unknown_key_ids(keys: ApiKeys) -> None:
    with pytest.raises(UnknownNameError, match="abcdefgh"):
        keys.revoke("abcdefgh")
    with pytest.raises(UnknownNameError, match="abcdefgh"):
        keys.rotate("abcdefgh", overlap=1)
    with pytest.raises(UnknownNameError):
        keys.get("abcdefgh")
    assert keys.list("alice") == []  # nothing was created on the way


def test_a_key_id_is_taken_case_insensitively_or_from_the_whole_key(keys: ApiKeys) -> None:
    issued = keys.create("alice")
    assert keys.get(issued.key_id.upper()).key_id == issued.key_id
    keys.revoke(issued.key)
    assert keys.verify(issued.key) is None


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "10", True])
def test_bad_durations(keys: ApiKeys, value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="expires_in"):
        keys.create("alice", expires_in=value)
    issued = keys.create("alice")
    if value != 0:
        with pytest.raises(InvalidArgumentError, match="overlap"):
            keys.rotate(issued.key_id, overlap=value)
    assert keys.verify(issued.key) == "alice"


def test_a_dead_store_is_an_error_not_a_refusal(make_redis_server: Any) -> None:
    """The middleware answers 503 when the store is away, never 401 for a good key."""
    server = make_redis_server()
    tw = Tollway({**POLICY, "store": {"timeout_ms": 200}}, server.url)
    keys = ApiKeys(tw, secret=SECRET)
    issued = keys.create("alice")
    server.kill()
    with pytest.raises(StoreError):
        keys.verify(issued.key)
    assert keys.verify("not a key") is None  # malformed: refused without asking the store
    tw.close()


def test_other_stores_are_refused() -> None:
    class Custom:
        url = "custom://"

    tw = Tollway(POLICY, "memory://")
    tw._store = Custom()  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="memory or the Redis store") as refused:
        ApiKeys(tw, secret=SECRET)
    assert "open the Tollway on memory:// or a redis:// URL" in str(refused.value)


# ------------------------------------------------------------------------------ the command


@pytest.fixture
def cli(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str, str]]:
    config = tmp_path / "tollway.toml"
    config.write_text(TOML, encoding="utf-8")
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())

    def call(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", str(config), "--store", redis_url])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


@pytest.fixture
def on_redis(redis_url: str) -> Iterator[ApiKeys]:
    with Tollway(POLICY, redis_url) as tw:
        yield ApiKeys(tw, secret=SECRET)


def test_cli_create_prints_a_key_that_verifies(cli: Any, on_redis: ApiKeys) -> None:
    code, out, err = cli("keys", "create", "alice", "--label", "ci")
    assert code == 0
    key = out.strip()
    assert out == key + "\n"
    assert "shown" in err
    assert "cannot be shown again" in err
    assert on_redis.verify(key) == "alice"
    assert [info.label for info in on_redis.list("alice")] == ["ci"]


def test_cli_create_json_and_expiry(cli: Any, on_redis: ApiKeys) -> None:
    code, out, _ = cli("keys", "create", "alice", "--json", "--expires-in", "3600")
    assert code == 0
    issued = json.loads(out)
    assert issued["subject"] == "alice"
    assert issued["expires_at"].endswith("Z")
    assert on_redis.verify(issued["key"]) == "alice"


def test_cli_list_revoke_rotate(cli: Any, on_redis: ApiKeys) -> None:
    first = on_redis.create("alice", label="one")
    second = on_redis.create("alice")

    code, out, _ = cli("keys", "list", "alice")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["KEY", "ID"]
    assert {first.key_id, second.key_id} == {line.split()[0] for line in lines[1:]}
    assert first.key not in out

    code, out, _ = cli("keys", "revoke", first.key_id)
    assert code == 0
    assert out.startswith(f"revoked API key {first.key_id} of alice")
    assert on_redis.verify(first.key) is None
    assert on_redis.verify(second.key) == "alice"

    code, out, err = cli("keys", "rotate", second.key_id, "--overlap", "0")
    assert code == 0
    assert on_redis.verify(out.strip()) == "alice"
    assert on_redis.verify(second.key) is None
    assert "cannot be shown again" in err

    code, out, _ = cli("keys", "list", "alice", "--json")
    assert code == 0
    states = sorted(info["state"] for info in json.loads(out))
    assert states == ["active", "expired", "revoked"]
    assert "digest" not in out

    code, out, _ = cli("keys", "list", "nobody")
    assert (code, out) == (0, "nobody: no API keys\n")


def test_cli_errors_exit_2(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli("keys", "revoke", "abcdefgh")
    assert code == 2
    assert "no API key 'abcdefgh'" in err
    code, _, err = cli("keys", "revoke", "not-an-id")
    assert code == 2
    assert "is not a key id" in err
    code, _, err = cli("keys", "rotate", "abcdefgh")
    assert code == 2
    assert "--overlap" in err
    code, _, err = cli("keys", "create", "alice", "--expires-in", "0")
    assert code == 2
    assert "expires_in" in err
    monkeypatch.delenv(SECRET_ENV)
    code, out, err = cli("keys", "create", "alice")
    assert (code, out) == (2, "")
    assert SECRET_ENV in err
    assert "Traceback" not in err


def test_cli_keys_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys"]) == 2
    assert "create" in capsys.readouterr().err
    for command in ("create", "list", "revoke", "rotate"):
        assert main(["keys", command, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: tollway keys {command}")
        assert "--config FILE" in out
        assert "--store URL" in out


def test_cli_create_on_the_memory_store_refuses_to_print_a_key_that_dies_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tollway.toml"
    config.write_text(TOML, encoding="utf-8")  # no [store]: memory://
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    for argv in (["--config", str(config)], ["--config", str(config), "--store", "memory://"]):
        code = main(["keys", "create", "alice", *argv])
        captured = capsys.readouterr()
        assert (code, captured.out) == (2, "")  # no key printed
        assert "memory://" in captured.err
        assert "gone when it exits" in captured.err
        assert "--store redis://HOST:PORT/DB" in captured.err
        assert "tw_" not in captured.err
        assert "Traceback" not in captured.err
