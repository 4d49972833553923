"""``tollway hooks list|retry|replay`` through a parser built like ``cli/main.py`` builds it
(the lead wires `tollway.cli.hooks.register` into the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway.cli.main import main as cli_main
from tollway.metering.hooks import Dispatcher
from tollway.metering.ledger import UsageEvent, open_ledger
from tollway.metering.sinks import CallableSink, Message
from tollway.policy import load

T0 = 1_717_200_000_000_000


def run(*argv: str) -> int:
    """``tollway hooks ...``, through the real command's parser and exit statuses."""
    return cli_main(list(argv))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tollway.toml"
    path.write_text(
        f"""
[ledger]
url = "sqlite:///{tmp_path / "ledger.db"}"

[[hooks]]
name = "calls"
callable = "x.y:z"
schedule = [0, 60]

[[hooks]]
name = "other"
callable = "x.y:z"
"""
    )
    return path


def ev(n: int) -> UsageEvent:
    return UsageEvent(id=f"evt-{n}", subject="acct", operation="op", meter="op", quantity=1,
                      occurred_at_us=T0, recorded_at_us=T0)  # fmt: skip


def deliver(config: Path, fail: bool) -> list[str]:
    """One dispatcher pass on the config's ledger with a sink that fails or takes everything."""
    sent: list[str] = []

    def send(message: Message) -> None:
        if fail:
            raise ConnectionError("receiver down")
        sent.append(message.id)

    policy = load(config)
    assert policy.ledger.url is not None
    with (
        open_ledger(policy.ledger.url) as ledger,
        Dispatcher(ledger, policy.hooks, sink_factory=lambda h, s: CallableSink(send)) as d,
    ):
        d.run_once()
    return sent


def test_list_retry_replay(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = load(config)
    assert policy.ledger.url is not None
    with open_ledger(policy.ledger.url) as ledger:
        ledger.commit([ev(1), ev(2)], hooks=[policy.hooks[0]])
    assert run("hooks", "list", "--config", str(config)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "hook", "type", "status", "attempts", "next", "attempt",
                              "last", "error"]  # fmt: skip
    assert [line.split()[:5] for line in out[1:]] == [
        ["evt-1", "calls", "tollway.usage.recorded", "pending", "0"],
        ["evt-2", "calls", "tollway.usage.recorded", "pending", "0"],
    ]
    assert deliver(config, fail=True) == []
    assert run("hooks", "list", "--config", str(config), "--status", "pending") == 0
    listed = capsys.readouterr().out
    assert "ConnectionError: receiver down" in listed and " 1 " in listed
    # the next attempt is 60 s away: retry makes it due now
    assert run("hooks", "retry", "--config", str(config), "--hook", "calls") == 0
    assert "made 2 messages due now" in capsys.readouterr().out
    assert deliver(config, fail=False) == ["evt-1", "evt-2"]
    assert run("hooks", "list", "--config", str(config), "--status", "delivered") == 0
    assert capsys.readouterr().out.count("delivered") == 2
    assert run("hooks", "replay", "--config", str(config), "--id", "evt-2") == 0
    assert "replaying 1 message" in capsys.readouterr().out
    assert deliver(config, fail=False) == ["evt-2"]
    assert run("hooks", "list", "--config", str(config), "--status", "dead") == 0
    assert capsys.readouterr().out.strip() == "no hook messages"


def test_dead_messages_are_retried_and_replayed(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = load(config)
    assert policy.ledger.url is not None
    with open_ledger(policy.ledger.url) as ledger:
        ledger.commit([ev(1)], hooks=[policy.hooks[1]])
        ledger._fetch("UPDATE hook_messages SET status = 'dead', dead_reason = 'exhausted'", [])
    assert run("hooks", "retry", "--config", str(config), "--all-dead") == 0
    assert "(was dead)" in capsys.readouterr().out
    assert deliver(config, fail=False) == ["evt-1"]
    assert run("hooks", "replay", "--config", str(config), "--dead") == 0
    assert "replaying 0 messages" in capsys.readouterr().out


def test_prune_deletes_old_delivered_messages_and_never_pending_ones(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = load(config)
    assert policy.ledger.url is not None
    with open_ledger(policy.ledger.url) as ledger:
        ledger.commit([ev(1), ev(2)], hooks=[policy.hooks[0]])
    assert deliver(config, fail=False) == ["evt-1", "evt-2"]
    with open_ledger(policy.ledger.url) as ledger:
        ledger.commit([ev(3)], hooks=[policy.hooks[0]])  # pending
        ledger.commit([ev(4)], hooks=[policy.hooks[1]])
        ledger._fetch("UPDATE hook_messages SET status = 'dead' WHERE id = 'evt-4'", [])
    argv = ("hooks", "prune", "--config", str(config))
    assert run(*argv, "--older-than", "1") == 0
    assert "deleted 0 messages delivered more than 1 days ago" in capsys.readouterr().out
    assert run(*argv, "--older-than", "0") == 0
    assert "deleted 2 messages delivered" in capsys.readouterr().out
    with open_ledger(policy.ledger.url) as ledger:
        left = {m.id: m.status for m in ledger.hook_messages()}
        assert left == {"evt-3": "pending", "evt-4": "dead"}
    assert run(*argv, "--older-than", "0", "--dead", "--hook", "calls") == 0
    assert "deleted 0 messages delivered or dead" in capsys.readouterr().out
    assert run(*argv, "--older-than", "0", "--dead") == 0
    assert "deleted 1 message delivered or dead" in capsys.readouterr().out
    with open_ledger(policy.ledger.url) as ledger:
        assert [m.id for m in ledger.hook_messages()] == ["evt-3"]
        assert ledger.count() == 4  # the usage events themselves are untouched
    assert run(*argv, "--older-than", "-1") == 2
    assert "is not a number of days >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("hooks", "retry"), "say which messages"),
        (("hooks", "replay", "--hook", "calls"), "say which messages"),
        (("hooks", "retry", "--id", "nope"), "no hook message with id 'nope'"),
        (
            ("hooks", "list", "--hook", "nope"),
            "the policy has no such hook; its hooks: calls, other",
        ),
        (("hooks", "list", "--limit", "0"), "--limit 0"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(
    config: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], words: str
) -> None:
    assert run(*argv, "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert err.startswith("tollway: error: ")


def test_bad_arguments_and_a_policy_without_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("hooks", "list", "--status", "lost") == 2
    assert "invalid choice: 'lost'" in capsys.readouterr().err
    bare = tmp_path / "bare.toml"
    bare.write_text("")
    assert run("hooks", "list", "--config", str(bare)) == 2
    assert "the policy has no [ledger] url" in capsys.readouterr().err
    assert run("hooks", "list", "--config", str(tmp_path / "missing.toml")) == 2
    assert "no such file" in capsys.readouterr().err
