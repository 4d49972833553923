"""What the atomic step appends for billing, and how a drain reads it back.

The step (``lua/step.lua``, ``lua/settle.lua``, and the memory store alike) appends one entry
per allowed consumption, and one per threshold first reached or limit first exceeded in a
window. An entry is a flat map of short string fields:

==== ==================================================================================
``k`` ``u`` usage, ``t`` threshold reached, ``x`` limit exceeded, ``f`` a route failed over
``t`` the store's clock when the step ran (us): the event's ``occurred_at``
``d`` the usage template the client built for the step (`usage_template`): a JSON array
      ``[subject, operation, meter, quantity, amount_micros, currency, plan,
      policy_version, [limits]]``
``i`` usage only, optional: the caller's request id (the event id); absent, the id is
      derived from the stream and entry id, which a redelivery keeps
``a`` usage only, optional: the caller's attributes, a JSON object
``f`` threshold / exceeded: the counter's field (``q:NAME[:OP]``, ``b:NAME[:OP]``)
``n`` threshold: which of the limit's thresholds (0-based)
``s``, ``e`` threshold / exceeded: the window's start and end (us)
``v`` threshold / exceeded: the count after the step (threshold) or as found (exceeded)
``n`` failover: the notice id (per route, provider and minute)
``r``, ``p`` failover: the route, and the providers passed over with why (a JSON array of
      ``[provider, reason]``); ``d`` is the usage template of the provider that took it
==== ==================================================================================

A threshold's or an exceeded limit's event id is made of the subject, field, window (and
threshold): the step emits it once per window, and the id makes a second copy (a redelivery,
or a restarted Redis) a duplicate the ledger drops.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tollway.engine.template import usage_template
from tollway.errors import InvalidUsageEventError

if TYPE_CHECKING:
    from tollway.metering.ledger.events import UsageEvent
    from tollway.policy.model import Policy

__all__ = [
    "EXCEEDED",
    "FAILOVER",
    "REGISTRY",
    "THRESHOLD",
    "USAGE",
    "Notice",
    "decode_entry",
    "stream_key",
    "usage_template",
]

USAGE = "tollway.usage.recorded"
THRESHOLD = "tollway.limit.threshold"
EXCEEDED = "tollway.limit.exceeded"
FAILOVER = "tollway.provider.failover"

REGISTRY = "tw:events:streams"
"""A set of every event stream key a client has written to (read by `tollway worker`)."""

_SLOTS = 16384


@dataclass(frozen=True, slots=True)
class Notice:
    """A threshold reached or a limit exceeded: not usage, but delivered to hooks alike."""

    id: str
    type: str
    subject: str
    occurred_at_us: int
    data: Mapping[str, Any] = field(default_factory=dict)
    """JSON-ready: ``limit``, ``kind``, ``operation``, ``plan``, ``used``, ``window_start_us``,
    ``window_end_us``, ``policy_version``; a threshold also ``threshold`` (a fraction as a
    string, like ``"0.8"``; ``used`` is the count the step reached it at). A failover carries
    ``route``, ``provider`` and ``passed_over``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "subject": self.subject,
            "occurred_at_us": self.occurred_at_us,
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notice:
        return cls(
            id=str(data["id"]),
            type=str(data["type"]),
            subject=str(data["subject"]),
            occurred_at_us=int(data["occurred_at_us"]),
            data=dict(data.get("data") or {}),
        )


# --------------------------------------------------------------------------- writing


def slot_of(subject: str) -> int:
    """The Redis Cluster hash slot of the subject's keys (``tw:{SUBJECT}...``), found as Redis
    does: by the text between the first ``{`` and the next ``}``, so a subject holding a ``}``
    hashes by its part before it (and by the whole key when that part is empty)."""
    key = f"tw:{{{subject}}}".encode()
    end = key.find(b"}", 4)
    if end > 4:
        key = key[4:end]
    return binascii.crc_hqx(key, 0) % _SLOTS


@lru_cache(maxsize=1)
def _tags() -> list[str]:
    """For every hash slot, a short tag whose keys land in it (found once, in about 50 ms)."""
    tags: list[str | None] = [None] * _SLOTS
    missing, n = _SLOTS, 0
    while missing:
        tag = f"e{n}"
        slot = binascii.crc_hqx(tag.encode(), 0) % _SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return [t for t in tags if t is not None]


def warm_slot_tags() -> None:
    """Find the slot tags now (a cluster client calls this when it starts)."""
    _tags()


def stream_key(subject: str, *, cluster: bool, partitions: int) -> str:
    """The event stream the subject's steps append to. On a cluster it must share the slot of
    the subject's hash (one script touches both): one stream per slot in use. On a standalone
    Redis, ``partitions`` streams."""
    slot = slot_of(subject)
    if cluster:
        return f"tw:{{{_tags()[slot]}}}:events"
    return f"tw:events:{slot % partitions}"


# --------------------------------------------------------------------------- reading


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def decode_entry(
    stream: str,
    entry_id: str,
    fields: Mapping[Any, Any],
    *,
    recorded_at_us: int,
    policy: Policy | None = None,
) -> UsageEvent | Notice:
    """The event an entry of ``stream`` stands for. `InvalidUsageEventError` for an entry
    that is not one (the drain parks it rather than lose or loop on it)."""
    # Imported here: the ledger package imports this module (for `Notice`).
    from tollway.metering.ledger.events import UsageEvent

    where = f"stream {stream} entry {entry_id}"
    try:
        got = {_text(k): _text(v) for k, v in fields.items()}
        kind = got["k"]
        at = int(got["t"])
        template = json.loads(got["d"])
        subject, operation, meter, quantity, amount, currency, plan, version, limits = template
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidUsageEventError(f"{where} is not a tollway event entry: {exc!r}") from None
    if kind == "u":
        ident = got.get("i") or f"tw-{_label(stream)}-{entry_id}"
        try:
            attributes = json.loads(got["a"]) if got.get("a") else {}
        except ValueError as exc:
            raise InvalidUsageEventError(
                f"{where} has attributes that are not JSON: {exc}"
            ) from None
        return UsageEvent(
            id=ident,
            subject=subject,
            operation=operation,
            meter=meter,
            quantity=quantity,
            amount_micros=amount,
            currency=currency,
            plan=plan,
            policy_version=version,
            limits=tuple(limits),
            occurred_at_us=at,
            recorded_at_us=recorded_at_us,
            attributes=attributes,
        )
    if kind == "f":
        try:
            passed = [{"provider": p, "reason": r} for p, r in json.loads(got["p"])]
            ident, route = got["n"], got["r"]
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidUsageEventError(f"{where} is not a failover entry: {exc!r}") from None
        info = {"route": route, "provider": plan, "passed_over": passed, "policy_version": version}
        return Notice(ident, FAILOVER, subject, at, info)
    if kind not in ("t", "x"):
        raise InvalidUsageEventError(f"{where} has kind {kind!r}; expected u, t, x or f")
    try:
        counter, start, end, value = got["f"], int(got["s"]), int(got["e"]), int(got["v"])
        index = int(got["n"]) if kind == "t" else 0
    except (KeyError, ValueError) as exc:
        raise InvalidUsageEventError(f"{where} lacks a limit field: {exc!r}") from None
    letter, _, rest = counter.partition(":")
    name, _, scoped = rest.partition(":")
    data: dict[str, Any] = {
        "limit": name,
        "kind": {"q": "quota", "b": "budget", "r": "rate"}.get(letter, letter),
        "operation": scoped or operation,
        "plan": plan,
        "used": value,
        "window_start_us": start,
        "window_end_us": end,
        "policy_version": version,
    }
    if kind == "x":
        ident = f"exc-{subject}-{counter}-{start}"
        return Notice(ident, EXCEEDED, subject, at, data)
    data["threshold"] = _threshold(policy, plan, subject, name, index)
    ident = f"thr-{subject}-{counter}-{start}-{index}"
    return Notice(ident, THRESHOLD, subject, at, data)


def _label(stream: str) -> str:
    """``tw:events:3`` → ``3``; ``tw:{e123}:events`` → ``e123``."""
    if stream.startswith("tw:{"):
        return stream[4 : stream.index("}")]
    return stream.rsplit(":", 1)[-1]


def _threshold(
    policy: Policy | None, plan: str | None, subject: str, name: str, index: int
) -> str | None:
    """The threshold as a fraction (``"0.8"``), from the policy (None if it no longer has it)."""
    if policy is None:
        return None
    from tollway.engine.step import PROVIDER_PREFIX

    limits: tuple[Any, ...] = ()
    if subject.startswith(PROVIDER_PREFIX):
        provider = policy.providers.get(subject[len(PROVIDER_PREFIX) :])
        limits = tuple(provider.limits) if provider is not None else ()
    elif plan is not None and plan in policy.plans:
        limits = tuple(policy.plans[plan].limits)
    for limit in limits:
        if limit.name == name and index < len(limit.thresholds):
            value: Decimal = limit.thresholds[index]
            return str(value.normalize())
    return None
