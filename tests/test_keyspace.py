"""How user text becomes store keys (`tollway.keyspace`): injective, one subject in one slot.

The encoding's properties are checked with hypothesis against redis-py's own hash-slot function
(the Redis Cluster spec's hash-tag rule); hostile subjects then run on a real standalone Redis
and a real 3-master Cluster: each gets exactly its quota, whatever it holds.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from model import day_safe_timezone
from tollway import AsyncTollway, Tollway
from tollway.engine.decision import DuplicateDecision
from tollway.errors import InvalidArgumentError
from tollway.events import REGISTRY, slot_of
from tollway.keys import ApiKeys
from tollway.keyspace import MAX_SUBJECT, key_text, text_of
from tollway.metering.reconcile import store_subjects
from tollway.policy.fields import NAME_PATTERN
from tollway.stores.key_ops import index_key, record_key
from tollway.stores.redis_codec import request_key_part, state_key, subject_of

TZ = day_safe_timezone()
PRIMARIES = redis.cluster.RedisCluster.PRIMARIES
SECRET = "k" * 32
QUOTA = 3

# Each alone, then the lookalikes of every kind of key that hangs below a subject's hash.
_HOSTILE = [
    *string.punctuation,
    string.punctuation,
    "}victim",
    "{victim",
    "}{",
    "{}",
    "}",
    "victim}",
    "{victim}",
    "tw:{victim}",
    "victim}:id:X",
    "victim}:h:abc",
    "victim}:holds",
    "victim}:keys",
    "victim}:j:evt_1",
    "e1}:events",
    "victim",
    "%7D",
    "%257D",
    "%",
    "%%}{%",
    "ünïcødé}",
    "😀{𝄞}🂡",
    "\U0010fffd}",
    "}" * MAX_SUBJECT,
    ("{a}%😀" * MAX_SUBJECT)[:MAX_SUBJECT],
]
HOSTILE = list(dict.fromkeys(_HOSTILE))


def policy(tmp: Path) -> dict[str, Any]:
    """One quota, and usage events into a ledger: a step also writes the subject's stream,
    which must share its slot."""
    return {
        "store": {"timeout_ms": 5000, "on_error": "closed"},
        "defaults": {"plan": "free"},
        "operations": {"geocode": {"cost": 1, "price": "0.005 USD"}},
        "plans": {
            "free": {"limits": [{"name": "daily", "quota": f"{QUOTA}/day", "timezone": TZ}]},
            "pro": {"limits": [{"name": "daily", "quota": "100/day", "timezone": TZ}]},
        },
        "ledger": {"url": f"sqlite:///{tmp / 'l.db'}", "flush_ms": 60_000},
    }


# -- the encoding, alone --------------------------------------------------------------------


def test_plain_subjects_are_their_own_key_text() -> None:
    plain = string.ascii_letters + string.digits + "_-.:@/ ü😀"
    assert key_text(plain) == plain
    assert state_key("acct:42/a_b-c.d@e") == "tw:{acct:42/a_b-c.d@e}"
    assert index_key("acct:42") == "tw:{acct:42}:keys"
    assert record_key("abcdefgh") == "tw:key:{abcdefgh}"


def test_only_the_escape_and_braces_are_escaped() -> None:
    assert key_text("a%b{c}d") == "a%25b%7Bc%7Dd"
    assert state_key("victim}:id:X") == "tw:{victim%7D:id:X}"
    assert text_of("a%25b%7Bc%7Dd") == "a%b{c}d"


@pytest.mark.parametrize("part", ["a{b", "a}b", "%", "%2", "%7b", "%7d", "%41", "a%", "%7D{"])
def test_text_of_refuses_what_no_text_encodes_to(part: str) -> None:
    assert text_of(part) is None


@given(st.text(max_size=64))
def test_key_text_has_no_brace_and_decodes_back(text: str) -> None:
    encoded = key_text(text)
    assert "{" not in encoded
    assert "}" not in encoded
    assert text_of(encoded) == text


@given(st.text(alphabet="%{}7BD25ab:", max_size=12), st.text(alphabet="%{}7BD25ab:", max_size=12))
def test_key_text_is_injective(one: str, other: str) -> None:
    if one != other:
        assert key_text(one) != key_text(other)
        assert state_key(one) != state_key(other)
        assert index_key(one) != index_key(other)


SUBJECTS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@given(SUBJECTS, st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_every_key_of_a_subject_is_in_its_slot(subject: str, request_id: str) -> None:
    key = state_key(subject)
    keys = [
        key,
        f"{key}:holds",
        f"{key}:h:0123abcd",
        f"{key}:j:evt_1",
        f"{key}:id:{request_id}",
        f"{key}:id:{request_key_part('geocode', request_id)}",
        index_key(subject),
    ]
    assert {key_slot(k.encode()) for k in keys} == {slot_of(subject)}


@given(SUBJECTS, SUBJECTS)
def test_no_key_of_a_subject_is_a_key_of_another(one: str, other: str) -> None:
    """Each subject's keys are ``tw:{TAG}`` plus a suffix: with no brace in the tag, the first
    ``}`` ends it, so two subjects never share a key (even with a forged suffix)."""
    if one == other:
        return
    forged = other + "}:id:X"
    assert state_key(one) != state_key(forged)
    assert f"{state_key(one)}:id:X}}" != state_key(forged)
    assert not (state_key(one) + ":").startswith(state_key(other) + ":")


@given(SUBJECTS)
def test_subject_of_reads_a_state_key_back(subject: str) -> None:
    assert subject_of(state_key(subject)) == subject
    assert subject_of(state_key(subject).encode()) == subject


@pytest.mark.parametrize(
    "key",
    [
        "tw:{victim}:id:X}",  # a request id ending in '}' below a subject's hash
        "tw:{a}b{c}",  # a subject holding braces, written before they were escaped
        "tw:{}",
        "tw:{50%}",
        "tw:{e1}:events",
        b"tw:{\xff}",
    ],
)
def test_subject_of_is_none_for_other_keys(key: str | bytes) -> None:
    assert subject_of(key) is None


def test_request_key_part_names_one_operation_and_id() -> None:
    assert request_key_part("geocode", "abc") == "geocode:abc"
    assert request_key_part("geocode", "a}b") == "geocode:a%7Db"


OPERATIONS = st.from_regex(NAME_PATTERN, fullmatch=True)


@given(OPERATIONS, SUBJECTS, OPERATIONS, SUBJECTS)
def test_request_key_part_is_injective(op: str, ident: str, other_op: str, other: str) -> None:
    """A policy's operation name holds no ':', so the first one ends it."""
    if (op, ident) != (other_op, other):
        assert request_key_part(op, ident) != request_key_part(other_op, other)
    assert "{" not in request_key_part(op, ident)
    assert "}" not in request_key_part(op, ident)


def test_a_subject_longer_than_the_bound_is_refused_by_name(tmp_path: Path) -> None:
    with Tollway(policy(tmp_path)) as tw:
        assert tw.acquire("x" * MAX_SUBJECT, "geocode").allowed
        subject = "y" * (MAX_SUBJECT + 1)
        with pytest.raises(InvalidArgumentError) as caught:
            tw.acquire(subject, "geocode")
        message = str(caught.value)
        assert message.startswith("subject: ")
        assert repr("y" * 80) in message
        assert str(MAX_SUBJECT + 1) in message
        assert f"at most {MAX_SUBJECT}" in message
        assert len(message) < 300


# -- hostile subjects on real servers ---------------------------------------------------------


@pytest.fixture(params=["standalone", "cluster"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """(url, client) of a flushed standalone Redis or 3-master Cluster."""
    if request.param == "standalone":
        yield request.getfixturevalue("redis_url"), request.getfixturevalue("redis_client")
    else:
        url = request.getfixturevalue("redis_cluster_url")
        yield url, request.getfixturevalue("redis_cluster_client")


def _all_keys(client: Any) -> set[bytes]:
    if isinstance(client, redis.cluster.RedisCluster):
        return set(client.keys("*", target_nodes=PRIMARIES))
    return set(client.keys("*"))


def _allowed(tw: Tollway, subject: str, times: int, **call: Any) -> int:
    return sum(tw.acquire(subject, "geocode", **call).allowed for _ in range(times))


def test_hostile_subjects_each_get_exactly_their_quota(
    server: tuple[str, Any], tmp_path: Path
) -> None:
    url, client = server
    with Tollway(policy(tmp_path), url) as tw:
        seen: set[bytes] = set()
        for subject in HOSTILE:
            held = tw.reserve(subject, "geocode")  # a hold beside the counters
            assert held.allowed, subject
            held.commit(1)
            assert _allowed(tw, subject, QUOTA + 2) == QUOTA - 1, subject
            assert tw.usage(subject).limit("daily").used == QUOTA, subject
            keys = _all_keys(client) - seen
            assert state_key(subject).encode() in keys, subject
            if isinstance(client, redis.cluster.RedisCluster):
                # the subject's keys and its event stream (a new one, or one seen before)
                slots = {client.keyslot(key) for key in keys if key != REGISTRY.encode()}
                assert slots == {slot_of(subject)}, subject
            seen |= keys
        # nothing one subject did moved another's counters
        for subject in HOSTILE:
            assert tw.usage(subject).limit("daily").used == QUOTA, subject
        # a SCAN finds each subject once, and nothing else (no request id, no hold)
        assert sorted(store_subjects(tw.store)) == sorted(HOSTILE)


def test_reservations_plans_and_resets_of_hostile_subjects(
    server: tuple[str, Any], tmp_path: Path
) -> None:
    url, _ = server
    subjects = ["victim", "victim}:holds", "victim}:h:x", "}{", "%7D"]
    with Tollway(policy(tmp_path), url) as tw:
        for subject in subjects:
            held = tw.reserve(subject, "geocode", 2)
            assert held.allowed, subject
            held.commit(1)
        for subject in subjects:
            assert tw.usage(subject).limit("daily").used == 1, subject
        tw.assign("victim}:holds", "pro")
        assert tw.plan_of("victim}:holds") == "pro"
        assert tw.plan_of("victim") == "free"
        assert tw.reset("}{") == 1
        assert tw.usage("}{").limit("daily").used == 0
        assert tw.usage("%7D").limit("daily").used == 1


@pytest.mark.parametrize("subject_first", [True, False], ids=["subject-first", "id-first"])
def test_a_subject_cannot_forge_another_subjects_request_id(
    server: tuple[str, Any], tmp_path: Path, subject_first: bool
) -> None:
    """The issue's report: ``victim}:id:X`` used to be the very key marking ``victim``'s
    request id ``X}`` (so that id was a duplicate forever, or the subject's step hit
    WRONGTYPE)."""
    url, _ = server
    with Tollway(policy(tmp_path), url) as tw:
        if subject_first:
            assert _allowed(tw, "victim}:id:X", QUOTA + 2) == QUOTA
        first = tw.acquire("victim", "geocode", id="X}")
        assert first.allowed
        assert not isinstance(first, DuplicateDecision)
        assert tw.usage("victim").limit("daily").used == 1
        others = [tw.acquire("victim", "geocode", id=f"X{n}}}").allowed for n in range(9)]
        assert sum(others) == QUOTA - 1
        if not subject_first:
            assert _allowed(tw, "victim}:id:X", QUOTA + 2) == QUOTA
        assert tw.usage("victim").limit("daily").used == QUOTA
        assert tw.usage("victim}:id:X").limit("daily").used == QUOTA


def test_a_nul_in_a_subject_is_refused_and_consumes_nothing(
    server: tuple[str, Any], tmp_path: Path
) -> None:
    url, client = server
    with Tollway(policy(tmp_path), url) as tw, pytest.raises(InvalidArgumentError, match="subj"):
        tw.acquire("victim\x00}", "geocode")
    assert _all_keys(client) == set()


def test_api_keys_of_hostile_subjects_stay_apart(server: tuple[str, Any], tmp_path: Path) -> None:
    url, client = server
    subjects = ["victim", "victim}:keys", "{victim}", "victim%7D:keys", "😀}"]
    with Tollway(policy(tmp_path), url) as tw:
        keys = ApiKeys(tw, secret=SECRET)
        issued = {subject: keys.create(subject) for subject in subjects}
        for subject, key in issued.items():
            assert keys.verify(key.key) == subject
            assert [info.key_id for info in keys.list(subject)] == [key.key_id]
            index = index_key(subject).encode()
            assert index in _all_keys(client)
            if isinstance(client, redis.cluster.RedisCluster):
                assert client.keyslot(index) == slot_of(subject)


def test_api_keys_of_hostile_subjects_stay_apart_in_memory(tmp_path: Path) -> None:
    subjects = ["victim", "victim}:keys", "{victim}", "victim%7D:keys"]
    with Tollway(policy(tmp_path)) as tw:
        keys = ApiKeys(tw, secret=SECRET)
        issued = {subject: keys.create(subject) for subject in subjects}
        for subject, key in issued.items():
            assert [info.key_id for info in keys.list(subject)] == [key.key_id]


def test_a_store_written_with_the_old_layout_still_reads(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Before subjects were escaped a subject's hash was ``"tw:{" + subject + "}"``: a plain
    subject's hash written so (here copied under that literal name from another subject's)
    is read as the subject's own."""
    with Tollway(policy(tmp_path), redis_url) as tw:
        assert _allowed(tw, "donor", 2) == 2
        fields = redis_client.hgetall(b"tw:{donor}")
    old = "acct:old/a_b-c.d@e"
    redis_client.hset("tw:{" + old + "}", mapping=fields)
    with Tollway(policy(tmp_path), redis_url) as tw:
        assert tw.usage(old).limit("daily").used == 2
        assert _allowed(tw, old, QUOTA) == QUOTA - 2
    assert set(redis_client.keys("tw:{acct:old*")) == {("tw:{" + old + "}").encode()}


async def test_hostile_subjects_on_the_async_face(server: tuple[str, Any], tmp_path: Path) -> None:
    url, _ = server
    subjects = ["victim", "victim}:id:X", "}victim", "{", "😀}{"]
    async with AsyncTollway(policy(tmp_path), url) as tw:
        for subject in subjects:
            decisions = [await tw.acquire(subject, "geocode") for _ in range(QUOTA + 2)]
            assert sum(d.allowed for d in decisions) == QUOTA, subject
        first = await tw.acquire("victim", "geocode", id="X}")
        assert not first.allowed  # counted against victim's spent quota, not a duplicate
        assert not isinstance(first, DuplicateDecision)
        for subject in subjects:
            assert (await tw.usage(subject)).limit("daily").used == QUOTA, subject
