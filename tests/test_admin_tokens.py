"""Admin tokens on SQLite and PostgreSQL: created (hash only kept), authenticated, refused when
wrong, expired or revoked, scoped; hostile input refused clearly and cheaply."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from admin_support import ROOT, raw
from tollway.admin.roles import require
from tollway.admin.store import AdminStore, AsyncAdminStore
from tollway.admin.tokens import RAW_MAX, TOUCH_US
from tollway.clock import US
from tollway.errors import (
    ForbiddenError,
    InvalidArgumentError,
    UnauthorizedError,
    UnknownNameError,
    UnknownTokenError,
)
from tollway.metering.ledger import open_async_ledger, open_ledger
from tollway.testing import FakeClock

DAY = 86_400


def test_create_then_authenticate(billing_ledger_url: str) -> None:
    clock = FakeClock()
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger, clock=clock)
        created = admin.create_token(name="ops", role="operator", ttl_s=90 * DAY, actor=ROOT)
        assert created.raw.startswith("tw_admin_") and len(created.raw) == 9 + 43
        info = created.token
        assert info.id.startswith("adm_") and len(info.id) == 20
        assert (info.name, info.role, info.scope) == ("ops", "operator", None)
        assert info.expires_at_us == clock() + 90 * DAY * US
        assert info.created_by == "cli (cli:test)"
        who = admin.authenticate(created.raw)
        assert (who.token_id, who.name, who.role, who.scope) == (info.id, "ops", "operator", None)
        assert admin.list_tokens()[0].last_used_at_us == clock()
    # only the sha256 is stored: the raw token is nowhere in the table
    stored = raw(billing_ledger_url, "SELECT * FROM admin_tokens")
    assert hashlib.sha256(created.raw.encode()).hexdigest() in stored[0]
    assert not any(created.raw in str(cell) for cell in stored[0])


def test_two_tokens_get_distinct_ids_and_secrets(billing_ledger_url: str) -> None:
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger)
        made = [
            admin.create_token(name=f"t{i}", role="viewer", ttl_s=None, actor=ROOT)
            for i in range(5)
        ]
        assert len({c.token.id for c in made}) == len({c.raw for c in made}) == 5
        assert [t.name for t in admin.list_tokens()] == [f"t{i}" for i in range(5)]
        for c in made:
            assert admin.authenticate(c.raw).token_id == c.token.id


def test_wrong_expired_and_revoked_tokens_are_refused(billing_ledger_url: str) -> None:
    clock = FakeClock()
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger, clock=clock)
        short = admin.create_token(name="short", role="viewer", ttl_s=3600, actor=ROOT)
        kept = admin.create_token(name="kept", role="admin", ttl_s=None, actor=ROOT)
        wrong = short.raw[:-1] + ("A" if short.raw[-1] != "A" else "B")
        with pytest.raises(UnauthorizedError, match="unknown admin token") as caught:
            admin.authenticate(wrong)
        assert caught.value.reason == "unknown"
        clock.advance(3599)
        assert admin.authenticate(short.raw).name == "short"
        clock.advance(1)
        with pytest.raises(UnauthorizedError, match=f"{short.token.id} is expired") as caught:
            admin.authenticate(short.raw)
        assert caught.value.reason == "expired"
        revoked = admin.revoke_token(kept.token.id, actor=ROOT)
        assert revoked.revoked_at_us == clock()
        with pytest.raises(UnauthorizedError, match="is revoked") as caught:
            admin.authenticate(kept.raw)
        assert caught.value.reason == "revoked"
        # revoking again changes nothing and writes no second audit record
        assert admin.revoke_token(kept.token.id, actor=ROOT) == revoked
        assert [r.action for r in admin.audit_log()] == [
            "tokens.revoke",
            "tokens.create",
            "tokens.create",
        ]
        statuses = {t.name: t.status(clock()) for t in admin.list_tokens()}
        assert statuses == {"short": "expired", "kept": "revoked"}
        with pytest.raises(UnknownTokenError, match="no admin token has id adm_00000000"):
            admin.revoke_token("adm_0000000000000000", actor=ROOT)
        assert issubclass(UnknownTokenError, UnknownNameError)
        with pytest.raises(InvalidArgumentError, match="is not a token id"):
            admin.revoke_token("'; DROP TABLE admin_tokens; --", actor=ROOT)


def test_last_used_is_written_at_most_once_a_minute(billing_ledger_url: str) -> None:
    clock = FakeClock()
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger, clock=clock)
        created = admin.create_token(name="ops", role="viewer", ttl_s=None, actor=ROOT)
        first = clock()
        admin.authenticate(created.raw)
        clock.advance(us=TOUCH_US - 1)
        admin.authenticate(created.raw)
        assert admin.list_tokens()[0].last_used_at_us == first
        clock.advance(us=1)
        admin.authenticate(created.raw)
        assert admin.list_tokens()[0].last_used_at_us == first + TOUCH_US


def test_a_scoped_token_is_held_to_its_scope(billing_ledger_url: str) -> None:
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger)
        created = admin.create_token(
            name="acme-desk", role="support", scope="acme:", ttl_s=DAY, actor=ROOT
        )
        who = admin.authenticate(created.raw)
        assert who.scope == "acme:"
        require(who, "subjects.reset", "acme:7")
        with pytest.raises(ForbiddenError, match="outside it"):
            require(who, "subjects.reset", "globex:7")
        with pytest.raises(ForbiddenError, match="acts on every subject"):
            require(who, "hooks.read")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("role", "root", "'root' is not a role"),
        ("scope", "acme", "'acme' is not a subject prefix"),
        ("scope", "a" * 200 + ":", "is not a subject prefix"),
        ("name", "", "is not a token name"),
        ("name", "x" * 65, "is not a token name"),
        ("name", "bell\x07", "is not a token name"),
        ("ttl_s", 0, "is not a lifetime"),
        ("ttl_s", 3651 * DAY, "is not a lifetime"),
    ],
)
def test_bad_input_is_refused_and_nothing_stored(
    billing_ledger_url: str, field: str, value: object, message: str
) -> None:
    args: dict[str, object] = {"name": "ok", "role": "viewer", "scope": None, "ttl_s": DAY}
    args[field] = value
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger)
        with pytest.raises(InvalidArgumentError, match=message):
            admin.create_token(actor=ROOT, **args)  # type: ignore[arg-type]
        assert admin.list_tokens() == []
        assert admin.audit_log() == []


@pytest.mark.parametrize(
    "bad",
    [
        "x" * 10_240,
        "tw_admin_" + "A" * 10_240,
        "tw_admin_" + "A" * 42,
        "tw_admin_" + "A" * 42 + "!",
        "Bearer tw_admin_" + "A" * 43,
        "",
        None,
        b"tw_admin_" + b"A" * 43,
        "tw_admin_" + "é" * 43,
    ],
)
def test_malformed_tokens_are_refused_before_any_work(billing_ledger_url: str, bad: object) -> None:
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger)
        with pytest.raises(UnauthorizedError, match="not an admin token") as caught:
            admin.authenticate(bad)
        assert caught.value.reason == "malformed"


def test_a_10kb_token_costs_nothing() -> None:
    with open_ledger("sqlite:///:memory:") as ledger:
        admin = AdminStore(ledger)
        huge = "tw_admin_" + "A" * (10 * 1024 * 1024)
        started = time.perf_counter()
        for _ in range(1000):
            with pytest.raises(UnauthorizedError):
                admin.authenticate(huge)
        # refused on its length: no regex over 10 MB, no hash, no query (a generous bound)
        assert time.perf_counter() - started < 1.0
    assert RAW_MAX == 128


def test_the_async_face_shares_the_flows(billing_ledger_url: str) -> None:
    async def main() -> None:
        ledger = await open_async_ledger(billing_ledger_url)
        try:
            admin = AsyncAdminStore(ledger)
            created = await admin.create_token(name="a", role="billing", ttl_s=DAY, actor=ROOT)
            assert (await admin.authenticate(created.raw)).role == "billing"
            await admin.revoke_token(created.token.id, actor=ROOT)
            with pytest.raises(UnauthorizedError, match="revoked"):
                await admin.authenticate(created.raw)
            assert [t.name for t in await admin.list_tokens()] == ["a"]
            log = await admin.audit_log()
            assert [r.action for r in log] == ["tokens.revoke", "tokens.create"]
            assert (await admin.verify()).ok
        finally:
            await ledger.aclose()

    asyncio.run(main())
