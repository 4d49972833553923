"""The `tollway` command: parsing, exit statuses, messages, and the store commands on a real
Redis (the memory store lives and dies with one process, so one invocation per process can
only be checked against a shared store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from servers import find_free_port
from tollway import __version__
from tollway.cli.main import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tollway.toml"
TOLLWAY = Path(sys.executable).parent / "tollway"

TINY = """\
[defaults]
plan = "tiny"

[operations]
ping = { cost = 1 }
report = { cost = 2, price = "0.50 USD" }

[plans.tiny]
limits = [{ name = "monthly", quota = "3/month" }]

[plans.big]
limits = [
  { name = "monthly", quota = "100/month" },
  { name = "burst", rate = "10/s" },
  { name = "spend", budget = "5.00 USD/month", operations = ["report"] },
]
"""

BAD = """\
[defaults]
plan = "gold"

[operations]
geocode = { cost = 0 }

[plans.free]
limits = [
  { name = "hourly", quota = "1000/hr" },
  { rate = "5/s", quota = "1/day" },
]
"""


def process(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command run as a separate process."""
    return subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=60)


class Run:
    """One `main` call: exit status, stdout, stderr."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep any fail-open journal under the test's folder, never in the real home."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    def call(*argv: str) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return call


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


@pytest.fixture
def on_redis(tiny: Path, redis_url: str, redis_client: redis.Redis) -> list[str]:
    """``--config tiny.toml --store REDIS``, on a flushed server."""
    return ["--config", str(tiny), "--store", redis_url]


# ------------------------------------------------------------------------ the command itself


def test_console_script_help_runs_in_a_subprocess() -> None:
    done = process(str(TOLLWAY), "--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: tollway ")
    for command in ("demo", "policy", "acquire", "usage", "reset", "assign"):
        assert f"    {command} " in done.stdout
    assert "3  the store could not be reached" in done.stdout


def test_python_dash_m_runs_the_same_command() -> None:
    done = process(sys.executable, "-m", "tollway.cli", "--version")
    assert (done.returncode, done.stdout) == (0, f"tollway {__version__}\n")


def test_version(run: Any) -> None:
    result = run("--version")
    assert (result.code, result.out) == (0, f"tollway {__version__}\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["policy"],
        ["policy", "check"],
        ["policy", "schema"],
        ["acquire"],
        ["usage"],
        ["reset"],
        ["assign"],
    ],
)
def test_every_command_has_help(run: Any, argv: list[str]) -> None:
    result = run(*argv, "--help")
    assert result.code == 0
    assert result.out.startswith(f"usage: tollway {' '.join(argv)}")


@pytest.mark.parametrize("argv", [["acquire"], ["usage"], ["reset"], ["assign"]])
def test_store_commands_take_config_and_store(run: Any, argv: list[str]) -> None:
    out = run(*argv, "--help").out
    assert "--config FILE" in out
    assert "--store URL" in out
    assert "exit status:" in out


def test_no_command_prints_usage_and_exits_2(run: Any) -> None:
    result = run()
    assert result.code == 2
    assert result.err.startswith("usage: tollway ")


def test_unknown_command_is_a_usage_error(run: Any) -> None:
    result = run("frobnicate")
    assert result.code == 2
    assert "invalid choice: 'frobnicate'" in result.err


# ------------------------------------------------------------------------------------ policy


def test_policy_check_ok(run: Any) -> None:
    result = run("policy", "check", str(EXAMPLE))
    assert result.code == 0
    assert result.out == (
        f"ok: {EXAMPLE} (2 plans, 3 operations, 11 limits, 2 providers, 1 route, "
        "default plan free, store memory://)\n"
    )
    assert result.err == ""


def test_policy_check_lists_every_problem_with_its_key_path(run: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD, encoding="utf-8")
    result = run("policy", "check", str(bad))
    assert result.code == 1
    assert result.out == ""
    assert result.err.splitlines() == [
        f"{bad}: operations.geocode.cost: expected an integer from 1 to 1000000000000000, got 0",
        f'{bad}: plans.free.limits[0].quota: "1000/hr" is not a quota; expected N/PERIOD with '
        "PERIOD one of minute, hour, day, week, month",
        f"{bad}: plans.free.limits[1]: expected exactly one of rate, quota, budget, credits; "
        "got rate and quota",
        f'{bad}: defaults.plan: "gold" names no plan; expected one of "free"',
    ]
    assert "Traceback" not in result.err


def test_policy_check_syntax_error_and_missing_file(run: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[plans\n", encoding="utf-8")
    result = run("policy", "check", str(broken))
    assert result.code == 1
    assert result.err.startswith(f"{broken}: invalid TOML: ")
    assert len(result.err.splitlines()) == 1

    missing = tmp_path / "missing.toml"
    result = run("policy", "check", str(missing))
    assert (result.code, result.err) == (1, f"{missing}: no such file; expected a policy file\n")


def test_policy_check_finds_tollway_toml_in_the_current_folder(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("policy", "check")
    assert result.code == 2
    assert result.err == (
        f"tollway: error: no policy file: --config was not given and {tmp_path / 'tollway.toml'}"
        " does not exist; pass --config FILE\n"
    )
    (tmp_path / "tollway.toml").write_text(TINY, encoding="utf-8")
    result = run("policy", "check")
    assert result.code == 0
    assert result.out.startswith("ok: tollway.toml (2 plans, 2 operations, 4 limits, ")


def test_policy_schema_is_json_schema_and_accepts_the_example(run: Any) -> None:
    result = run("policy", "schema")
    assert result.code == 0
    schema = json.loads(result.out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert result.out.startswith('{\n  "$schema"')  # indent 2
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"plans": {"free": {"limits": [{"quota": "1000/hr"}]}}}, schema)


# -------------------------------------------------------------------- errors of the commands


def test_a_store_command_without_a_policy_file_says_which_file_it_looked_for(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("usage", "acct")
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith("tollway: error: no policy file: ")
    assert str(tmp_path / "tollway.toml") in result.err


def test_an_invalid_policy_lists_every_issue_as_an_error_line(run: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD, encoding="utf-8")
    result = run("usage", "acct", "--config", str(bad))
    assert result.code == 2
    lines = result.err.splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"tollway: error: {bad}: ") for line in lines)
    assert "plans.free.limits[0].quota" in lines[1]
    assert "Traceback" not in result.err


def test_the_memory_store_works_in_one_process_and_says_so(run: Any, tiny: Path) -> None:
    result = run("acquire", "acct", "ping", "--config", str(tiny))
    assert result.code == 0
    assert result.json()["limits"][0]["used"] == 1
    assert result.err.startswith("tollway: note: the store is memory://")


def test_bad_store_url_exits_2(run: Any, tiny: Path) -> None:
    result = run("usage", "acct", "--config", str(tiny), "--store", "foo://127.0.0.1")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "tollway: error: store url: 'foo://127.0.0.1' has scheme 'foo'; expected one of "
        "memory, redis, rediss, redis+cluster, rediss+cluster\n"
    )
    result = run("usage", "acct", "--config", str(tiny), "--store", "redis://")
    assert result.code == 2
    assert result.err == (
        "tollway: error: store url: 'redis://' names no host; expected e.g. "
        "redis://127.0.0.1:6379/0\n"
    )


@pytest.mark.parametrize(
    "argv",
    [["acquire", "acct", "ping"], ["usage", "acct"], ["reset", "acct"], ["assign", "acct", "big"]],
)
def test_unreachable_store_exits_3_and_journals_nothing(
    run: Any, tiny: Path, argv: list[str], _state_home: Path
) -> None:
    url = f"redis://127.0.0.1:{find_free_port()}/0"  # nothing listens there
    result = run(*argv, "--config", str(tiny), "--store", url)
    assert (result.code, result.out) == (3, "")
    assert result.err.startswith(f"tollway: error: store {url} did not answer: ")
    assert len(result.err.splitlines()) == 1
    # acquire reaches the store before deciding: no fail-open decision, nothing journaled
    assert not any(path.is_file() for path in _state_home.rglob("*"))


def test_bad_arguments_exit_2(run: Any, tiny: Path) -> None:
    config = ["--config", str(tiny)]
    result = run("acquire", "acct", "nope", *config)
    assert result.code == 2
    assert result.err.endswith(
        "tollway: error: operation: 'nope' is not declared in the policy; known operations: "
        "ping, report\n"
    )
    result = run("acquire", "acct", "ping", "--cost", "0", *config)
    assert result.code == 2
    assert result.err.endswith(
        "tollway: error: cost: 0 is out of range; expected 1 to 1000000000000000\n"
    )
    result = run("acquire", "acct", "ping", "--amount", "lots", *config)
    assert result.code == 2
    assert "argument --amount: 'lots' is not an amount" in result.err
    result = run("assign", "acct", "gold", *config)
    assert result.code == 2
    assert result.err.endswith(
        "tollway: error: plan: 'gold' is not declared in the policy; known plans: big, tiny\n"
    )
    result = run("assign", "acct", *config)
    assert result.code == 2
    assert "give either PLAN (- for the default) or --default" in result.err


# ------------------------------------------------------------------- the store commands, Redis


def test_acquire_until_denied(run: Any, on_redis: list[str]) -> None:
    for used in (1, 2, 3):
        result = run("acquire", "acct_1", "ping", *on_redis)
        assert result.code == 0, result.err
        decision = result.json()
        assert decision["allowed"] is True
        assert decision["violated"] == []
        assert decision["limits"][0]["used"] == used
    result = run("acquire", "acct_1", "ping", *on_redis)
    assert result.code == 1
    decision = result.json()
    assert decision["allowed"] is False
    assert decision["violated"] == ["monthly"]
    assert decision["plan"] == "tiny"
    assert decision["limits"][0]["remaining"] == 0
    assert decision["retry_after"] > 0
    assert result.err == ""


def test_acquire_with_cost_and_amount(run: Any, on_redis: list[str]) -> None:
    assert run("assign", "acct_2", "big", *on_redis).code == 0
    result = run("acquire", "acct_2", "report", "--cost", "4", "--amount", "2.25", *on_redis)
    assert result.code == 0, result.err
    decision = result.json()
    assert (decision["cost"], decision["amount"]) == (4, "2.25")
    by_name = {limit["name"]: limit for limit in decision["limits"]}
    assert by_name["monthly"]["used"] == 4
    assert by_name["spend"]["used"] == "2.25"
    assert by_name["spend"]["currency"] == "USD"
    result = run("acquire", "acct_2", "report", "--amount", "3.00", *on_redis)
    assert result.code == 1
    assert result.json()["violated"] == ["spend"]


def test_assign_then_usage_shows_the_plan(run: Any, on_redis: list[str]) -> None:
    result = run("usage", "acct_3", *on_redis)
    assert result.code == 0
    assert result.json()["plan"] == "tiny"

    result = run("assign", "acct_3", "big", *on_redis)
    assert (result.code, result.out) == (0, "acct_3: big\n")
    usage = run("usage", "acct_3", *on_redis).json()
    assert usage["subject"] == "acct_3"
    assert usage["plan"] == "big"
    assert [limit["name"] for limit in usage["limits"]] == ["monthly", "burst", "spend"]

    result = run("assign", "acct_3", "-", *on_redis)
    assert (result.code, result.out) == (0, "acct_3: tiny (the default plan)\n")
    assert run("usage", "acct_3", *on_redis).json()["plan"] == "tiny"
    assert run("assign", "acct_3", "big", *on_redis).code == 0
    result = run("assign", "acct_3", "--default", *on_redis)
    assert (result.code, result.out) == (0, "acct_3: tiny (the default plan)\n")


def test_plan_change_keeps_the_count_of_a_same_named_limit(run: Any, on_redis: list[str]) -> None:
    for _ in range(3):
        assert run("acquire", "acct_4", "ping", *on_redis).code == 0
    assert run("acquire", "acct_4", "ping", *on_redis).code == 1
    assert run("assign", "acct_4", "big", *on_redis).code == 0
    result = run("acquire", "acct_4", "ping", *on_redis)
    assert result.code == 0
    assert result.json()["limits"][0] | {"reset_after": 0, "window": None} == {
        "name": "monthly",
        "kind": "quota",
        "limit": 100,
        "used": 4,
        "remaining": 96,
        "reset_after": 0,
        "retry_after": 0.0,
        "allowed": True,
        "window": None,
    }


def test_reset_clears_the_counters(run: Any, on_redis: list[str]) -> None:
    for _ in range(3):
        assert run("acquire", "acct_5", "ping", *on_redis).code == 0
    assert run("acquire", "acct_5", "ping", *on_redis).code == 1

    result = run("reset", "acct_5", "--limit", "burst", *on_redis)
    assert result.code == 2
    assert result.err.endswith(
        "tollway: error: limit: 'burst' does not apply to 'acct_5' (plan 'tiny'); "
        "its limits: monthly\n"
    )
    result = run("reset", "acct_5", "--limit", "monthly", *on_redis)
    assert (result.code, result.out) == (0, "cleared 1 counter of acct_5 (limit monthly)\n")
    assert run("usage", "acct_5", *on_redis).json()["limits"][0]["used"] == 0
    assert run("acquire", "acct_5", "ping", *on_redis).code == 0

    result = run("reset", "acct_5", *on_redis)
    assert (result.code, result.out) == (0, "cleared 1 counter of acct_5\n")
    result = run("reset", "acct_5", *on_redis)
    assert (result.code, result.out) == (0, "cleared 0 counters of acct_5\n")


def test_store_url_from_the_policy_file(
    run: Any, tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    path = tmp_path / "shared.toml"
    path.write_text(f'[store]\nurl = "{redis_url}"\n\n{TINY}', encoding="utf-8")
    assert run("acquire", "acct_6", "ping", "--config", str(path)).code == 0
    usage = run("usage", "acct_6", "--config", str(path))
    assert usage.err == ""  # no memory-store note: the counters are shared
    assert usage.json()["limits"][0]["used"] == 1


def test_counts_are_shared_between_processes(
    tiny: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    base = [sys.executable, "-m", "tollway.cli"]
    options = ["--config", str(tiny), "--store", redis_url]
    codes = [process(*base, "acquire", "acct_7", "ping", *options).returncode for _ in range(4)]
    assert codes == [0, 0, 0, 1]
    done = process(*base, "usage", "acct_7", *options)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["limits"][0]["used"] == 3


def test_usage_says_a_used_up_limit_is_used_up_not_allowed(run: Any, on_redis: list[str]) -> None:
    for _ in range(3):
        assert run("acquire", "acct_5", "ping", *on_redis).code == 0
    limit = run("usage", "acct_5", *on_redis).json()["limits"][0]
    assert (limit["name"], limit["used"], limit["remaining"]) == ("monthly", 3, 0)
    assert limit["used_up"] is True
    assert "allowed" not in limit and "retry_after" not in limit
    assert limit["reset_after"] > 0
    fresh = run("usage", "acct_6", *on_redis).json()["limits"][0]
    assert (fresh["remaining"], fresh["used_up"]) == (3, False)
    assert run("acquire", "acct_5", "ping", *on_redis).code == 1  # what used_up said


@pytest.mark.parametrize(
    ("argv", "own"),
    [
        (["demo"], "the demo ran"),
        (["geocode"], "the batch ran: OUTPUT is written"),
        (["acquire"], "1  denied"),
        (["usage"], "0  success"),
        (["policy", "check"], "1  the policy has problems"),
        (["policy", "schema"], "0  the schema was printed"),
    ],
)
def test_each_command_ends_with_its_own_exit_statuses(run: Any, argv: list[str], own: str) -> None:
    out = run(*argv, "--help").out
    statuses = out[out.index("exit status:") :]
    assert own in statuses
    if argv != ["acquire"]:
        assert "acquire" not in statuses and "denied" not in statuses


def test_demo_help_describes_its_four_parts_and_its_files(run: Any) -> None:
    text = " ".join(run("demo", "--help").out.split())
    parts = ("inbound: a simulated day", "geocoding: a batch", "metering: an hour of usage")
    for part in (*parts, "billing: March 2026 for three subjects"):
        assert part in text
    assert "temporary folder, removed at the end" in text


def test_geocode_help_says_where_stub_keys_come_from(run: Any) -> None:
    text = " ".join(run("geocode", "--help").out.split())
    assert "python -m tollway.outbound.geocode.stubs --config FILE" in text
    assert "removes the cache file it created" in text
