"""Reservations: hold capacity for a cost known only after the call, then commit or release.

`ReservationCore` (`tollway.engine.reservation`) holds the logic and `tollway.engine.flows` the
commit and release; `Reservation` and `AsyncReservation` only drive them. As a context manager
a reservation raises `LimitExceeded` on entry when it was denied, releases on an exception, and
commits the estimate when the block ends unsettled.
"""

from __future__ import annotations

from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING

from tollway.engine import flows
from tollway.engine.decision import Decision
from tollway.engine.reservation import ReservationCore
from tollway.errors import LimitExceeded

if TYPE_CHECKING:
    from tollway.driver import AsyncDriver, Driver

__all__ = ["AsyncReservation", "Reservation", "ReservationCore"]


class _Face:
    def __init__(self, core: ReservationCore) -> None:
        self._core = core

    @property
    def allowed(self) -> bool:
        return self._core.decision.allowed

    @property
    def decision(self) -> Decision:
        """The decision taken at reserve time."""
        return self._core.decision

    @property
    def id(self) -> str:
        return self._core.step.hold_id

    @property
    def estimate(self) -> int:
        return self._core.step.cost

    @property
    def settled(self) -> bool:
        return self._core.settled

    def __bool__(self) -> bool:
        return self.allowed

    def _enter_check(self) -> None:
        if not self.allowed:
            raise LimitExceeded(self._core.decision)


class Reservation(_Face):
    """Capacity held by `Tollway.reserve`."""

    def __init__(self, core: ReservationCore, driver: Driver) -> None:
        super().__init__(core)
        self._driver = driver

    def commit(self, actual: int | None = None, *, amount: Decimal | None = None) -> Decision:
        """Settle at the actual cost (default: the estimate); the difference is given back or
        taken. A commit after the hold expired takes the whole actual cost."""
        return self._driver.run(flows.commit(self._core, actual, amount))

    def release(self) -> None:
        """Give the whole hold back (the call was not made, or is not billed). With the store
        away, there is nothing to do: the hold expires by itself."""
        self._driver.run(flows.release(self._core))

    def __enter__(self) -> Reservation:
        self._enter_check()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        if exc_type is None:
            self.commit()
        else:
            self.release()


class AsyncReservation(_Face):
    """Capacity held by `AsyncTollway.reserve`."""

    def __init__(self, core: ReservationCore, driver: AsyncDriver) -> None:
        super().__init__(core)
        self._driver = driver

    async def commit(self, actual: int | None = None, *, amount: Decimal | None = None) -> Decision:
        """See `Reservation.commit`."""
        return await self._driver.run(flows.commit(self._core, actual, amount))

    async def release(self) -> None:
        """See `Reservation.release`."""
        await self._driver.run(flows.release(self._core))

    async def __aenter__(self) -> AsyncReservation:
        self._enter_check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        if exc_type is None:
            await self.commit()
        else:
            await self.release()
