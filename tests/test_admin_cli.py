"""``tollway admin token ...`` and ``tollway audit ...`` run as subprocesses on a policy file with
a SQLite ledger (and PostgreSQL via --ledger): the raw token alone on the last line, the token
works, revoking it is audited, tampering makes ``audit verify`` exit 1 naming the seq; and the
``[admin]`` section of the policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from admin_support import raw
from tollway.admin.store import AdminStore
from tollway.errors import PolicyError, UnauthorizedError
from tollway.metering.ledger import open_ledger
from tollway.money import Money
from tollway.policy import load
from tollway.policy.model import AdminConfig, Rate


def tollway(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path, billing_ledger_url: str) -> list[str]:
    policy = tmp_path / "tollway.toml"
    policy.write_text('[admin]\ntoken_ttl = "7d"\n', encoding="utf-8")
    return ["--config", str(policy), "--ledger", billing_ledger_url]


def test_token_create_prints_the_raw_token_alone_on_the_last_line(
    config: list[str], billing_ledger_url: str
) -> None:
    done = tollway("admin", "token", "create", "--role", "operator", "--name", "ops", *config)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    token = lines[-1]
    assert token.startswith("tw_admin_") and token == token.strip() and len(token) == 52
    assert "role operator" in lines[0] and token not in "\n".join(lines[:-1])
    with open_ledger(billing_ledger_url) as ledger:
        admin = AdminStore(ledger)
        who = admin.authenticate(token)
        assert (who.role, who.name, who.scope) == ("operator", "ops", None)
        info = admin.list_tokens()[0]
        assert info.expires_at_us is not None
        assert info.expires_at_us - info.created_at_us == 7 * 86_400 * 1_000_000  # [admin]
        record = admin.audit_log()[0]
        assert (record.action, record.target, record.actor_id) == ("tokens.create", info.id, "cli")
        assert record.actor_name.startswith("cli:")

    listed = tollway("admin", "token", "list", *config)
    assert listed.returncode == 0 and info.id in listed.stdout and "active" in listed.stdout
    revoked = tollway("admin", "token", "revoke", info.id, *config)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked admin token {info.id}" in revoked.stdout
    with open_ledger(billing_ledger_url) as ledger, pytest.raises(UnauthorizedError):
        AdminStore(ledger).authenticate(token)

    shown = tollway("audit", "show", "--json", *config)
    assert shown.returncode == 0
    actions = [json.loads(line)["action"] for line in shown.stdout.splitlines()]
    assert actions == ["tokens.revoke", "tokens.create"]
    verified = tollway("audit", "verify", *config)
    assert verified.returncode == 0 and verified.stdout.startswith("ok: 2 records verified")


def test_scope_and_expiry_options(config: list[str], billing_ledger_url: str) -> None:
    made = tollway(
        "admin", "token", "create", "--role", "support", "--name", "desk",
        "--scope", "acme:", "--expires-in", "never", *config,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "scope acme:, expires never" in made.stdout
    with open_ledger(billing_ledger_url) as ledger:
        who = AdminStore(ledger).authenticate(made.stdout.splitlines()[-1])
        assert (who.role, who.scope) == ("support", "acme:")
        assert AdminStore(ledger).list_tokens()[0].expires_at_us is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--role", "root", "--name", "x"], "invalid choice: 'root'"),
        (["--role", "admin", "--name", "x", "--scope", "acme"], "is not a subject prefix"),
        (["--role", "admin", "--name", "x", "--expires-in", "soon"], "is not a duration"),
        (["--role", "admin", "--name", ""], "is not a token name"),
        (["--role", "admin"], "--name"),
    ],
)
def test_bad_input_is_a_clear_usage_error(
    config: list[str], billing_ledger_url: str, argv: list[str], message: str
) -> None:
    done = tollway("admin", "token", "create", *argv, *config)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
    with open_ledger(billing_ledger_url) as ledger:
        assert AdminStore(ledger).list_tokens() == []


def test_revoking_an_unknown_token_exits_2(config: list[str]) -> None:
    done = tollway("admin", "token", "revoke", "adm_0000000000000000", *config)
    assert done.returncode == 2 and "no admin token has id" in done.stderr
    done = tollway("admin", "token", "revoke", "nope", *config)
    assert done.returncode == 2 and "is not a token id" in done.stderr


def test_audit_verify_exits_1_naming_the_tampered_seq(
    config: list[str], billing_ledger_url: str
) -> None:
    for name in ("a", "b", "c"):
        assert tollway("admin", "token", "create", "--role", "viewer", "--name", name, *config)
    raw(billing_ledger_url, "UPDATE admin_audit SET actor_name = %s WHERE seq = 2", ("mallory",))
    done = tollway("audit", "verify", *config)
    assert done.returncode == 1
    assert done.stdout.startswith("tampered: seq 2: its content does not match its hash")
    raw(billing_ledger_url, "DELETE FROM admin_audit WHERE seq = 3")
    assert tollway("audit", "verify", *config).stdout.startswith("tampered: seq 2:")
    shown = tollway("audit", "show", "--limit", "5", *config)
    assert shown.returncode == 0 and "mallory" in shown.stdout


def test_no_ledger_is_a_clear_error(tmp_path: Path) -> None:
    policy = tmp_path / "tollway.toml"
    policy.write_text("", encoding="utf-8")
    done = tollway("audit", "verify", "--config", str(policy))
    assert done.returncode == 2 and "no ledger: the policy has no [ledger] url" in done.stderr


# =========================================================================== [admin]


def test_admin_section_defaults_and_values() -> None:
    assert load({}).admin == AdminConfig()
    assert AdminConfig().support_grant_max == Money.parse("50.00 USD")
    assert (AdminConfig().token_ttl_s, AdminConfig().sessions_ttl_s) == (90 * 86_400, 12 * 3600)
    assert AdminConfig().rate == Rate(20, 1_000_000, "20/s")
    admin = load(
        {
            "admin": {
                "support_grant_max": "10.00 EUR",
                "token_ttl": "30d",
                "rate": "5/s",
                "sessions_ttl": "45m",
            }
        }
    ).admin
    assert admin.support_grant_max == Money.parse("10.00 EUR")
    assert (admin.token_ttl_s, admin.sessions_ttl_s, admin.rate.text) == (30 * 86_400, 2700, "5/s")


def test_admin_section_errors_name_the_key() -> None:
    with pytest.raises(PolicyError) as caught:
        load(
            {
                "admin": {
                    "support_grant_max": "lots",
                    "token_ttl": "0d",
                    "rate": "fast",
                    "sessions_ttl": "9999d",
                    "owner": "me",
                }
            }
        )
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert set(issues) == {
        "admin.support_grant_max",
        "admin.token_ttl",
        "admin.rate",
        "admin.sessions_ttl",
        "admin.owner",
    }
    assert "is not an amount of money" in issues["admin.support_grant_max"]
    assert issues["admin.token_ttl"] == '"0d": expected from 1s to 3650d'
    assert "is not a rate" in issues["admin.rate"]
    assert issues["admin.owner"].startswith('unknown key "owner"; expected one of')
