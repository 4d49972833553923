"""`tollway serve` end to end: the real command in a subprocess on loopback, a real Redis store
shared with the test's own `Tollway`, a SQLite ledger, admin tokens made by `tollway admin
token create`, and httpx as the client. The admin API's paths, problem+json errors, the RBAC
matrix of every route and every role, scoped tokens, the audit log, and bad input that changes
nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_support import free_port
from metering_e2e_support import to_toml
from tollway import Tollway
from tollway.admin import (
    billing_api,
    control,
    hooks_api,
    keys_api,
    policies_api,
    providers_api,
    subjects,
)
from tollway.admin.roles import PERMISSIONS, ROLES
from tollway.admin.store import AdminStore
from tollway.cli.admin import cli_principal
from tollway.keys import ApiKeys
from tollway.metering.ledger import open_ledger
from tollway.testing import FakeClock

ROLE_NAMES = ROLES
KEY_SECRET = "serve-test-pepper-" + "k" * 40


def policy(redis_url: str, ledger: Path) -> dict[str, Any]:
    return {
        "store": {"url": redis_url},
        "ledger": {"url": f"sqlite:///{ledger}"},
        "defaults": {"plan": "free"},
        "operations": {"search": {"price": "0.01 USD"}},
        "billing": {"currency": "USD"},
        "admin": {"support_grant_max": "5.00 USD", "rate": "1000/s"},
        "providers": {
            "alpha": {"price": "0.005 USD", "limits": [{"name": "daily", "quota": "100/day"}]},
            "beta": {"price": "0 USD", "limits": [{"name": "daily", "quota": "50/day"}]},
        },
        "routes": {"geocoding": {"providers": ["alpha", "beta"]}},
        "plans": {
            "free": {"limits": [{"name": "hourly", "quota": "100/hour"}]},
            "pro": {
                "limits": [
                    {"name": "hourly", "quota": "1000/hour"},
                    {"name": "wallet", "credits": "USD"},
                ]
            },
        },
    }


def tollway(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


class Server:
    def __init__(self, base: str, tokens: dict[str, str], config: Path, redis_url: str) -> None:
        self.base = base
        self.tokens = tokens
        self.config = config
        self.redis_url = redis_url

    def call(self, method: str, path: str, role: str | None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return httpx.request(method, self.base + path, headers=headers, timeout=10, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "tollway.toml"
    config.write_text(to_toml(policy(redis_url, folder / "ledger.db")), encoding="utf-8")
    # One token by the documented command (its raw value alone on the last line), the rest
    # through the same store the command uses.
    made = tollway("admin", "token", "create", "--role", "viewer", "--name", "t-viewer",
                   "--config", str(config))  # fmt: skip
    assert made.returncode == 0, made.stderr
    tokens = {"viewer": made.stdout.strip().splitlines()[-1]}
    with open_ledger(f"sqlite:///{folder / 'ledger.db'}") as ledger:
        store = AdminStore(ledger)
        for role in ROLE_NAMES[1:]:
            tokens[role] = store.create_token(
                name=f"t-{role}", role=role, actor=cli_principal(), ttl_s=3600
            ).raw
        tokens["scoped"] = store.create_token(
            name="t-scoped", role="support", scope="acme:", actor=cli_principal(), ttl_s=3600
        ).raw
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TOLLWAY_KEY_SECRET": KEY_SECRET},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "tollway serve did not start"
            time.sleep(0.05)  # polls the server, with a deadline
        yield Server(base, tokens, config, redis_url)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_subjects_standing_plan_and_reset(server: Server) -> None:
    document = policy(server.redis_url, Path("/unused"))
    document["ledger"] = {"url": f"sqlite:///{server.config.parent / 'ledger.db'}"}
    with Tollway(document) as tw:
        for _ in range(3):
            tw.acquire("srv-a1", "search")
    got = server.call("GET", "/v1/subjects/srv-a1", "viewer")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["subject"] == "srv-a1" and body["plan"] == "free"
    (hourly,) = body["limits"]
    assert (hourly["name"], hourly["kind"], hourly["limit"], hourly["used"]) == (
        "hourly",
        "quota",
        100,
        3,
    )
    assert hourly["remaining"] == 97 and hourly["reset_after"] > 0
    put = server.call("PUT", "/v1/subjects/srv-a1/plan", "operator", json={"plan": "pro"})
    assert put.status_code == 200 and put.json()["plan"] == "pro"
    assert server.call("GET", "/v1/subjects/srv-a1", "viewer").json()["plan"] == "pro"
    reset = server.call("POST", "/v1/subjects/srv-a1/reset", "support", json={"limit": "hourly"})
    assert reset.status_code == 200 and reset.json()["cleared"] == 1
    audit = server.call("GET", "/v1/audit?limit=5", "operator").json()["records"]
    assert [r["action"] for r in audit[:2]] == ["subjects.reset", "subjects.assign"]
    assert audit[1]["before"] == {"plan": "free"} and audit[1]["after"] == {"plan": "pro"}
    assert audit[1]["actor"]["role"] == "operator" and audit[1]["target"] == "srv-a1"
    verify = tollway("audit", "verify", "--config", str(server.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_errors_are_problems_and_change_nothing(server: Server) -> None:
    none = server.call("GET", "/v1/subjects/srv-a2", None)
    assert none.status_code == 401 and none.headers["content-type"] == "application/problem+json"
    assert none.json()["status"] == 401 and "Bearer" in none.headers["www-authenticate"]
    bad = server.call(
        "GET", "/v1/subjects/srv-a2", None, headers={"Authorization": "Bearer x" * 2000}
    )
    assert bad.status_code == 401
    wrong = server.call("PUT", "/v1/subjects/srv-a2/plan", "viewer", json={"plan": "pro"})
    assert wrong.status_code == 403 and "subjects.assign" in wrong.json()["detail"]
    unknown = server.call("PUT", "/v1/subjects/srv-a2/plan", "operator", json={"plan": "gold"})
    assert unknown.status_code == 422 and "gold" in unknown.json()["detail"]
    huge = server.call(
        "PUT", "/v1/subjects/srv-a2/plan", "operator", content=b"{" + b" " * (10 * 1024 * 1024)
    )
    assert huge.status_code == 413
    garbled = server.call(
        "PUT", "/v1/subjects/srv-a2/plan", "operator", content=b"{not json",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert garbled.status_code == 400
    too_much = server.call(
        "POST", "/v1/subjects/srv-a2/credits", "support", json={"amount": "5.01"}
    )
    assert too_much.status_code == 403 and "5.00" in too_much.json()["detail"]
    outside = server.call("GET", "/v1/subjects/other:1", "scoped")
    assert outside.status_code == 403
    inside = server.call("GET", "/v1/subjects/acme%3A1", "scoped")
    assert inside.status_code == 200 and inside.json()["subject"] == "acme:1"
    assert server.call("GET", "/v1/subjects/srv-a2", "viewer").json()["plan"] == "free"
    assert server.call("GET", "/v1/audit", "operator").json()["records"][0]["action"] != (
        "subjects.assign"
    )


def test_a_subject_with_a_slash_is_one_path_segment(server: Server) -> None:
    got = server.call("GET", "/v1/subjects/team%2Falpha", "viewer")
    assert got.status_code == 200 and got.json()["subject"] == "team/alpha"
    literal = server.call("GET", "/v1/subjects/team%252Falpha", "viewer")
    assert literal.json()["subject"] == "team%2Falpha"  # decoded once: injective


def test_grants_and_the_openapi_document(server: Server) -> None:
    grant = server.call(
        "POST", "/v1/subjects/srv-a3/credits", "billing",
        json={"amount": "12.50", "id": "g-1"},
    )  # fmt: skip
    assert grant.status_code == 201, grant.text
    assert grant.json()["balance"] == "12.50"
    again = server.call(
        "POST", "/v1/subjects/srv-a3/credits", "billing", json={"amount": "12.50", "id": "g-1"}
    )
    assert again.json()["balance"] == "12.50"  # idempotent on the grant id
    doc = httpx.get(server.base + "/openapi.json", timeout=10).json()
    assert doc["openapi"] == "3.1.0"
    assert {"/v1/subjects/{subject}", "/v1/subjects/{subject}/plan", "/v1/audit"} <= set(
        doc["paths"]
    )


# -- the RBAC matrix: every route, every role ---------------------------------------------------


ROUTES = (
    *subjects.ROUTES,
    *control.ROUTES,
    *policies_api.ROUTES,
    *billing_api.ROUTES,
    *hooks_api.ROUTES,
    *keys_api.ROUTES,
    *providers_api.ROUTES,
)
SAMPLE_BODY = {
    "subjects.assign": {"plan": "pro"},
    "subjects.reset": {},
    "credits.grant": {"amount": "1.00"},
    "tokens.write": {"name": "made-by-test", "role": "viewer"},
    "hooks.write": {"dead": True},
}


def test_every_route_answers_every_role_as_the_matrix_says(server: Server) -> None:
    checked = 0
    for route in ROUTES:
        path = (
            route.path.replace("{subject}", "srv-m")
            .replace("{token}", "nope")
            .replace("{version}", "0" * 12)
            .replace("{other}", "1" * 12)
            .replace("{limit}", "hourly")
            .replace("{number}", "INV-0000-000000")
            .replace("{key}", "aaaaaaaa")
        )
        for role in ROLE_NAMES:
            body = SAMPLE_BODY.get(route.action) if route.method != "GET" else None
            got = server.call(route.method, path, role, json=body)
            expected_allowed = role in PERMISSIONS[route.action]
            assert (got.status_code != 403) == expected_allowed, (
                route.method, route.path, role, got.status_code, got.text,
            )  # fmt: skip
            checked += 1
    assert checked == len(ROUTES) * len(ROLE_NAMES)


def test_metrics_need_a_token_and_pass_promtool(server: Server) -> None:
    assert server.call("GET", "/metrics", None).status_code == 401
    got = server.call("GET", "/metrics", "viewer")
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain")
    assert "tollway_" in got.text
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=got.content,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_idempotency_key_replays_the_first_answer_and_changes_nothing(server: Server) -> None:
    key = {"Idempotency-Key": "grant-once-1"}
    first = server.call(
        "POST", "/v1/subjects/srv-i1/credits", "billing", json={"amount": "2.00"}, headers=key
    )
    again = server.call(
        "POST", "/v1/subjects/srv-i1/credits", "billing", json={"amount": "2.00"}, headers=key
    )
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json() and first.json()["balance"] == "2.00"
    other = server.call(
        "POST", "/v1/subjects/srv-i1/credits", "billing", json={"amount": "3.00"}, headers=key
    )
    assert other.status_code == 422 and "another request" in other.json()["detail"]
    fresh = server.call("POST", "/v1/subjects/srv-i1/credits", "billing", json={"amount": "1.00"})
    assert fresh.json()["balance"] == "3.00"  # without a key, a new grant
    audit = server.call("GET", "/v1/audit?limit=20", "operator").json()["records"]
    grants = [r for r in audit if r["action"] == "credits.grant" and r["target"] == "srv-i1"]
    assert len(grants) == 2
    failed = server.call(
        "PUT", "/v1/subjects/srv-i1/plan", "operator", json={"plan": "gold"},
        headers={"Idempotency-Key": "plan-1"},
    )  # fmt: skip
    assert failed.status_code == 422
    fixed = server.call(
        "PUT", "/v1/subjects/srv-i1/plan", "operator", json={"plan": "gold"},
        headers={"Idempotency-Key": "plan-1"},
    )  # fmt: skip
    assert fixed.status_code == 422 and fixed.headers.get("idempotent-replayed") is None
    bad = server.call(
        "PUT", "/v1/subjects/srv-i1/plan", "operator", json={"plan": "pro"},
        headers={"Idempotency-Key": "x" * 300},
    )  # fmt: skip
    assert bad.status_code == 400


V2_TEXT = """
[defaults]
plan = "free"
[operations]
search = { price = "0.01 USD" }
[plans.free]
limits = [{ name = "hourly", quota = "7/hour" }]
"""


def test_policies_upload_diff_activate_roll_back_and_override(server: Server) -> None:
    bad = server.call(
        "POST", "/v1/policies", "operator", json={"text": "[plans.free]\nlimits = 5\n"}
    )
    assert bad.status_code == 422 and bad.json()["issues"][0]["path"].startswith("plans.free")
    assert server.call("GET", "/v1/policies", "viewer").json()["versions"] == []
    up = server.call("POST", "/v1/policies", "operator", json={"text": V2_TEXT})
    assert up.status_code == 201, up.text
    version = up.json()["version"]
    assert server.call("POST", "/v1/policies", "viewer", json={"text": V2_TEXT}).status_code == 403
    got = server.call("GET", f"/v1/policies/{version}", "viewer").json()
    assert got["version"] == version and "7/hour" in got["body"]
    on = server.call("POST", f"/v1/policies/{version}/activate", "operator", json={})
    assert on.status_code == 200 and on.json()["version"] == version
    active = server.call("GET", "/v1/policies", "viewer").json()["active"]
    assert active["version"] == version
    over = server.call(
        "PUT", "/v1/subjects/srv-p1/overrides/hourly", "support",
        json={"spec": {"quota": "500/hour"}, "expires_in_s": 3600},
    )  # fmt: skip
    assert over.status_code == 200, over.text
    listed = server.call("GET", "/v1/subjects/srv-p1/overrides", "viewer").json()["overrides"]
    assert [o["limit"] for o in listed] == ["hourly"]
    once = server.call("POST", "/v1/policies/rollback", "operator", json={})
    assert once.status_code == 400 and "no earlier activation" in once.json()["detail"]
    v3 = server.call(
        "POST", "/v1/policies", "operator", json={"text": V2_TEXT.replace("7/hour", "9/hour")}
    ).json()["version"]
    diff = server.call("GET", f"/v1/policies/{version}/diff/{v3}", "viewer").json()
    assert diff["changes"] == [
        {"path": "plans.free.limits[0].quota", "before": "7/hour", "after": "9/hour"}
    ]
    assert server.call("POST", f"/v1/policies/{v3}/activate", "operator").status_code == 200
    back = server.call("POST", "/v1/policies/rollback", "operator", json={})
    assert back.status_code == 200 and back.json()["version"] == version
    audit = server.call("GET", "/v1/audit?limit=10", "operator").json()["records"]
    assert [r["action"] for r in audit[:3]] == ["policies.write"] * 3
    assert audit[0]["before"]["version"] == v3 and audit[0]["after"]["version"] == version
    assert "overrides.write" in [r["action"] for r in audit]


def test_invoices_and_credit_notes_keep_to_the_tokens_scope(server: Server) -> None:
    document = policy(server.redis_url, server.config.parent / "ledger.db")
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    document["plans"]["basic"] = {"fee": {"amount": "10.00 USD"}}
    # The server's policy has no basic plan: bill straight in the ledger the server reads.
    with Tollway(document, clock=clock) as tw:
        tw.assign("acme:paying", "basic")
        tw.assign("other:paying", "basic")
        clock.set(datetime(2026, 2, 1, 2, tzinfo=timezone.utc))
        made = {i.subject: i.number for i in tw.billing.close().invoices}
    mine = server.call("GET", "/v1/subjects/acme%3Apaying/invoices", "scoped")
    assert mine.status_code == 200 and [i["number"] for i in mine.json()["invoices"]] == [
        made["acme:paying"]
    ]
    theirs = server.call("GET", f"/v1/invoices/{made['other:paying']}", "scoped")
    assert theirs.status_code == 403
    one = server.call("GET", f"/v1/invoices/{made['acme:paying']}", "viewer")
    assert one.status_code == 200 and one.json()["total"] == "10.00"
    note = server.call(
        "POST", f"/v1/invoices/{made['acme:paying']}/credit-notes", "billing",
        json={"amount": "4.00", "reason": "outage", "refund": True},
    )  # fmt: skip
    assert note.status_code == 201, note.text
    too_much = server.call(
        "POST", f"/v1/invoices/{made['acme:paying']}/credit-notes", "billing",
        json={"amount": "6.01", "reason": "again"},
    )  # fmt: skip
    assert too_much.status_code == 422 and "at most 6.00" in too_much.json()["detail"]
    listed = server.call("GET", f"/v1/invoices/{made['acme:paying']}", "viewer").json()
    assert [n["amount"] for n in listed["credit_notes"]] == ["4.00"]
    assert server.call("POST", "/v1/billing/close", "scoped").status_code == 403


def test_hook_messages_are_listed_and_retried(server: Server) -> None:
    listed = server.call("GET", "/v1/hooks/messages?status=dead", "viewer")
    assert listed.status_code == 200 and listed.json() == {"messages": []}
    assert server.call("GET", "/v1/hooks/messages?status=lost", "viewer").status_code == 400
    retried = server.call("POST", "/v1/hooks/retry", "operator", json={"dead": True})
    assert retried.status_code == 200 and retried.json() == {"retried": []}
    vague = server.call("POST", "/v1/hooks/replay", "operator", json={})
    assert vague.status_code == 400 and "say which messages" in vague.json()["detail"]
    assert server.call("POST", "/v1/hooks/retry", "support", json={"dead": True}).status_code == 403


def test_api_keys_are_issued_once_rotated_and_revoked(server: Server) -> None:
    issued = server.call("POST", "/v1/subjects/srv-k1/keys", "operator", json={"label": "ci"})
    assert issued.status_code == 201, issued.text
    raw, key_id = issued.json()["key"], issued.json()["key_id"]
    listed = server.call("GET", "/v1/subjects/srv-k1/keys", "viewer").json()["keys"]
    assert [k["key_id"] for k in listed] == [key_id] and "key" not in listed[0]
    document = policy(server.redis_url, server.config.parent / "ledger.db")
    with Tollway(document) as tw:
        keys = ApiKeys(tw, secret=KEY_SECRET)
        assert keys.verify(raw) == "srv-k1"
        rotated = server.call(
            "POST", f"/v1/keys/{key_id}/rotate", "operator", json={"overlap_s": 0}
        )
        assert rotated.status_code == 201
        assert keys.verify(rotated.json()["key"]) == "srv-k1"
        gone = server.call("DELETE", f"/v1/keys/{rotated.json()['key_id']}", "operator")
        assert gone.status_code == 200 and gone.json()["state"] == "revoked"
        assert keys.verify(rotated.json()["key"]) is None
    assert server.call("DELETE", f"/v1/keys/{key_id}", "scoped").status_code == 403


def test_providers_stand_as_the_store_says(server: Server) -> None:
    document = policy(server.redis_url, server.config.parent / "ledger.db")
    with Tollway(document) as tw:
        route = tw.route("geocoding")
        for _ in range(3):
            assert route.run(lambda provider: provider).provider == "alpha"
    got = server.call("GET", "/v1/providers", "viewer")
    assert got.status_code == 200, got.text
    providers = {p["provider"]: p for p in got.json()["providers"]}
    assert sorted(providers) == ["alpha", "beta"]
    assert providers["alpha"]["routes"] == ["geocoding"] and providers["alpha"]["available"]
    (daily,) = [lim for lim in providers["alpha"]["limits"] if lim["name"] == "daily"]
    assert (daily["limit"], daily["used"]) == (100, 3)
    assert server.call("GET", "/v1/providers", "scoped").status_code == 403
