"""Roles and what each may do: the RBAC matrix of the control plane, as one table.

`PERMISSIONS` maps every action (a stable string, ``area.verb``) to the roles allowed it;
nothing else decides. Least privilege: ``viewer`` reads subjects, plans, keys (metadata),
policies, providers, hooks and invoices; ``support`` adds resets, per-subject overrides (the
issue's "raise one customer's limit for a time") and credit grants up to ``[admin]
support_grant_max``; ``billing`` handles invoices, credit notes, grants and plan assignments;
``operator`` plans, limits, policies, keys, providers, hooks and overrides; ``admin`` everything,
tokens included. The audit log is read by ``operator`` and ``admin`` only: it holds the before
and after of every change, token names and client addresses, more than a read-only role needs.

A token may be scoped to a subject prefix (a tenant, like ``acme:``). A scoped token may only
do *subject* actions (`SUBJECT_ACTIONS`), on subjects inside its scope: `require` refuses a
subject outside it, and a list or search must keep only what `in_scope` allows. Actions that
act on every subject at once (policies, providers, hooks, tokens, the audit log) are refused to
a scoped token whatever its role: they would reach outside the tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tollway.errors import ForbiddenError, InvalidArgumentError
from tollway.money import Money

__all__ = [
    "ACTIONS",
    "PERMISSIONS",
    "ROLES",
    "SUBJECT_ACTIONS",
    "Principal",
    "allowed",
    "check_role",
    "check_scope",
    "in_scope",
    "matrix_markdown",
    "require",
    "require_grant",
    "sorted_roles",
]

ROLES = ("viewer", "support", "billing", "operator", "admin")
SCOPE_MAX = 128
SCOPE_ENDS = ":/._-"
"""A scope ends with a separator, so ``acme:`` never covers ``acme2:...`` (``acme`` would)."""

_ALL = frozenset(ROLES)
_SUPPORT_UP = frozenset({"support", "operator", "admin"})
_BILLING = frozenset({"billing", "admin"})
_OPERATOR = frozenset({"operator", "admin"})
_ADMIN = frozenset({"admin"})

_TABLE: dict[str, frozenset[str]] = {
    # subjects: standings, plans, decisions
    "subjects.read": _ALL,
    "subjects.reset": _SUPPORT_UP,
    "subjects.assign": frozenset({"billing", "operator", "admin"}),
    "overrides.write": _SUPPORT_UP,
    "credits.grant": frozenset({"support", "billing", "admin"}),
    # billing documents
    "invoices.read": _ALL,
    "invoices.write": _BILLING,
    "credit_notes.write": _BILLING,
    # API keys (metadata only when read)
    "keys.read": _ALL,
    "keys.write": _OPERATOR,
    # global configuration
    "policies.read": _ALL,
    "policies.write": _OPERATOR,
    "providers.read": _ALL,
    "providers.write": _OPERATOR,
    "hooks.read": _ALL,
    "hooks.write": _OPERATOR,
    "metrics.read": _ALL,
    # the control plane itself
    "audit.read": _OPERATOR,
    "tokens.read": _ADMIN,
    "tokens.write": _ADMIN,
}
PERMISSIONS: Mapping[str, frozenset[str]] = MappingProxyType(_TABLE)
"""action -> the roles allowed it."""
ACTIONS = tuple(_TABLE)
SUBJECT_ACTIONS = frozenset(
    {
        "subjects.read",
        "subjects.reset",
        "subjects.assign",
        "overrides.write",
        "credits.grant",
        "invoices.read",
        "invoices.write",
        "credit_notes.write",
        "keys.read",
        "keys.write",
    }
)
"""Actions on one subject's things: allowed to a scoped token inside its scope."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request: an authenticated admin token (or the CLI, as ``admin``)."""

    token_id: str
    name: str
    role: str
    scope: str | None = None
    """A subject prefix: the token sees and changes only subjects starting with it."""


def check_role(role: object) -> str:
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidArgumentError(f"role: {role!r:.80} is not a role; expected one of {ROLES}")
    return role


def check_scope(scope: object) -> str | None:
    """``None`` (every subject) or a subject prefix ending with one of ``: / . _ -``."""
    if scope is None:
        return None
    if (
        not isinstance(scope, str)
        or not 2 <= len(scope) <= SCOPE_MAX
        or not scope.isprintable()
        or any(c.isspace() for c in scope)
        or scope[-1] not in SCOPE_ENDS
    ):
        raise InvalidArgumentError(
            f"scope: {scope!r:.80} is not a subject prefix; expected 2..{SCOPE_MAX} printable "
            f"characters without spaces ending with one of {' '.join(SCOPE_ENDS)}, like 'acme:'"
        )
    return scope


def _action(action: str) -> frozenset[str]:
    roles = _TABLE.get(action)
    if roles is None:
        raise InvalidArgumentError(f"action: {action!r:.80} is not an admin action")
    return roles


def allowed(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (an unknown action is a bug: `InvalidArgumentError`)."""
    return role in _action(action)


def in_scope(principal: Principal, subject: str) -> bool:
    """Whether ``principal`` may see ``subject`` (always, unscoped)."""
    return principal.scope is None or subject.startswith(principal.scope)


def require(principal: Principal, action: str, subject: str | None = None) -> None:
    """`ForbiddenError` unless ``principal`` may do ``action`` (on ``subject``, when given)."""
    if not allowed(principal.role, action):
        raise ForbiddenError(
            f"admin token {principal.token_id} ({principal.name}) has role {principal.role}, "
            f"which may not {action}; roles allowed: {', '.join(sorted_roles(action))}"
        )
    if principal.scope is None:
        return
    if action not in SUBJECT_ACTIONS:
        raise ForbiddenError(
            f"admin token {principal.token_id} is scoped to subjects {principal.scope!r}*; "
            f"{action} acts on every subject"
        )
    if subject is not None and not in_scope(principal, subject):
        raise ForbiddenError(
            f"admin token {principal.token_id} is scoped to subjects {principal.scope!r}*; "
            f"{subject!r:.80} is outside it"
        )


def require_grant(principal: Principal, subject: str, amount: Money, support_max: Money) -> None:
    """`require` for ``credits.grant``, and a support token's grant at most ``support_max``."""
    require(principal, "credits.grant", subject)
    if principal.role != "support":
        return
    if amount.currency != support_max.currency or amount.micros > support_max.micros:
        raise ForbiddenError(
            f"a support token grants at most {support_max} at once ([admin] "
            f"support_grant_max); {amount} needs a billing or admin token"
        )


def sorted_roles(action: str) -> list[str]:
    roles = _action(action)
    return [role for role in ROLES if role in roles]


def matrix_markdown() -> str:
    """The matrix as a Markdown table (docs/admin.md holds it; a test keeps them equal)."""
    lines = [
        "| action | " + " | ".join(ROLES) + " | scoped token |",
        "|---|" + "---|" * len(ROLES) + "---|",
    ]
    for action in ACTIONS:
        cells = ["yes" if role in _TABLE[action] else "-" for role in ROLES]
        scoped = "in scope" if action in SUBJECT_ACTIONS else "-"
        lines.append(f"| `{action}` | " + " | ".join(cells) + f" | {scoped} |")
    return "\n".join(lines) + "\n"
