"""What the Redis scripts are sent and what they answer, shared by the sync and async stores.

Every key of a subject starts with ``tw:{SUBJECT}:``, so all of them hash to one slot of a Redis
Cluster and one script can touch them together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tollway.engine.rules import RATE
from tollway.engine.step import PLAN_MISMATCH, Reply, Step
from tollway.stores.journal import JournalEntry
from tollway.stores.memory import RETENTION_US
from tollway.stores.settle import SettleStep

REPLAY_MARK_TTL_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    text: str
    sha: str


def _script(name: str) -> Script:
    folder = resources.files("tollway.stores") / "lua"
    lib = (folder / "lib.lua").read_text(encoding="utf-8")
    text = lib + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, text, hashlib.sha1(text.encode("utf-8")).hexdigest())


STEP = _script("step")
SETTLE = _script("settle")
REPLAY = _script("replay")
RETENTION = str(RETENTION_US)


def prefix(subject: str) -> str:
    return f"tw:{{{subject}}}:"


def step_call(step: Step) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the step script."""
    head = prefix(step.subject)
    keys = [head + "plan", head + "hx"]
    keys += [head + key for key in step.keys]
    keys.append(head + "holds")
    args: list[Any] = [step.mode, step.assigned or "", step.hold_id, step.hold_ttl_us, RETENTION]
    for rule, window, cost in zip(step.rules, step.windows, step.costs, strict=True):
        shadow = 2 if rule.shadow else 0
        if window is None:
            args += (shadow, rule.emission_us, rule.capacity_us, 0, cost)
        else:
            args += (1 + shadow, rule.hard, window[0], window[1], cost)
    return keys, args


def settle_call(settle: SettleStep) -> tuple[list[str], list[Any]]:
    head = prefix(settle.hold.subject)
    keys = [head + "plan", head + "hx", head + "holds"]
    args: list[Any] = [settle.hold.id, RETENTION]
    for (key, is_rate, _), live, late in zip(settle.hold.entries, settle.deltas,
                                             settle.late_deltas, strict=True):
        keys.append(head + key)
        args += (1 if is_rate else 0, live, late)
    return keys, args


def replay_call(entry: JournalEntry) -> tuple[list[str], list[Any]]:
    head = prefix(entry.subject)
    keys = [head + "j:" + entry.id] + [head + key for key in entry.keys]
    args: list[Any] = [REPLAY_MARK_TTL_MS, RETENTION, entry.at_us]
    for is_rate, amount, end in zip(entry.rates, entry.amounts, entry.ends, strict=True):
        args += (1 if is_rate else 0, amount, end)
    return keys, args


def reply(raw: list[Any]) -> Reply:
    code = raw[0]
    if code == PLAN_MISMATCH:
        plan = raw[3].decode("utf-8") if isinstance(raw[3], bytes) else str(raw[3])
        return Reply(code, raw[1], [], 0, plan or None)
    return Reply(code, raw[1], raw[3:], raw[2])


def journal_entry(step: Step, event_id: str, at_us: int) -> JournalEntry:
    """What a fail-open step consumed, to replay into Redis when it answers again."""
    rates, amounts, ends = [], [], []
    for rule, window, cost in zip(step.rules, step.windows, step.costs, strict=True):
        is_rate = rule.kind == RATE
        rates.append(is_rate)
        amounts.append(cost * rule.emission_us if is_rate else cost)
        ends.append(0 if window is None else window[1])
    return JournalEntry(event_id, step.subject, at_us, tuple(step.keys), tuple(rates),
                        tuple(amounts), tuple(ends))
