"""Runs and their liveness: who started, who still beats, who is gone.

A run beats (its row's ``heartbeat_at``) while it holds claims, so a run
killed outright is presumed dead once it has missed a few beats, and its
claims go to the next run within minutes rather than when the lease ends. On
its own host a run whose process is gone is dead at once.

That rule is written here only, on the ledger's clock: claims go by it, and
so does a migration watching its ingest runs (tasks.child_runs).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tasks.ledger.part import LedgerPart
from tasks.ledger.schema import LedgerError, engine_for, files_table, insert_for, runs_table
from tasks.process_identity import ProcessIdentity

log = logging.getLogger(__name__)

# Beats per presumed-dead period: a run survives a few missed beats (a busy
# database, a pause) before its claims are taken.
_BEATS_PER_PERIOD = 5
# Runs named when a typed ID matches more than one.
_CANDIDATES_SHOWN = 5


@dataclass(frozen=True)
class Holder:
    """A live run holding files this run wanted: who to ask, and when they free."""

    run_id: str
    files: int
    host: str | None
    pid: int | None
    last_beat: datetime | None
    # When the files go to another run if the holder stops beating now (or,
    # for a holder that never beats, when its lease ends).
    free_at: datetime

    def describe(self) -> str:
        where = f"on {self.host} (pid {self.pid})" if self.host else "on an unknown host"
        beat = f"last beat {self.last_beat:%Y-%m-%d %H:%M:%SZ}" if self.last_beat else "no beat"
        return (f"{self.files} files are held by run {self.run_id} {where}, {beat}; "
                f"they free at {self.free_at:%Y-%m-%d %H:%M:%SZ} if it stops")


@dataclass(frozen=True)
class LedgerRun:
    """A run as the ledger judges it now: ended, presumed dead, or neither
    (alive, as far as anyone can tell)."""

    run_id: str
    finished: bool
    presumed_dead: bool
    # Where it writes its report, once it knows.
    report_folder: str | None


class Runs(LedgerPart):
    """A run's row: its start, its beats, its process, its end."""

    def start_run(self, flow: str, source: str | None) -> None:
        """A run started again (its flow run retried) keeps its first row and
        beats."""
        now = self.now()
        process = ProcessIdentity.current()
        holder = {"heartbeat_at": now, "host": process.host, "pid": process.pid,
                  "process_started_at": process.started_at}
        with self.engine.begin() as conn:
            conn.execute(
                insert_for(conn)(runs_table)
                .values(run_id=self.run_id, flow=flow, source=source,
                        datastore_id=self.datastore_id, started_at=now, **holder)
                .on_conflict_do_update(index_elements=["run_id"], set_=holder)
            )

    def beat(self) -> None:
        """Tell other runs this one is alive (its claims stand)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs_table)
                .where(runs_table.c.run_id == self.run_id)
                .values(heartbeat_at=self.now())
            )

    @contextmanager
    def beating(self) -> Iterator[None]:
        """Beats in the background while the block runs: a run killed inside
        the block stops beating, and is presumed dead a few beats later."""
        stopped = threading.Event()
        interval = self.presumed_dead_seconds / _BEATS_PER_PERIOD

        def beat_until_stopped() -> None:
            while not stopped.wait(interval):
                try:
                    self.beat()
                except sa.exc.SQLAlchemyError as error:
                    log.warning("Ledger heartbeat failed (trying again in %.0f s): %s",
                                interval, error)

        beating = threading.Thread(target=beat_until_stopped, name="ledger-heartbeat",
                                   daemon=True)
        beating.start()
        try:
            yield
        finally:
            stopped.set()
            beating.join()

    def finish_run(self, counts: Mapping[str, int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs_table)
                .where(runs_table.c.run_id == self.run_id)
                .values(finished_at=self.now(), counts=json.dumps(dict(counts), sort_keys=True))
            )

    def stopped_beating(self, now: datetime) -> sa.ColumnElement[bool]:
        """Runs (rows of runs_table) presumed dead at ``now`` by their beats:
        the last one is a presumed-dead period old. A run that never beat
        (from before heartbeats) never matches."""
        return runs_table.c.heartbeat_at <= now - timedelta(seconds=self.presumed_dead_seconds)

    def recorded_runs(self, run_ids: Sequence[str]) -> dict[str, LedgerRun]:
        """The runs of ``run_ids`` the ledger has a row for, judged now: a run
        is presumed dead when it stopped beating, or, on this host, when its
        process is gone."""
        runs = runs_table.c
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(runs.run_id, runs.finished_at, runs.host, runs.pid,
                          runs.process_started_at, runs.report_folder,
                          self.stopped_beating(self.now()).label("stopped_beating"))
                .where(runs.run_id.in_(list(run_ids)))
            ).all()
        judged = {}
        for row in rows:
            finished = row.finished_at is not None
            # A NULL heartbeat compares to NULL: no beat, no verdict from beats.
            dead = not finished and (bool(row.stopped_beating) or _process_gone(row))
            judged[row.run_id] = LedgerRun(row.run_id, finished, dead, row.report_folder)
        return judged

    def release_dead_runs(self) -> list[str]:
        """Free the claims of unfinished runs of this host whose process is gone;
        returns their IDs."""
        host = ProcessIdentity.current().host
        with self.engine.begin() as conn:
            suspects = conn.execute(
                sa.select(runs_table.c.run_id, runs_table.c.host, runs_table.c.pid,
                          runs_table.c.process_started_at)
                .where(runs_table.c.host == host, runs_table.c.finished_at.is_(None),
                       runs_table.c.run_id != self.run_id, runs_table.c.pid.is_not(None),
                       sa.exists().where(files_table.c.claim_owner == runs_table.c.run_id))
            ).all()
            dead = [row.run_id for row in suspects if _process_gone(row)]
            if dead:
                conn.execute(sa.update(files_table).where(files_table.c.claim_owner.in_(dead))
                             .values(claim_owner=None, claim_expires_at=None))
        for run_id in dead:
            log.info("Run %s of this host is gone: its claims are free.", run_id)
        return dead

    def holders(
        self, held: Mapping[str, int], lease_ends_by_run: Mapping[str, datetime]
    ) -> tuple[Holder, ...]:
        """The runs holding files this run wanted (files held, by run), busiest
        first, with when each frees them."""
        if not held:
            return ()
        with self.engine.begin() as conn:
            runs = {row.run_id: row for row in conn.execute(
                sa.select(runs_table).where(runs_table.c.run_id.in_(list(held))))}
        holders = []
        for run_id, count in sorted(held.items(), key=lambda item: -item[1]):
            run = runs.get(run_id)
            lease_ends = lease_ends_by_run.get(run_id) or self.now()
            beat = run.heartbeat_at if run is not None else None
            free_at = (min(lease_ends, beat + timedelta(seconds=self.presumed_dead_seconds))
                       if beat is not None else lease_ends)
            holders.append(Holder(run_id, count, run.host if run is not None else None,
                                  run.pid if run is not None else None, beat, free_at))
        return tuple(holders)


def _process_gone(row: sa.Row[*tuple[Any, ...]]) -> bool:
    """Its run's process is known gone: it was on this host, and no process
    with its PID and start time is (elsewhere, nobody here can tell)."""
    return (row.pid is not None and row.process_started_at is not None
            and ProcessIdentity(row.host, row.pid, row.process_started_at).is_gone())


def run_id_from_prefix(url: str, typed: str) -> str:
    """The ID of the one run recorded whose ID is ``typed`` or starts with it:
    an operator types the 8 characters that end a report folder's name, not
    36. A full ID is taken as it is, even if it begins another.

    Raises:
        LedgerError: no such run, or several (the message lists them).
    """
    runs = runs_table.c
    matching = runs.run_id.startswith(typed, autoescape=True)
    with engine_for(url).begin() as conn:
        if conn.execute(sa.select(runs.run_id).where(runs.run_id == typed)).first():
            return typed
        total = conn.execute(sa.select(sa.func.count()).where(matching)).scalar_one()
        shown = conn.execute(
            sa.select(runs.run_id, runs.flow, runs.started_at).where(matching)
            .order_by(runs.started_at, runs.run_id).limit(_CANDIDATES_SHOWN)
        ).all()
    if total == 1:
        return str(shown[0].run_id)
    if not total:
        raise LedgerError(f"The ledger has no run {typed}, nor one whose ID starts with it: "
                          "give the flow run ID the command printed (or the Prefect UI shows), "
                          "and the report location (or ledger URL) of that run.")
    named = ", ".join(f"{row.run_id} ({row.flow}, started {row.started_at:%Y-%m-%d %H:%M:%SZ})"
                      for row in shown)
    rest = f" and {total - len(shown)} more" if total > len(shown) else ""
    raise LedgerError(f"{total} runs have an ID starting with {typed}: {named}{rest}; "
                      "give more of the ID.")
