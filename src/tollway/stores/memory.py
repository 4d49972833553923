"""The embedded store: the same atomic step as the Redis script, in process memory.

A subject's state is a dict of the same fields as its Redis hash (see ``lua/lib.lua``), and
every step follows the script line for line, so both stores answer alike. One lock makes each
step atomic across threads; a step never awaits, so it is atomic across asyncio tasks too.
Memory stays bounded without a thread per key: a subject is pushed on a heap by the time its
state may be dropped, and each step first pops what has expired.
"""

from __future__ import annotations

import heapq
import threading
import uuid
from collections import deque
from collections.abc import Callable

from tollway.clock import US
from tollway.engine.credits import NEVER, CreditsOp, CreditsReply
from tollway.engine.health import (
    BREAKER,
    CLEAR,
    CLOSE,
    ERROR,
    ERRORS,
    EXTEND,
    FLOOR,
    GATE_FIELDS,
    HealthOp,
    HealthReply,
)
from tollway.engine.replies import DENIED, DUPLICATE, OK, PLAN_MISMATCH, STALE_WINDOW, Reply, reply
from tollway.engine.rules import CREDITS, GATE, RATE, WINDOW
from tollway.engine.settle import Hold, SettleStep, hold_of
from tollway.engine.step import ACQUIRE, PEEK, RESERVE, Step
from tollway.engine.template import new_event_id
from tollway.stores.credits_memory import MemoryCredits
from tollway.stores.request_ids import RequestIds, Scoped

# How long a window's counter outlives the window (for late refunds and inspection).
RETENTION_US = 3600 * US
# A subject's expiry is pushed out with this much slack, so it moves about once a minute.
_SLACK_US = 60 * US

_new_tuple = tuple.__new__

State = dict[str, int]
_EMPTY: State = {}
_HEALTH = (*GATE_FIELDS, ERRORS, ERRORS + "@")
"""The state of a subject that has none; never written to."""


class MemoryStore:
    """Counters, plan assignments and reservation holds in one process."""

    url = "memory://"

    def __init__(self, clock: Callable[[], int], dedupe_us: int = 86_400 * US) -> None:
        self.clock = clock
        self.dedupe_us = dedupe_us
        self.events: deque[dict[str, str]] = deque()
        """Entries the steps appended (the format of `tollway.events`), oldest first:
        the embedded drain takes them under `lock`."""
        self._ids = RequestIds(dedupe_us)
        self._lock = threading.Lock()
        self.lock = self._lock
        self._states: dict[str, State] = {}
        self._plans: dict[str, str] = {}
        self._holds: dict[str, Hold] = {}
        self.records: dict[str, str] = {}
        """Small records kept beside the counters (API keys); callers hold `lock` to change them."""
        # (when, subject, "") for a subject's state; (when, "", hold id) for a hold.
        self._expiry: list[tuple[int, str, str]] = []
        self._credits = MemoryCredits(self._states, self._lock, clock)

    # -- the atomic step --------------------------------------------------------------------

    def execute(self, step: Step) -> Reply:
        with self._lock:
            now = self.clock()
            span = step.span
            if not span[0] <= now < span[1]:
                return reply(STALE_WINDOW, now, [])
            subject = step.subject
            plan = self._plans.get(subject)
            if plan != step.assigned:
                return reply(PLAN_MISMATCH, now, [], 0, plan)
            if self._expiry and self._expiry[0][0] <= now:
                self._sweep(now)
            call = step.call_id
            seen: Scoped | None = None
            repeat, refused = False, 0
            if call and step.mode == ACQUIRE:
                # A request id is scoped to (subject, operation); a repeat must match the
                # cost and amount it was taken at, and may come `max_repeats` times.
                seen = (subject, step.scope, call)
                repeat, refused = self._ids.check(seen, step.fingerprint, step.max_repeats, now)
            # Reading must not create state: a subject only read or denied leaves nothing.
            state = self._states.get(subject) or _EMPTY
            windows = step.windows
            values: list[int] = []
            after: list[int] = []
            fresh = misfits = 0
            denied = False
            costs = step.costs
            bit = 1
            # Index loops: several times faster here than enumerate(zip(...)).
            i = 0
            for rule in step.rules:
                value = state.get(rule.field, 0)
                if rule.kind == RATE:
                    new = (value if value > now else now) + costs[i] * rule.emission_us
                    fit = new - now <= rule.capacity_us
                elif rule.kind == GATE:
                    fit = value <= now
                    new = now + rule.probe_us if fit and value and rule.probe_us else value
                elif rule.kind == CREDITS:
                    if now >= state.get(rule.field + "^", NEVER):
                        value = self._credits.allocate(subject, rule.field, now)
                    if repeat:  # drawn once, by the step that took the id
                        new, fit = value, True
                    else:
                        new = value - costs[i]
                        fit = new >= 0
                else:
                    if state.get(rule.start_field) != windows[i][0]:  # type: ignore[index]
                        value = 0
                        fresh |= bit
                    if repeat:  # counted once, by the step that took the id
                        new, fit = value, True
                        fresh &= ~bit
                    else:
                        new = value + costs[i]
                        fit = new <= rule.hard
                values.append(value)
                if fit:
                    after.append(new)
                else:
                    after.append(value)
                    misfits |= bit
                    if not rule.shadow and not rule.overage:
                        denied = True
                bit <<= 1
                i += 1
            mode = step.mode
            if mode == PEEK:
                return reply(OK, now, values, misfits)
            if refused:  # refused for its id alone: nothing written, values as found
                return reply(refused, now, values)
            event_id = call
            if seen is not None and not denied:
                if repeat:
                    self._ids.repeated(seen)
                else:
                    event_id = self._ids.take(seen, step.fingerprint, now)
            if denied:
                if step.event:
                    self._exceeded(step, state, now, values, misfits)
                return reply(DENIED, now, values, misfits)
            if state is _EMPTY:
                state = self._states[subject] = {}
            needed = 0
            bit = 1
            i = 0
            for rule in step.rules:
                new = after[i]
                if new != values[i] or fresh & bit:
                    state[rule.field] = new
                    if rule.kind == CREDITS:
                        pass  # a balance, not a time: the grant keeps the state alive
                    elif rule.kind != WINDOW:
                        if new > needed:
                            needed = new
                    else:
                        window = windows[i]
                        assert window is not None
                        if fresh & bit:
                            state[rule.start_field] = window[0]
                        if window[1] + RETENTION_US > needed:
                            needed = window[1] + RETENTION_US
                bit <<= 1
                i += 1
            if needed > state.get("exp", 0):
                self._keep_until(subject, state, needed)
            if repeat:
                return reply(DUPLICATE, now, after, misfits)
            if mode == RESERVE:
                self._hold(step, state, now, misfits)
            elif step.event:
                self._usage(step.event, now, event_id, step.attrs, _overage(step, misfits))
            if step.check is not None and step.check.marks:
                crossed = self._crossings(step, state, values, after, misfits, now)
                return reply(OK, now, after, misfits, None, crossed)
            return _new_tuple(Reply, (OK, now, after, misfits, None, ()))  # reply(), inlined

    # -- events (see tollway.events) -------------------------------------------------------

    def _usage(self, template: str, now: int, call_id: str, attrs: str, overage: str = "") -> None:
        entry = {"k": "u", "t": str(now), "d": template, "i": call_id or new_event_id(now)}
        if attrs:
            entry["a"] = attrs
        if overage:
            entry["o"] = overage
        self.events.append(entry)

    def _exceeded(
        self, step: Step, state: State, now: int, values: list[int], misfits: int
    ) -> None:
        """A limit exceeded: reported by the first refused step of its window."""
        for i, rule in enumerate(step.rules):
            if rule.kind != WINDOW or rule.shadow or not (misfits >> i) & 1:
                continue
            window = step.windows[i]
            assert window is not None
            flag = rule.field + "#x"
            if state.get(flag) != window[0]:
                if state is _EMPTY:
                    state = self._states[step.subject] = {}
                state[flag] = window[0]
                self._keep_until(step.subject, state, window[1] + RETENTION_US)
                self.events.append(
                    {
                        "k": "x",
                        "t": str(now),
                        "d": step.event,
                        "f": rule.field,
                        "s": str(window[0]),
                        "e": str(window[1]),
                        "v": str(values[i]),
                    }
                )

    def held(self, subject: str) -> dict[tuple[str, int], int]:
        """What the subject's open reservation holds count in its window counters, per
        (field, window start): counted by the store, and in no usage event until committed."""
        with self._lock:
            now = self.clock()
            out: dict[tuple[str, int], int] = {}
            for hold in self._holds.values():
                if hold.subject != subject or hold.expires_us <= now:
                    continue
                for field, is_rate, amount, start, _ in hold.entries:
                    if not is_rate and amount:
                        out[field, start] = out.get((field, start), 0) + amount
            return out

    def append(self, subject: str, entry: dict[str, str]) -> None:
        """Queue an entry that no step wrote (a route's failover notice)."""
        with self._lock:
            self.events.append(entry)

    def _crossings(
        self, step: Step, state: State, values: list[int], after: list[int], misfits: int, now: int
    ) -> tuple[int, ...]:
        """Thresholds first reached in their window by this step, marked so no other step
        reports them again (``field#k`` holds the window start of the last report)."""
        out = []
        for i, rule in enumerate(step.rules):
            if not rule.thresholds or (misfits >> i) & 1:
                continue
            window = step.windows[i]
            assert window is not None
            for k, mark in enumerate(rule.thresholds):
                flag = f"{rule.field}#{k}"
                if values[i] < mark <= after[i] and state.get(flag) != window[0]:
                    state[flag] = window[0]
                    out.append(i * 64 + k)
                    if step.event:
                        self.events.append(
                            {
                                "k": "t",
                                "t": str(now),
                                "d": step.event,
                                "f": rule.field,
                                "n": str(k),
                                "s": str(window[0]),
                                "e": str(window[1]),
                                "v": str(after[i]),
                            }
                        )
        return tuple(out)

    def _keep_until(self, subject: str, state: State, needed: int) -> None:
        if subject in self._plans or needed <= state.get("exp", 0):
            return
        state["exp"] = needed + _SLACK_US
        heapq.heappush(self._expiry, (needed + _SLACK_US, subject, ""))

    def _hold(self, step: Step, state: State, now: int, misfits: int) -> None:
        hold = hold_of(step, misfits, now + step.hold_ttl_us)
        self._holds[hold.id] = hold
        heapq.heappush(self._expiry, (hold.expires_us, "", hold.id))
        self._keep_until(step.subject, state, hold.expires_us + RETENTION_US)

    def _sweep(self, now: int) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, subject, hold_id = heapq.heappop(expiry)
            if not subject:
                hold = self._holds.pop(hold_id, None)
                if hold is not None:
                    self._apply(hold, [-entry[2] for entry in hold.entries], now, now)
                continue
            state = self._states.get(subject)
            if state is None or subject in self._plans or state.get("exp", 0) > now:
                continue  # assigned since, or its expiry moved on (a later heap entry exists)
            del self._states[subject]

    def _apply(self, hold: Hold, deltas: list[int], base: int, now: int) -> list[int]:
        """``adjust`` of lua/lib.lua for each entry of ``hold``; the values after."""
        state = self._states.setdefault(hold.subject, {})
        out = []
        for (field, is_rate, _, start, ends), delta in zip(hold.entries, deltas, strict=True):
            out.append(
                self._adjust(hold.subject, state, field, is_rate, delta, start, ends, base, now)
            )
        return out

    def _adjust(
        self,
        subject: str,
        state: State,
        field: str,
        is_rate: bool,
        delta: int,
        start: int,
        ends: int,
        base: int,
        now: int,
    ) -> int:
        if field.startswith("c:"):
            # A prepaid balance counts down: a delta (what is consumed) is drawn as far as it
            # goes (never below 0), a negative one given back (the next allocation puts it on
            # the grants last drawn).
            value = max(0, state.get(field, 0) - delta)
            state[field] = value
            return value
        if is_rate:
            if field not in state and delta <= 0:
                return 0
            value = state.get(field, 0)
            if delta > 0 and value < base:
                value = base
            value += delta
            if value <= now:
                state.pop(field, None)
                return 0
            state[field] = value
            self._keep_until(subject, state, value)
            return value
        value = state.get(field, 0)
        if state.get(field + "@") != start:
            current = state.get(field + "@")
            if delta <= 0 or now >= ends or (current is not None and current > start):
                return 0
            value = 0
        value = max(0, value + delta)
        state[field] = value
        state[field + "@"] = start
        self._keep_until(subject, state, ends + RETENTION_US)
        return value

    # -- settling reservations and replays --------------------------------------------------

    def settle(self, settle: SettleStep) -> Reply:
        with self._lock:
            now = self.clock()
            if self._expiry and self._expiry[0][0] <= now:
                self._sweep(now)
            live = self._holds.pop(settle.hold.id, None) is not None
            deltas = settle.deltas if live else settle.late_deltas
            state = self._states.setdefault(settle.hold.subject, {})
            values = []
            for (field, is_rate, _, start, ends), delta in zip(
                settle.hold.entries, deltas, strict=True
            ):
                if delta:
                    values.append(
                        self._adjust(
                            settle.hold.subject, state, field, is_rate, delta, start, ends, now, now
                        )
                    )
                elif is_rate or state.get(field + "@") == start or field.startswith("c:"):
                    values.append(state.get(field, 0))
                else:
                    values.append(0)
            if not state:
                self._states.pop(settle.hold.subject, None)
            if settle.event:
                event_id = settle.event_id
                # As settle.lua: a caller's id taken already gets an id of its own.
                if settle.caller_id and not self._ids.claim(settle.hold.subject, event_id, now):
                    event_id = f"{event_id}~{settle.hold.id}"
                self._usage(settle.event, now, event_id, settle.attrs)
            return reply(OK if live else DENIED, now, values)

    # -- provider health (lua/health.lua, line for line) ------------------------------------

    def health(self, op: HealthOp) -> HealthReply:
        with self._lock:
            now = self.clock()
            subject = op.subject
            state = self._states.get(subject)
            if state is None:
                state = self._states[subject] = {}
            if op.op == EXTEND:
                target = max(op.until_us, now + op.for_us)
                old = state.get(op.field, 0)
                if target > old:
                    state[op.field] = target
                    self._keep_until(subject, state, target)
                    return HealthReply(now, target)
                return HealthReply(now, old)
            if op.op == ERROR:
                breaker = state.get(BREAKER, 0)
                if op.force:
                    return self._open(subject, state, now + op.open_us, now)
                if breaker > now:
                    return HealthReply(now, breaker)
                count, start = state.get(ERRORS, 0), state.get(ERRORS + "@", 0)
                if start + op.window_us <= now:
                    count, start = 0, now
                count += 1
                if count >= op.threshold:
                    return self._open(subject, state, now + op.open_us, now)
                state[ERRORS], state[ERRORS + "@"] = count, start
                self._keep_until(subject, state, start + op.window_us)
                return HealthReply(now, breaker, count)
            if op.op in (CLOSE, CLEAR):
                for field in (BREAKER, ERRORS, ERRORS + "@") if op.op == CLOSE else _HEALTH:
                    state.pop(field, None)
                return HealthReply(now, 0)
            if op.op == FLOOR:
                value = state.get(op.field, 0)
                if state.get(op.field + "@") != op.start_us:
                    value = 0
                if not op.start_us <= now < op.end_us:
                    return HealthReply(now, value)
                floor = op.hard - op.remaining
                if floor > value:
                    state[op.field], state[op.field + "@"] = floor, op.start_us
                    self._keep_until(subject, state, op.end_us + RETENTION_US)
                    return HealthReply(now, floor)
                return HealthReply(now, value)
            raise ValueError(f"health: unknown op {op.op!r}")

    def _open(self, subject: str, state: State, until: int, now: int) -> HealthReply:
        state[BREAKER] = until
        state.pop(ERRORS, None)
        state.pop(ERRORS + "@", None)
        self._keep_until(subject, state, until)
        return HealthReply(now, until)

    # -- administration ---------------------------------------------------------------------

    def credits(self, op: CreditsOp) -> CreditsReply:
        """Grant, read or revoke prepaid credits (`tollway.stores.credits_memory`)."""
        return self._credits.run(op)

    def assign(self, subject: str, plan: str | None) -> None:
        with self._lock:
            if plan is not None:
                self._plans[subject] = plan
                return
            if self._plans.pop(subject, None) is not None:
                state = self._states.get(subject)
                if state is not None and state.get("exp") != NEVER:
                    state.pop("exp", None)  # unassigned again: the next step sets an expiry

    def assigned(self, subject: str) -> str | None:
        with self._lock:
            return self._plans.get(subject)

    def delete(self, subject: str, fields: list[str]) -> int:
        with self._lock:
            state = self._states.get(subject, {})
            cleared = sum(state.pop(field, None) is not None for field in fields)
            for field in fields:
                state.pop(field + "@", None)
            return cleared

    def new_hold_id(self) -> str:
        return uuid.uuid4().hex

    def subjects(self) -> list[str]:
        """Every subject the store holds state for (counters, gates, an assigned plan)."""
        with self._lock:
            return sorted(set(self._states) | set(self._plans))

    def size(self) -> int:
        """Subjects with state, plus holds, held now (for tests of bounded memory)."""
        with self._lock:
            return len(self._states) + len(self._holds)

    def ping(self) -> None:
        """The memory store always answers."""

    def close(self) -> None:
        pass


def _overage(step: Step, misfits: int) -> str:
    """The credits limit a step passed without drawing (its event must not name it), or ''."""
    check = step.check
    if check is None or check.credits < 0 or not (misfits >> check.credits) & 1:
        return ""
    return step.rules[check.credits].name
