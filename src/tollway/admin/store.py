"""`AdminStore` and `AsyncAdminStore`: the admin flows on a ledger, each in one transaction.

The logic is the flows' (`tollway.admin.tokens`, `tollway.admin.audit`); these faces only
run them with ``ledger.transact(lambda: flow(ledger.dialect, ...))`` and the clock. A mutation
of another part (a plan change, a reset) audits itself by running `tollway.admin.audit.
append_flow` inside its own transaction instead (``yield from``); `audit` here is for a change
whose state lives elsewhere (the store's counters), recorded right after it.
"""

from __future__ import annotations

import time
from typing import Any

from tollway.admin import audit, tokens
from tollway.admin.audit import AuditRecord, VerifyReport
from tollway.admin.roles import Principal
from tollway.admin.tokens import Created, TokenInfo
from tollway.clock import Clock
from tollway.metering.ledger import AsyncLedger, Ledger

__all__ = ["AdminStore", "AsyncAdminStore", "system_clock"]


def system_clock() -> int:
    return time.time_ns() // 1000


class AdminStore:
    """Admin tokens and the audit log of a sync `Ledger` (not closed by this object)."""

    def __init__(self, ledger: Ledger, *, clock: Clock = system_clock) -> None:
        self.ledger = ledger
        self.clock = clock

    def create_token(
        self,
        *,
        name: str,
        role: str,
        actor: Principal,
        scope: str | None = None,
        ttl_s: int | None,
        request_id: str = "",
        client: str = "",
    ) -> Created:
        """A new token (``ttl_s`` None: never expires); ``Created.raw`` is shown once."""
        led, now = self.ledger, self.clock()
        return led.transact(
            lambda: tokens.create_flow(
                led.dialect,
                name=name,
                role=role,
                scope=scope,
                ttl_s=ttl_s,
                now_us=now,
                actor=actor,
                request_id=request_id,
                client=client,
            )
        )

    def authenticate(self, raw: object) -> Principal:
        """The principal of a raw token, or `UnauthorizedError`."""
        if not tokens.shaped(raw):  # refused before any I/O
            raise tokens.malformed()
        led, now = self.ledger, self.clock()
        return led.transact(lambda: tokens.authenticate_flow(led.dialect, raw, now))

    def list_tokens(self) -> list[TokenInfo]:
        led = self.ledger
        return led.transact(lambda: tokens.list_flow(led.dialect))

    def revoke_token(
        self, token_id: str, *, actor: Principal, request_id: str = "", client: str = ""
    ) -> TokenInfo:
        led, now = self.ledger, self.clock()
        return led.transact(
            lambda: tokens.revoke_flow(
                led.dialect,
                token_id,
                now_us=now,
                actor=actor,
                request_id=request_id,
                client=client,
            )
        )

    def audit(
        self,
        actor: Principal,
        action: str,
        target: str,
        *,
        before: Any = None,
        after: Any = None,
        request_id: str = "",
        client: str = "",
    ) -> AuditRecord:
        """Append one audit record in a transaction of its own."""
        led, now = self.ledger, self.clock()
        return led.transact(
            lambda: audit.audit_flow(
                led.dialect,
                actor,
                action,
                target,
                at_us=now,
                before=before,
                after=after,
                request_id=request_id,
                client=client,
            )
        )

    def audit_log(self, limit: int = 50, before_seq: int | None = None) -> list[AuditRecord]:
        """Newest first; pass the last seq of a page as ``before_seq`` for the next."""
        led = self.ledger
        return led.transact(lambda: audit.read_flow(led.dialect, limit, before_seq))

    def verify(self) -> VerifyReport:
        led = self.ledger
        return led.transact(lambda: audit.verify_flow(led.dialect))


class AsyncAdminStore:
    """`AdminStore` on an `AsyncLedger`: the same flows, awaited."""

    def __init__(self, ledger: AsyncLedger, *, clock: Clock = system_clock) -> None:
        self.ledger = ledger
        self.clock = clock

    async def create_token(
        self,
        *,
        name: str,
        role: str,
        actor: Principal,
        scope: str | None = None,
        ttl_s: int | None,
        request_id: str = "",
        client: str = "",
    ) -> Created:
        """See `AdminStore.create_token`."""
        led, now = self.ledger, self.clock()
        return await led.transact(
            lambda: tokens.create_flow(
                led.dialect,
                name=name,
                role=role,
                scope=scope,
                ttl_s=ttl_s,
                now_us=now,
                actor=actor,
                request_id=request_id,
                client=client,
            )
        )

    async def authenticate(self, raw: object) -> Principal:
        """See `AdminStore.authenticate`."""
        if not tokens.shaped(raw):
            raise tokens.malformed()
        led, now = self.ledger, self.clock()
        return await led.transact(lambda: tokens.authenticate_flow(led.dialect, raw, now))

    async def list_tokens(self) -> list[TokenInfo]:
        led = self.ledger
        return await led.transact(lambda: tokens.list_flow(led.dialect))

    async def revoke_token(
        self, token_id: str, *, actor: Principal, request_id: str = "", client: str = ""
    ) -> TokenInfo:
        led, now = self.ledger, self.clock()
        return await led.transact(
            lambda: tokens.revoke_flow(
                led.dialect,
                token_id,
                now_us=now,
                actor=actor,
                request_id=request_id,
                client=client,
            )
        )

    async def audit(
        self,
        actor: Principal,
        action: str,
        target: str,
        *,
        before: Any = None,
        after: Any = None,
        request_id: str = "",
        client: str = "",
    ) -> AuditRecord:
        """See `AdminStore.audit`."""
        led, now = self.ledger, self.clock()
        return await led.transact(
            lambda: audit.audit_flow(
                led.dialect,
                actor,
                action,
                target,
                at_us=now,
                before=before,
                after=after,
                request_id=request_id,
                client=client,
            )
        )

    async def audit_log(self, limit: int = 50, before_seq: int | None = None) -> list[AuditRecord]:
        led = self.ledger
        return await led.transact(lambda: audit.read_flow(led.dialect, limit, before_seq))

    async def verify(self) -> VerifyReport:
        led = self.ledger
        return await led.transact(lambda: audit.verify_flow(led.dialect))
