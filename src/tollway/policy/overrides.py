"""Per-subject overrides: one limit of one subject, raised (or added) for a time.

An override's ``spec`` is a limit table as the policy file writes one (``{ quota =
"5000/hour" }``, ``{ rate = "50/s", burst = 100 }``...; its ``name`` is the override's
limit name). It is validated by the policy's own parser, in a document holding the policy's
operations, timezone and ``on_error``, so an override is exactly as valid as the same limit
in a plan; problems are reported under the key path ``override.<key>``.

`with_overrides` is the subject's limits with the overrides applied: a limit of the same
name is replaced in place, another is added after the plan's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollway.errors import PolicyError, PolicyIssue
from tollway.policy.model import Limit, Policy
from tollway.policy.parse import build_policy

MAX_SPEC_KEYS = 32
_PLACE = "plans.override.limits[0]"


@dataclass(frozen=True, slots=True)
class Override:
    """One subject's limit ``limit`` (parsed) in force until ``expires_us`` (engine clock)."""

    subject: str
    name: str
    limit: Limit
    expires_us: int


def override_limit(policy: Policy, name: str, spec: Mapping[str, Any]) -> Limit:
    """``spec`` parsed as a limit called ``name`` of ``policy``; `PolicyError` otherwise."""
    if not isinstance(spec, Mapping) or len(spec) > MAX_SPEC_KEYS:
        raise PolicyError([PolicyIssue("override", f"{spec!r:.80}; expected a limit table")])
    if "name" in spec and spec["name"] != name:
        raise PolicyError(
            [PolicyIssue("override.name", f"{spec['name']!r:.80}; expected {name!r} or none")]
        )
    operations: dict[str, Any] = {}
    for op in policy.operations.values():
        entry: dict[str, Any] = {"cost": op.cost}
        if op.price is not None:
            entry["price"] = str(op.price)
        elif op.explicit_amount:
            entry["price"] = "explicit"
        operations[op.name] = entry
    document = {
        "store": {"on_error": policy.store.on_error},
        "defaults": {"timezone": policy.defaults.timezone},
        "operations": operations,
        "plans": {"override": {"limits": [{**spec, "name": name}]}},
    }
    try:
        parsed = build_policy(document)
    except PolicyError as exc:
        raise PolicyError([_moved(issue) for issue in exc.issues]) from None
    return parsed.plans["override"].limits[0]


def _moved(issue: PolicyIssue) -> PolicyIssue:
    path = issue.path
    if path.startswith(_PLACE):
        path = "override" + path[len(_PLACE) :]
    return PolicyIssue(path, issue.message)


def with_overrides(limits: tuple[Limit, ...], overrides: tuple[Limit, ...]) -> tuple[Limit, ...]:
    """``limits`` with each override replacing the limit of its name, or added at the end."""
    by_name = {limit.name: limit for limit in overrides}
    out = [by_name.pop(limit.name, limit) for limit in limits]
    out.extend(by_name.values())
    return tuple(out)


__all__ = ["MAX_SPEC_KEYS", "Override", "override_limit", "with_overrides"]
