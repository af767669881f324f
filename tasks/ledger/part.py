"""What every part of a run's ledger handle shares: who it is, where the
ledger lives, and the engine to reach it.

:class:`tasks.ledger.handle.RunLedger` is made of parts (runs, claims, jobs,
outcomes), one module each; each part is a subclass of :class:`LedgerPart`, so
that the handle stays one small picklable value that tasks take as an argument
and open the (per-process) engine from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.engine import Engine

from tasks.ledger.schema import engine_for

DEFAULT_LEASE_SECONDS = 12 * 3600.0
DEFAULT_PRESUMED_DEAD_SECONDS = 300.0


class Clock(Protocol):
    """Where the ledger reads the time: leases, beats and presumed deaths are
    all judged against it, so a test moves it instead of waiting."""

    def now(self) -> datetime: ...


@dataclass(frozen=True)
class SystemClock:
    """This machine's clock, in UTC (machines sharing a ledger keep theirs in
    step with NTP)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class LedgerPart:
    """The fields of a run's handle; the parts add methods, never fields."""

    url: str
    run_id: str
    datastore_id: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # A run whose last beat is older than this is presumed dead.
    presumed_dead_seconds: float = DEFAULT_PRESUMED_DEAD_SECONDS
    clock: Clock = SystemClock()

    @property
    def engine(self) -> Engine:
        return engine_for(self.url)

    def now(self) -> datetime:
        return self.clock.now()
