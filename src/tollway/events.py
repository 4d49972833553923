"""The words every layer shares about events: the event types, and the stream entry layout.

The policy names event types (a hook's ``events``), the stores write entries (``lua/step.lua``,
``lua/settle.lua`` and the memory store), and metering reads them back and delivers them.
They all import the vocabulary from here, so it is defined once and below all of them: this
module imports only the standard library (and `tollway.keyspace`, as low: how a subject is
written in a key).

**Event types** (CloudEvents ``type``): `USAGE_RECORDED`, `LIMIT_THRESHOLD`, `LIMIT_EXCEEDED`,
`PROVIDER_FAILOVER`, and billing's `SUBSCRIPTION_UPDATED`, `INVOICE_FINALIZED`,
`INVOICE_REFUNDED`; `EVENT_TYPES` lists them.

**Stream entries.** The step appends one entry per allowed consumption, and one per threshold
first reached or limit first exceeded in a window (and the router one per failover). An entry
is a flat map of short string fields:

==== ==================================================================================
``k`` the entry's kind: ``u`` usage, ``t`` threshold reached, ``x`` limit exceeded, ``f`` a
      route failed over (`KIND_TYPES` maps each to its event type)
``t`` the store's clock when the step ran (us): the event's ``occurred_at``
``d`` the usage template the client built for the step (`usage_template`): a JSON array
      ``[subject, operation, meter, quantity, amount_micros, currency, plan,
      policy_version, [limits]]``
``i`` usage only, optional: the caller's request id (the event id); absent, the id is
      derived from the stream and entry id, which a redelivery keeps
``a`` usage only, optional: the caller's attributes, a JSON object
``o`` usage only, optional: the name of a credits limit (``overage = true``) the step passed
      without drawing from the balance; the event's ``limits`` leave it out (overage, billed
      on the invoice), so an event naming a credits limit is one that credits paid
``f`` threshold / exceeded: the counter's field (``q:NAME[:OP]``, ``b:NAME[:OP]``)
``n`` threshold: which of the limit's thresholds (0-based)
``s``, ``e`` threshold / exceeded: the window's start and end (us)
``v`` threshold / exceeded: the count after the step (threshold) or as found (exceeded)
``n`` failover: the notice id (per route, provider and minute)
``r``, ``p`` failover: the route, and the providers passed over with why (a JSON array of
      ``[provider, reason]``); ``d`` is the usage template of the provider that took it
==== ==================================================================================

**Stream keys.** A subject's entries go to `stream_key`; every stream written to is added to
the `REGISTRY` set, which ``tollway worker`` reads to find them.
"""

from __future__ import annotations

import binascii
from functools import lru_cache
from typing import Final

from tollway.keyspace import key_text, prefixed

__all__ = [
    "EVENT_TYPES",
    "INVOICE_FINALIZED",
    "INVOICE_REFUNDED",
    "KIND_EXCEEDED",
    "KIND_FAILOVER",
    "KIND_THRESHOLD",
    "KIND_TYPES",
    "KIND_USAGE",
    "LIMIT_EXCEEDED",
    "LIMIT_THRESHOLD",
    "PROVIDER_FAILOVER",
    "REGISTRY",
    "SUBSCRIPTION_UPDATED",
    "USAGE_RECORDED",
    "slot_of",
    "stream_key",
    "warm_slot_tags",
]

# --------------------------------------------------------------------------- event types

USAGE_RECORDED: Final = "tollway.usage.recorded"
"""A step was committed: who, which operation, what it cost (``data.amount`` as a string)."""
LIMIT_THRESHOLD: Final = "tollway.limit.threshold"
"""A limit crossed one of its warning thresholds (e.g. 80 % of a budget used)."""
LIMIT_EXCEEDED: Final = "tollway.limit.exceeded"
"""A step was denied by a limit."""
PROVIDER_FAILOVER: Final = "tollway.provider.failover"
"""A route skipped a provider (throttled, exhausted, blocked, failing) for the next one."""
SUBSCRIPTION_UPDATED: Final = "tollway.subscription.updated"
"""A subject's plan changed (assigned, trial started or ended, cancelled, scheduled change
applied): written by `tollway.billing` with the plan history, delivered by the hooks."""
INVOICE_FINALIZED: Final = "tollway.invoice.finalized"
"""A period's invoice was finalized: numbered, immutable (``data`` is the invoice)."""
INVOICE_REFUNDED: Final = "tollway.invoice.refunded"
"""A credit note refunds part or all of an invoice (for the payment platform to pay out)."""
EVENT_TYPES: tuple[str, ...] = (
    USAGE_RECORDED,
    LIMIT_THRESHOLD,
    LIMIT_EXCEEDED,
    PROVIDER_FAILOVER,
    SUBSCRIPTION_UPDATED,
    INVOICE_FINALIZED,
    INVOICE_REFUNDED,
)

# --------------------------------------------------------------------------- entry kinds

KIND_USAGE: Final = "u"
KIND_THRESHOLD: Final = "t"
KIND_EXCEEDED: Final = "x"
KIND_FAILOVER: Final = "f"
KIND_TYPES: Final = {
    KIND_USAGE: USAGE_RECORDED,
    KIND_THRESHOLD: LIMIT_THRESHOLD,
    KIND_EXCEEDED: LIMIT_EXCEEDED,
    KIND_FAILOVER: PROVIDER_FAILOVER,
}
"""The event type of each entry kind (the ``k`` field)."""

# --------------------------------------------------------------------------- stream keys

REGISTRY: Final = "tw:events:streams"
"""A set of every event stream key a client has written to (read by `tollway worker`)."""

_SLOTS = 16384


def slot_of(subject: str) -> int:
    """The Redis Cluster hash slot of the subject's keys (``tw:{TAG}...``): their hash tag is
    the whole escaped subject (`tollway.keyspace.key_text` leaves no brace in it)."""
    tag = key_text(subject).encode()
    # An empty tag does not count: Redis hashes the whole key then.
    return binascii.crc_hqx(tag or b"tw:{}", 0) % _SLOTS


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


def stream_key(subject: str, *, cluster: bool, partitions: int, prefix: str = "") -> str:
    """The event stream the subject's steps append to. On a cluster it must share the slot of
    the subject's hash (one script touches both): one stream per slot in use. On a standalone
    Redis, ``partitions`` streams. ``prefix``: the ``[store] prefix`` (`tollway.keyspace`)."""
    slot = slot_of(subject)
    if cluster:
        return prefixed(prefix, f"tw:{{{_tags()[slot]}}}:events")
    return prefixed(prefix, f"tw:events:{slot % partitions}")
