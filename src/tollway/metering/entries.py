"""How a drain reads back what the atomic step appended: entries into events and notices.

The entry layout, the event types and the stream keys are shared vocabulary and live in
`tollway.events` (the stores write entries; this module only reads them). They are re-exported
here under their older names (`USAGE`, `THRESHOLD`, `EXCEEDED`, `FAILOVER`, `REGISTRY`,
`stream_key`, `slot_of`) for the code and tests that import them from here.

A threshold's or an exceeded limit's event id is made of the subject, field, window (and
threshold): the step emits it once per window, and the id makes a second copy (a redelivery,
or a restarted Redis) a duplicate the ledger drops.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tollway.engine.template import usage_template
from tollway.errors import InvalidUsageEventError
from tollway.events import (
    KIND_EXCEEDED,
    KIND_FAILOVER,
    KIND_THRESHOLD,
    KIND_USAGE,
    REGISTRY,
    slot_of,
    stream_key,
    warm_slot_tags,
)
from tollway.events import LIMIT_EXCEEDED as EXCEEDED
from tollway.events import LIMIT_THRESHOLD as THRESHOLD
from tollway.events import PROVIDER_FAILOVER as FAILOVER
from tollway.events import USAGE_RECORDED as USAGE

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
    "slot_of",
    "stream_key",
    "usage_template",
    "warm_slot_tags",
]


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
    if kind == KIND_USAGE:
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
            # A credits limit the step passed by overage (nothing drawn) is not named.
            limits=tuple(n for n in limits if n != got["o"]) if "o" in got else tuple(limits),
            occurred_at_us=at,
            recorded_at_us=recorded_at_us,
            attributes=attributes,
        )
    if kind == KIND_FAILOVER:
        try:
            passed = [{"provider": p, "reason": r} for p, r in json.loads(got["p"])]
            ident, route = got["n"], got["r"]
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidUsageEventError(f"{where} is not a failover entry: {exc!r}") from None
        info = {"route": route, "provider": plan, "passed_over": passed, "policy_version": version}
        return Notice(ident, FAILOVER, subject, at, info)
    if kind not in (KIND_THRESHOLD, KIND_EXCEEDED):
        raise InvalidUsageEventError(f"{where} has kind {kind!r}; expected u, t, x or f")
    try:
        counter, start, end, value = got["f"], int(got["s"]), int(got["e"]), int(got["v"])
        index = int(got["n"]) if kind == KIND_THRESHOLD else 0
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
    if kind == KIND_EXCEEDED:
        ident = f"exc-{subject}-{counter}-{start}"
        return Notice(ident, EXCEEDED, subject, at, data)
    data["threshold"] = _threshold(policy, plan, subject, name, index)
    ident = f"thr-{subject}-{counter}-{start}-{index}"
    return Notice(ident, THRESHOLD, subject, at, data)


def _label(stream: str) -> str:
    """``tw:events:3`` → ``3``; ``tw:{e123}:events`` → ``e123``; under a ``[store] prefix``
    (``acme:tw:events:3``, ``acme:tw:{e123}:events``) the same."""
    if "{" in stream:
        return stream[stream.index("{") + 1 : stream.index("}")]
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
