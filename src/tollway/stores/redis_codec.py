"""What the Redis scripts are sent and what they answer, shared by the sync and async stores.

Every key of a subject is ``tw:{TAG}`` or starts with ``tw:{TAG}:`` (``TAG``: the subject
escaped by `tollway.keyspace.key_text`, so it holds no brace), so all of them hash to one slot
of a Redis Cluster and one script can touch them together; no subject can write another's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tollway.engine.credits import MAX_GRANTS, CreditsOp, CreditsReply, Grant
from tollway.engine.health import HealthOp, HealthReply
from tollway.engine.replies import PLAN_MISMATCH, Reply, ReplyCode, reply
from tollway.engine.rules import GATE, RATE
from tollway.engine.settle import SettleStep
from tollway.engine.step import ACQUIRE, Step
from tollway.keyspace import key_text, prefixed, text_of
from tollway.stores.journal import JournalEntry
from tollway.stores.memory import RETENTION_US

REPLAY_MARK_TTL_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    text: str
    sha: str


def _script(name: str) -> Script:
    folder = resources.files("tollway.stores") / "lua"
    lib = (folder / "lib.lua").read_text(encoding="utf-8")
    lib = lib.replace("__RETENTION__", str(RETENTION_US))
    for code in ReplyCode:
        lib = lib.replace(code.placeholder, str(int(code)))
    text = lib + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, text, hashlib.sha1(text.encode("utf-8")).hexdigest())


STEP = _script("step")
SETTLE = _script("settle")
REPLAY = _script("replay")
ASSIGN = _script("assign")
HEALTH = _script("health")
CREDITS = _script("credits")
RETENTION = str(RETENTION_US)
EXPIRED = ReplyCode.EXPIRED
"""The step reached the store after its deadline and was not taken (the store resends)."""


def state_key(subject: str, prefix: str = "") -> str:
    """The subject's hash; its holds and replay marks hang below it in the same slot (the
    scripts derive them from it, so the ``[store] prefix`` reaches them too)."""
    return prefixed(prefix, f"tw:{{{key_text(subject)}}}")


STATE_PATTERN = "tw:{*}"
"""SCAN pattern of the subjects' hashes; it also matches a few other keys (one a request id
ending in ``}`` marked before ids were escaped): `subject_of` tells them apart."""


def state_pattern(prefix: str = "") -> str:
    """`STATE_PATTERN` in the namespace of ``prefix`` (which holds no glob character)."""
    return prefixed(prefix, STATE_PATTERN)


def subject_of(key: bytes | str, prefix: str = "") -> str | None:
    """The subject whose hash ``key`` (`state_key`) is; None when ``key`` is not one."""
    try:
        text = key.decode("utf-8") if isinstance(key, bytes) else key
    except UnicodeDecodeError:
        return None
    start = prefixed(prefix, "tw:{")
    if not (text.startswith(start) and text.endswith("}")) or len(text) < len(start) + 2:
        return None
    return text_of(text[len(start) : -1])


def request_key_part(operation: str, request_id: str) -> str:
    """The part of a request id's marker key below the subject's hash: ``OPERATION:ID``.
    An operation name holds no ``:`` (the policy's names are ``[A-Za-z0-9_.-]``) and the id
    is escaped like a subject, so the key holds no brace and names one (operation, id).
    Hang it below a prefix of its own (``KEY:rq:``, say): ``KEY:id:`` also marks event ids
    (settle.lua, replay.lua), and a caller's id ``geocode:abc`` is one of those."""
    return f"{operation}:{key_text(request_id)}"


def step_call(
    step: Step,
    deadline_us: int,
    stream: str = "",
    dedupe_ms: int = 0,
    ident: tuple[str, int, int] | None = None,
    prefix: str = "",
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the step script: the step's figures and rules in one JSON array (the
    rules part is cached per check and window), the expected plan, and a hold id (a
    reservation) or the step's identity (an acquire: its process, sequence number and
    low-water mark, see `StepIds`); with events or
    a request id, the event stream, the usage template, the id and attributes."""
    process, seq, low = ident or ("", 0, 0)
    spec = (
        f"[{step.mode},{step.cost},{step.amount or 0},{step.hold_ttl_us},{deadline_us},{seq},"
        f"{low}{step.packed}]"
    )
    third = step.hold_id or process
    if step.event or step.call_id:
        args = [spec, step.assigned or "", third, step.event, step.call_id, step.attrs, dedupe_ms]
        if step.call_id:  # its scope, fingerprint and repeats (step.lua's request-id record)
            args += (step.scope, step.fingerprint, step.max_repeats)
        return [state_key(step.subject, prefix), stream], args
    if third:
        return [state_key(step.subject, prefix)], [spec, step.assigned or "", third]
    return [state_key(step.subject, prefix)], [spec, step.assigned or ""]


def settle_call(
    settle: SettleStep, stream: str = "", dedupe_ms: int = 0, prefix: str = ""
) -> tuple[list[str], list[Any]]:
    keys = [state_key(settle.hold.subject, prefix)]
    if settle.event:
        keys.append(stream)
    ttl = dedupe_ms if settle.caller_id else 0
    args: list[Any] = [settle.hold.id, RETENTION, settle.event, settle.event_id, settle.attrs, ttl]
    for (field, is_rate, _, start, ends), live, late in zip(
        settle.hold.entries, settle.deltas, settle.late_deltas, strict=True
    ):
        args += (field, 1 if is_rate else 0, live, late, start, ends)
    return keys, args


def replay_call(
    entry: JournalEntry, stream: str = "", dedupe_ms: int = 0, prefix: str = ""
) -> tuple[list[str], list[Any]]:
    key = state_key(entry.subject, prefix)
    args: list[Any] = [REPLAY_MARK_TTL_MS, RETENTION, entry.at_us]
    args += (entry.event, entry.event_id, entry.attrs, dedupe_ms if entry.caller_id else 0)
    args.append(len(entry.fields))
    for field, is_rate, amount, start, end in zip(
        entry.fields, entry.rates, entry.amounts, entry.starts, entry.ends, strict=True
    ):
        args += (field, 1 if is_rate else 0, amount, start, end)
    args += (entry.process, entry.seq, entry.deadline_us, 1 if entry.undo else 0)
    keys = [key, f"{key}:j:{entry.id}"]
    if entry.event:
        keys.append(stream)
    return keys, args


def health_call(op: HealthOp, prefix: str = "") -> tuple[list[str], list[Any]]:
    return [state_key(op.subject, prefix)], op.args()


def read_health(raw: list[Any]) -> HealthReply:
    return HealthReply(int(raw[0]), int(raw[1]), int(raw[2]))


def credits_call(op: CreditsOp, prefix: str = "") -> tuple[list[str], list[Any]]:
    args = [op.op, op.currency, op.grant_id, op.micros, op.priority, op.expires_us, MAX_GRANTS]
    return [state_key(op.subject, prefix)], [str(a) for a in args]


def read_credits(raw: list[Any]) -> CreditsReply:
    now, balance, code = int(raw[0]), int(raw[1]), int(raw[2])
    old = (int(raw[3]), int(raw[4]), int(raw[5]))
    grants = tuple(
        Grant(
            raw[i].decode("utf-8") if isinstance(raw[i], bytes) else str(raw[i]),
            *(int(v) for v in raw[i + 1 : i + 6]),
        )
        for i in range(7, len(raw), 6)
    )
    return CreditsReply(now, balance, code, old, int(raw[6]), grants)


def assign_call(subject: str, plan: str | None, prefix: str = "") -> tuple[list[str], list[Any]]:
    return [state_key(subject, prefix)], [plan or ""]


def read_reply(raw: list[Any]) -> Reply:
    code = raw[0]
    if code == PLAN_MISMATCH:
        plan = raw[4].decode("utf-8") if isinstance(raw[4], bytes) else str(raw[4])
        return reply(code, raw[1], [], 0, plan or None)
    crossed = raw[3]
    if crossed:
        return reply(code, raw[1], raw[4 + crossed :], raw[2], None, tuple(raw[4 : 4 + crossed]))
    return reply(code, raw[1], raw[4:], raw[2])


def journal_entry(
    step: Step,
    event_id: str,
    at_us: int,
    doubt: tuple[str, int, int] | None = None,
    *,
    undo: bool = False,
) -> JournalEntry:
    """What a fail-open step consumed, to replay into Redis when it answers again; with
    ``doubt`` (the process, sequence number and deadline it was sent with), a step whose
    reply was lost: counted unless Redis applied it, or (``undo``: the caller was refused)
    given back if it did."""
    rates, amounts, starts, ends = [], [], [], []
    for rule, window, cost in zip(step.rules, step.windows, step.costs, strict=True):
        is_rate = rule.kind == RATE
        rates.append(is_rate)
        amounts.append(0 if rule.kind == GATE else cost * rule.emission_us if is_rate else cost)
        starts.append(0 if window is None else window[0])
        ends.append(0 if window is None else window[1])
    process, seq, deadline = doubt or ("", 0, 0)
    # Given back, its event (if Redis applied it) is taken back by a correction.
    event = negated(step.event) if undo and step.event else step.event
    return JournalEntry(
        event_id,
        step.subject,
        at_us,
        tuple(r.field for r in step.rules),
        tuple(rates),
        tuple(amounts),
        tuple(starts),
        tuple(ends),
        event,
        step.call_id or f"jr_{event_id}",
        step.attrs,
        bool(step.call_id) and step.mode == ACQUIRE,
        process,
        seq,
        deadline,
        undo,
    )


def negated(template: str) -> str:
    """A usage template (see `tollway.events`) for minus its quantity and amount: the
    correction that takes a usage event back."""
    fields = json.loads(template)
    fields[3] = -fields[3]
    if fields[4] is not None:
        fields[4] = -fields[4]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def read_held(packed: bytes | str) -> tuple[str, int, int]:
    """A hold entry (``TAGAMOUNT@START@END``, see step.lua): its tag (``r`` rate, ``w``
    window), amount and window start."""
    text = packed.decode("utf-8") if isinstance(packed, bytes) else packed
    amount, start, _ = text[1:].split("@")
    return text[0], int(amount), int(start)
