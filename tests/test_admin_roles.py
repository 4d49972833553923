"""The RBAC matrix: every action x every role, written out here as a table and compared with
`tollway.admin.roles`, and the matrix in docs/admin.md generated from the same mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway.admin.roles import (
    ACTIONS,
    PERMISSIONS,
    ROLES,
    SUBJECT_ACTIONS,
    Principal,
    allowed,
    check_role,
    check_scope,
    in_scope,
    matrix_markdown,
    require,
    require_grant,
)
from tollway.errors import ForbiddenError, InvalidArgumentError
from tollway.money import Money

DOC = Path(__file__).resolve().parent.parent / "docs" / "admin.md"

# action: (viewer, support, billing, operator, admin) -- 1 allowed, 0 forbidden; then whether
# a scoped token may do it (inside its scope). Written by hand, on purpose: a change to the
# roles must change this table too.
MATRIX: dict[str, tuple[tuple[int, int, int, int, int], bool]] = {
    "subjects.read": ((1, 1, 1, 1, 1), True),
    "subjects.reset": ((0, 1, 0, 1, 1), True),
    "subjects.assign": ((0, 0, 1, 1, 1), True),
    "overrides.write": ((0, 1, 0, 1, 1), True),
    "credits.grant": ((0, 1, 1, 0, 1), True),
    "invoices.read": ((1, 1, 1, 1, 1), True),
    "invoices.write": ((0, 0, 1, 0, 1), True),
    "credit_notes.write": ((0, 0, 1, 0, 1), True),
    "keys.read": ((1, 1, 1, 1, 1), True),
    "keys.write": ((0, 0, 0, 1, 1), True),
    "policies.read": ((1, 1, 1, 1, 1), False),
    "policies.write": ((0, 0, 0, 1, 1), False),
    "providers.read": ((1, 1, 1, 1, 1), False),
    "providers.write": ((0, 0, 0, 1, 1), False),
    "hooks.read": ((1, 1, 1, 1, 1), False),
    "hooks.write": ((0, 0, 0, 1, 1), False),
    "metrics.read": ((1, 1, 1, 1, 1), False),
    "audit.read": ((0, 0, 0, 1, 1), False),
    "tokens.read": ((0, 0, 0, 0, 1), False),
    "tokens.write": ((0, 0, 0, 0, 1), False),
}
CASES = [
    (action, role, bool(row[i]))
    for action, (row, _) in MATRIX.items()
    for i, role in enumerate(("viewer", "support", "billing", "operator", "admin"))
]


def token(role: str, scope: str | None = None) -> Principal:
    return Principal(token_id="adm_0000000000000001", name="t", role=role, scope=scope)


def test_the_matrix_has_every_action_and_role_once() -> None:
    assert ROLES == ("viewer", "support", "billing", "operator", "admin")
    assert set(ACTIONS) == set(MATRIX) == set(PERMISSIONS)
    assert {a for a, (_, scoped) in MATRIX.items() if scoped} == SUBJECT_ACTIONS


@pytest.mark.parametrize(("action", "role", "expected"), CASES)
def test_every_action_for_every_role(action: str, role: str, expected: bool) -> None:
    assert allowed(role, action) is expected
    if expected:
        require(token(role), action, "acme:1")
    else:
        with pytest.raises(ForbiddenError, match=f"role {role}, which may not {action}"):
            require(token(role), action, "acme:1")


@pytest.mark.parametrize("action", list(MATRIX))
def test_a_scoped_admin_token_only_acts_on_its_subjects(action: str) -> None:
    scoped = token("admin", "acme:")
    if action in SUBJECT_ACTIONS:
        require(scoped, action, "acme:42")
        require(scoped, action)  # a list: the caller keeps what in_scope allows
        with pytest.raises(ForbiddenError, match="'globex:1' is outside it"):
            require(scoped, action, "globex:1")
    else:
        with pytest.raises(ForbiddenError, match=f"{action} acts on every subject"):
            require(scoped, action)


def test_in_scope_is_a_prefix_that_ends_with_a_separator() -> None:
    scoped = token("viewer", "acme:")
    assert in_scope(scoped, "acme:1")
    assert not in_scope(scoped, "acme2:1")
    assert not in_scope(scoped, "acm")
    assert in_scope(token("viewer"), "anything")
    subjects = ["acme:1", "globex:2", "acme:3", "acmex"]
    assert [s for s in subjects if in_scope(scoped, s)] == ["acme:1", "acme:3"]


@pytest.mark.parametrize(
    "bad", ["acme", "", ":", "a b:", "x" * 129 + ":", "tab\t:", "nl\n:", 7, b"acme:"]
)
def test_bad_scopes_are_refused_clearly(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="is not a subject prefix; expected"):
        check_scope(bad)


def test_roles_and_actions_are_checked() -> None:
    assert check_role("support") == "support"
    with pytest.raises(InvalidArgumentError, match="'root' is not a role; expected one of"):
        check_role("root")
    with pytest.raises(InvalidArgumentError, match=r"'subjects\.delete' is not an admin action"):
        allowed("admin", "subjects.delete")
    assert not allowed("root", "subjects.read")


def test_support_grants_are_capped() -> None:
    cap = Money.parse("50.00 USD")
    require_grant(token("support"), "acme:1", Money.parse("50.00 USD"), cap)
    with pytest.raises(ForbiddenError, match=r"at most 50\.00 USD at once"):
        require_grant(token("support"), "acme:1", Money.parse("50.01 USD"), cap)
    with pytest.raises(ForbiddenError, match="needs a billing or admin token"):
        require_grant(token("support"), "acme:1", Money.parse("1.00 EUR"), cap)
    require_grant(token("billing"), "acme:1", Money.parse("5000.00 USD"), cap)
    with pytest.raises(ForbiddenError, match=r"may not credits\.grant"):
        require_grant(token("operator"), "acme:1", Money.parse("1.00 USD"), cap)
    with pytest.raises(ForbiddenError, match="outside it"):
        require_grant(token("support", "acme:"), "globex:1", Money.parse("1.00 USD"), cap)


def test_the_docs_matrix_is_the_mapping() -> None:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("<!-- rbac-matrix:start -->\n") + len("<!-- rbac-matrix:start -->\n")
    end = text.index("<!-- rbac-matrix:end -->")
    assert text[start:end] == matrix_markdown()
    for action, (row, _) in MATRIX.items():
        line = next(x for x in matrix_markdown().splitlines() if x.startswith(f"| `{action}` |"))
        cells = [c.strip() for c in line.split("|")[2:7]]
        assert cells == ["yes" if allowed else "-" for allowed in row]
