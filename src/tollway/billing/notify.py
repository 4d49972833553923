"""Billing's hook events (`tollway.subscription.updated`, `tollway.invoice.finalized`,
`tollway.invoice.refunded`), enqueued in the same ledger transaction as the change they tell
of, so a change is never recorded without its event nor told twice.

They travel as notices (`tollway.metering.entries.Notice`): one row per id in ``notices``, one
outbox message per subscribed hook, delivered by the existing dispatchers with their retries,
signatures and dead letters. Ids are derived from what they tell (``sub_SUBJECT_SEQ``,
``inv_NUMBER``, ``cn_NUMBER``), so a retried transaction enqueues nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tollway.metering.entries import Notice
from tollway.metering.hookevents import plan_deliveries
from tollway.metering.ledger.flows import Flow
from tollway.metering.ledger.outbox import CommitExtras, Dialect, commit_flow
from tollway.policy.model import HookConfig

__all__ = ["notice_flow"]


def notice_flow(
    dialect: Dialect,
    hooks: Sequence[HookConfig],
    *,
    id: str,
    type: str,
    subject: str,
    at_us: int,
    data: Mapping[str, Any],
) -> Flow[CommitExtras]:
    """Record one billing notice and enqueue it for every hook subscribed to its type (part
    of the caller's transaction)."""
    notice = Notice(id=id, type=type, subject=subject, occurred_at_us=at_us, data=dict(data))
    extras: CommitExtras = yield from commit_flow(
        dialect, [notice], lambda fresh: plan_deliveries(hooks, [], fresh), at_us
    )
    return extras
