"""The audit log's hash chain on SQLite and PostgreSQL: appended, read newest first, verified;
an edited, a deleted, a first and a last record deleted behind the ledger's back are each
found; big documents are cut, never failing; four processes appending at once never fork it."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest

from admin_support import ROOT, raw
from processes import run_together
from tollway.admin.audit import (
    GENESIS,
    JSON_MAX,
    append_flow,
    audit_flow,
    canonical,
    record_hash,
)
from tollway.admin.roles import Principal
from tollway.admin.store import AdminStore
from tollway.metering.ledger import open_ledger
from tollway.metering.ledger.flows import Flow
from tollway.metering.ledger.outbox import Dialect
from tollway.testing import FakeClock


def fill(url: str, count: int) -> AdminStore:
    ledger = open_ledger(url)
    admin = AdminStore(ledger, clock=FakeClock())
    for i in range(count):
        admin.audit(
            ROOT,
            "subjects.reset",
            f"acme:{i}",
            before={"used": i, "limit": "hourly"},
            after={"used": 0, "limit": "hourly"},
            request_id=f"req-{i}",
            client="127.0.0.1",
        )
    return admin


def test_records_chain_and_verify(billing_ledger_url: str) -> None:
    admin = fill(billing_ledger_url, 30)
    try:
        report = admin.verify()
        assert (report.ok, report.checked, report.first_bad_seq, report.head_seq) == (
            True,
            30,
            None,
            30,
        )
        log = admin.audit_log(limit=1000)
        assert [r.seq for r in log] == list(range(30, 0, -1))
        assert log[-1].prev_hash == GENESIS
        assert all(new.prev_hash == old.hash for new, old in itertools.pairwise(log))
        assert report.head_hash == log[0].hash
        first = log[-1].to_dict()
        assert first["actor"] == {"id": "cli", "name": "cli:test", "role": "admin"}
        assert first["before"] == {"used": 0, "limit": "hourly"}
        assert (first["target"], first["request_id"], first["client"]) == (
            "acme:0",
            "req-0",
            "127.0.0.1",
        )
    finally:
        admin.ledger.close()


def test_pages_newest_first_with_a_cursor(billing_ledger_url: str) -> None:
    admin = fill(billing_ledger_url, 12)
    try:
        pages, before = [], None
        while True:
            page = admin.audit_log(limit=5, before_seq=before)
            if not page:
                break
            pages.append([r.seq for r in page])
            before = page[-1].seq
        assert pages == [[12, 11, 10, 9, 8], [7, 6, 5, 4, 3], [2, 1]]
        assert len(admin.audit_log(limit=10**9)) == 12  # bounded, never refused
    finally:
        admin.ledger.close()


def test_an_empty_log_verifies() -> None:
    with open_ledger("sqlite:///:memory:") as ledger:
        report = AdminStore(ledger).verify()
    assert (report.ok, report.checked, report.head_seq, report.head_hash) == (True, 0, 0, GENESIS)


def test_an_edited_record_is_named(billing_ledger_url: str) -> None:
    admin = fill(billing_ledger_url, 10)
    try:
        raw(
            billing_ledger_url,
            "UPDATE admin_audit SET after_json = %s WHERE seq = 6",
            ('{"limit":"hourly","used":999}',),
        )
        report = admin.verify()
        assert (report.ok, report.first_bad_seq, report.checked) == (False, 6, 5)
        assert "does not match its hash; the record was edited" in report.reason
    finally:
        admin.ledger.close()


@pytest.mark.parametrize("column", ["actor_name", "role", "client", "at_us", "prev_hash"])
def test_any_edited_field_is_found(billing_ledger_url: str, column: str) -> None:
    admin = fill(billing_ledger_url, 4)
    try:
        value: Any = 1 if column == "at_us" else "x"
        raw(billing_ledger_url, f"UPDATE admin_audit SET {column} = %s WHERE seq = 2", (value,))
        report = admin.verify()
        assert (report.ok, report.first_bad_seq) == (False, 2)
    finally:
        admin.ledger.close()


def test_an_edit_rehashed_in_place_breaks_the_next_link(billing_ledger_url: str) -> None:
    admin = fill(billing_ledger_url, 5)
    try:
        record = admin.audit_log(limit=5)[-3]  # seq 3
        assert record.seq == 3
        fields = {**dataclasses.asdict(record), "after": canonical({"used": 999})}
        raw(
            billing_ledger_url,
            "UPDATE admin_audit SET after_json = %s, hash = %s WHERE seq = 3",
            (fields["after"], record_hash(fields)),
        )
        report = admin.verify()
        assert (report.ok, report.first_bad_seq) == (False, 4)
        assert "prev_hash does not link to seq 3" in report.reason
    finally:
        admin.ledger.close()


@pytest.mark.parametrize(("seq", "bad"), [(5, 5), (1, 1)])
def test_a_deleted_record_is_found(billing_ledger_url: str, seq: int, bad: int) -> None:
    admin = fill(billing_ledger_url, 10)
    try:
        raw(billing_ledger_url, "DELETE FROM admin_audit WHERE seq = %s", (seq,))
        report = admin.verify()
        assert (report.ok, report.first_bad_seq) == (False, bad)
        assert report.reason == f"missing: deleted (the next record is seq {seq + 1})"
    finally:
        admin.ledger.close()


def test_deleting_the_last_records_is_found(billing_ledger_url: str) -> None:
    admin = fill(billing_ledger_url, 10)
    try:
        raw(billing_ledger_url, "DELETE FROM admin_audit WHERE seq = 10")
        report = admin.verify()
        assert (report.ok, report.first_bad_seq, report.checked) == (False, 10, 9)
        assert "the chain ends at seq 9 but the head says 10" in report.reason
        raw(billing_ledger_url, "DELETE FROM admin_audit WHERE seq >= 7")
        report = admin.verify()
        assert (report.ok, report.first_bad_seq) == (False, 7)
        assert "the last 4 record(s) were deleted" in report.reason
    finally:
        admin.ledger.close()


def test_an_edited_or_missing_head_is_found(billing_ledger_url: str) -> None:
    admin = fill(billing_ledger_url, 3)
    try:
        raw(billing_ledger_url, "UPDATE admin_audit_head SET hash = %s", ("f" * 64,))
        report = admin.verify()
        assert (report.ok, report.first_bad_seq) == (False, 3)
        assert "its hash is not the head's" in report.reason
        raw(billing_ledger_url, "DELETE FROM admin_audit_head")
        report = admin.verify()
        assert not report.ok and "head record (admin_audit_head) is missing" in report.reason
        added = admin.audit(ROOT, "tokens.write", "x")  # appending goes on from the last row
        assert (added.seq, added.prev_hash) == (4, admin.audit_log(limit=2)[1].hash)
        assert "is missing" in admin.verify().reason  # and the loss stays reported
    finally:
        admin.ledger.close()


def test_big_or_odd_documents_are_cut_never_failing(billing_ledger_url: str) -> None:
    admin = fill(billing_ledger_url, 0)
    try:
        circular: dict[str, Any] = {}
        circular["self"] = circular
        big = {"blob": "x" * (JSON_MAX + 10)}
        record = admin.audit(
            ROOT,
            "policies.write",
            "t" * 5000,
            before=big,
            after=circular,
            request_id="r" * 10_000,
            client="c" * 10_000,
        )
        doc = record.to_dict()
        assert doc["before"]["truncated"] is True and doc["before"]["bytes"] > JSON_MAX
        assert len(record.before.encode()) <= JSON_MAX
        assert doc["after"]["unserializable"] is True
        assert len(record.target) == 1024 and record.target.endswith("…")
        assert len(record.request_id) == 256 and len(record.client) == 256
        exact = admin.audit(ROOT, "policies.write", "p", after={"s": "y" * (JSON_MAX - 20)})
        assert json.loads(exact.after) == {"s": "y" * (JSON_MAX - 20)}
        odd = admin.audit(ROOT, "policies.write", "p", after={"when": object.__name__, "n": 1.5})
        assert json.loads(odd.after) == {"n": 1.5, "when": "object"}
        assert admin.verify().ok
    finally:
        admin.ledger.close()


def test_append_runs_inside_the_callers_transaction(billing_ledger_url: str) -> None:
    """A mutation and its record commit together, or neither does."""

    class Boom(Exception):
        pass

    def mutation(dialect: Dialect) -> Flow[None]:
        yield from append_flow(
            dialect, at_us=1, actor_id="cli", actor_name="t", role="admin", action="a", target="x"
        )
        raise Boom

    with open_ledger(billing_ledger_url) as ledger:
        with pytest.raises(Boom):
            ledger.transact(lambda: mutation(ledger.dialect))
        admin = AdminStore(ledger)
        assert admin.audit_log() == []
        assert admin.verify().head_seq == 0


def _append_many(url: str, worker: int, count: int, barrier: Any, results: Any) -> None:
    try:
        with open_ledger(url) as ledger:
            admin = AdminStore(ledger)
            barrier.wait()
            for i in range(count):
                admin.audit(ROOT, "subjects.reset", f"w{worker}:{i}", after={"i": i})
        results.put(worker)
    except BaseException as exc:  # reported by run_together
        results.put(exc)


def test_four_processes_appending_at_once_keep_one_chain(billing_ledger_url: str) -> None:
    open_ledger(billing_ledger_url).close()  # migrated before the race
    per = 40
    done = run_together(_append_many, [(billing_ledger_url, w, per) for w in range(4)])
    assert sorted(done) == [0, 1, 2, 3]
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger)
        report = admin.verify()
        assert (report.ok, report.checked, report.head_seq) == (True, 4 * per, 4 * per)
        seqs = [r.seq for r in admin.audit_log(limit=1000)]
        assert seqs == list(range(4 * per, 0, -1))
        targets = {r.target for r in admin.audit_log(limit=1000)}
        assert targets == {f"w{w}:{i}" for w in range(4) for i in range(per)}


def test_hostile_text_is_kept_safely_on_every_database(billing_ledger_url: str) -> None:
    """A NUL (PostgreSQL's text refuses it) or a lone surrogate (no UTF-8 for it) in any field
    is escaped, never failing the change, and the chain still verifies."""
    admin = fill(billing_ledger_url, 0)
    try:
        nasty = "a\x00b\ud800c'; DROP TABLE admin_audit; --"
        record = admin.audit(
            ROOT,
            "subjects.reset",
            nasty,
            before={nasty: nasty},
            after=[nasty],
            request_id=nasty,
            client=nasty,
        )
        assert "\x00" not in record.target and "\\x00" in record.target
        assert record.target.encode()  # encodable: no lone surrogate left
        assert json.loads(record.before) == {nasty: nasty}  # JSON keeps it exactly, escaped
        stored = admin.audit_log()[0]
        assert stored == record
        assert admin.verify().ok
    finally:
        admin.ledger.close()


def test_a_principal_is_recorded_as_the_actor(billing_ledger_url: str) -> None:
    who = Principal(token_id="adm_00000000000000aa", name="desk", role="support", scope="acme:")
    with open_ledger(billing_ledger_url) as ledger:
        record = ledger.transact(
            lambda: audit_flow(ledger.dialect, who, "subjects.reset", "acme:1", at_us=5)
        )
        assert (record.actor_id, record.actor_name) == (who.token_id, "desk")
        assert record.role == "support"
        assert (record.at_us, record.before, record.after) == (5, "null", "null")
