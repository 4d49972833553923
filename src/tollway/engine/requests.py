"""What a flow asks the store for, as values: the one vocabulary between the logic and I/O.

A flow (`Flow`) is a generator holding the whole logic of one operation. It yields requests
and is sent each answer; a store error is thrown into it (``gen.throw``), so what to do when
the store is away is decided in the flow too. The drivers (`tollway.driver.drive` and
`drive_async`) are the only code that turns a request into a store call, once for threads and
once for asyncio (httpx's generator-driven ``auth_flow`` is the model).

A `Step` is itself the request to run the atomic step (answered with a `Reply`): the hot path
allocates no request object of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from tollway.engine.credits import CreditsOp
from tollway.engine.health import HealthOp
from tollway.engine.settle import SettleStep
from tollway.engine.step import Step

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settle:
    """Settle a reservation's hold; answered with a `Reply`."""

    settle: SettleStep


@dataclass(frozen=True, slots=True)
class Append:
    """Append an entry to the subject's event stream; answered with None."""

    subject: str
    entry: dict[str, str]


@dataclass(frozen=True, slots=True)
class Health:
    """Write a provider's health gates; answered with a `HealthReply`."""

    op: HealthOp


@dataclass(frozen=True, slots=True)
class Credits:
    """Grant, read or revoke prepaid credits; answered with a `CreditsReply`."""

    op: CreditsOp


@dataclass(frozen=True, slots=True)
class NewHoldId:
    """A fresh reservation id from the store; answered with a str."""


@dataclass(frozen=True, slots=True)
class Journal:
    """Keep ``step`` (let through while the store is away) to replay when it returns; answered
    with None. A store without a journal (the memory store is never away) drops it."""

    step: Step


@dataclass(frozen=True, slots=True)
class Assign:
    """Put the subject on ``plan`` (None: the default); answered with None."""

    subject: str
    plan: str | None


@dataclass(frozen=True, slots=True)
class Assigned:
    """The plan the store holds for the subject; answered with a str or None."""

    subject: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Clear the subject's counter ``fields``; answered with how many existed."""

    subject: str
    fields: list[str]


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call a function of the caller's with ``arg`` (a route's ``fn(provider)``); answered
    with its result, awaited by the async driver. What it raises is thrown into the flow."""

    fn: Callable[[Any], Any]
    arg: Any


@dataclass(frozen=True, slots=True)
class Control:
    """One small control record of the store (`tollway.stores.control`: the active policy
    version, a policy's published text, shadow counts); answered as ``op`` says."""

    op: Any


Request = (
    Step
    | Settle
    | Append
    | Health
    | Credits
    | NewHoldId
    | Journal
    | Assign
    | Assigned
    | Delete
    | Invoke
    | Control
)
Flow = Generator[Request, Any, T]
"""The logic of one operation: yields `Request`s, is sent their answers, returns a ``T``."""

__all__ = [
    "Append",
    "Assign",
    "Assigned",
    "Control",
    "Credits",
    "Delete",
    "Flow",
    "Health",
    "Invoke",
    "Journal",
    "NewHoldId",
    "Request",
    "Settle",
]
