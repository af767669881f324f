"""Ledger claims: exclusive across processes (SQLite file and PostgreSQL), and
never held forever by a run that died."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.batch import Batch
from tasks.child_runs import liveness_of
from tasks.discover import SourceFile
from tasks.ledger import (
    Inventory,
    RunLedger,
    engine_for,
    files_table,
    ledger_url,
    runs_table,
)
from tasks.ledger.schema import metadata
from tasks.statuses import FileValidity, Liveness
from tasks.validate import ValidationRecord
from tests.operations.claiming import claim

FILES = [SourceFile(f"/landing/f{i:04d}.dcm", 100 + i, f"v{i}", f"f{i:04d}.dcm")
         for i in range(300)]
DATASTORE = "0123456789abcdef0123456789abcdef"


class FakeClock:
    """The ledger's clock, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self._now = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


def _claim_in_process(url: str, run_id: str, barrier: threading.Barrier) -> list[str]:
    ledger = RunLedger(url, run_id, DATASTORE)
    ledger.engine  # schema and connection ready before the race starts  # noqa: B018
    barrier.wait()
    # Small slices so the processes' transactions interleave.
    won: list[str] = []
    for start in range(0, len(FILES), 7):
        won += [f.uri for f in claim(ledger, FILES[start:start + 7], True).files]
    return won


def _race(url: str, processes: int = 3) -> list[list[str]]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(processes)
        with context.Pool(processes) as pool:
            return pool.starmap(
                _claim_in_process, [(url, f"run-{i}", barrier) for i in range(processes)]
            )


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return ledger_url(None, str(tmp_path / "reports"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.slow
def test_concurrent_claims_never_give_a_file_twice(url: str) -> None:
    if url.startswith("postgresql"):
        # A fresh database per run of the test: truncate what a previous param left.
        with engine_for(url).begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    won = _race(url)
    everything = [uri for claimed in won for uri in claimed]
    assert sorted(everything) == sorted(f.uri for f in FILES)  # each exactly once


def _keep_in_process(url: str, run_id: str, barrier: threading.Barrier) -> dict[str, str]:
    """One run of a shared inventory naming 60 instances, each with a file of
    its own, as its windows validate them."""
    ledger = RunLedger(url, run_id, DATASTORE)
    ledger.engine  # schema and connection ready before the race starts  # noqa: B018
    inventory = Inventory(ledger, "migration")
    barrier.wait()
    kept_elsewhere: dict[str, str] = {}
    for start in range(0, 60, 5):  # small windows, so the processes interleave
        kept_elsewhere |= inventory.keep_instances(
            {f"1.2.{i}": f"/landing/{run_id}/{i}.dcm" for i in range(start, start + 5)})
    return kept_elsewhere


@pytest.mark.slow
def test_concurrent_windows_keep_one_file_of_each_instance(url: str) -> None:
    """Windows of sibling runs name the same instances at once, none of it
    recorded yet: each instance is kept once, and every other run is told
    which file that is."""
    if url.startswith("postgresql"):
        with engine_for(url).begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(3)
        with context.Pool(3) as pool:
            told = pool.starmap(_keep_in_process,
                                [(url, f"run-{i}", barrier) for i in range(3)])
    kept = {}
    for i in range(60):
        sop = f"1.2.{i}"
        keepers = [run for run in range(3) if sop not in told[run]]
        assert len(keepers) == 1, (sop, told)
        kept[sop] = f"/landing/run-{keepers[0]}/{i}.dcm"
        assert all(told[run][sop] == kept[sop] for run in range(3) if run != keepers[0])
    # The kept file named again (its window taken over after a kill) stays kept.
    again = Inventory(RunLedger(url, "run-9", DATASTORE), "migration")
    assert again.keep_instances({"1.2.0": kept["1.2.0"]}) == {}
    assert again.keep_instances({"1.2.0": "/landing/run-9/0.dcm"}) == {"1.2.0": kept["1.2.0"]}


def test_a_live_claim_blocks_and_an_expired_or_released_one_does_not(tmp_path: Path) -> None:
    url = ledger_url(None, str(tmp_path / "reports"))
    files = FILES[:5]
    holder = RunLedger(url, "holder", DATASTORE)
    assert len(claim(holder, files, True).files) == 5

    blocked = claim(RunLedger(url, "second", DATASTORE), files, True)
    assert blocked.files == [] and blocked.claimed_by_other_runs == 5

    holder.release()
    assert len(claim(RunLedger(url, "third", DATASTORE, lease_seconds=0), files, True).files) == 5
    # "third" died holding them with a lease already run out: nobody waits for it.
    assert len(claim(RunLedger(url, "fourth", DATASTORE), files, True).files) == 5


def test_a_run_that_stops_beating_loses_its_claims_and_a_beating_one_keeps_them(
    tmp_path: Path,
) -> None:
    """The lease is hours; a killed run (no more beats) is presumed dead in
    presumed_dead_seconds, a live one (beating) never is."""
    url = ledger_url(None, str(tmp_path / "reports"))
    files = FILES[:5]
    clock = FakeClock()

    def run(run_id: str) -> RunLedger:
        ledger = RunLedger(url, run_id, DATASTORE, presumed_dead_seconds=300, clock=clock)
        ledger.start_run("dicom-ingest", "/landing")
        return ledger

    killed = run("killed")
    assert len(claim(killed, files, True).files) == 5
    early = claim(run("early"), files, True)
    clock.advance(301)  # the killed run has missed its beats
    live = run("live")
    taken_over = claim(live, files, True)
    for _ in range(10):  # over two presumed-dead periods, beating all along
        clock.advance(60)
        live.beat()
    blocked = claim(run("late"), files, True)
    live.release()
    after = claim(run("after"), files, True)

    assert early.files == [] and early.claimed_by_other_runs == 5
    assert len(taken_over.files) == 5
    assert blocked.files == [] and blocked.claimed_by_other_runs == 5
    assert len(after.files) == 5


def test_a_migration_finds_its_runs_dead_by_the_ledgers_clock(url: str) -> None:
    """A migration judges its ingest runs as claims judge their holders, by
    the ledger's clock: a child is dead once that clock is a presumed-dead
    period past its last beat. (By the machine's clock, well past the fake
    one, the child was dead from the start.)"""
    prefix = f"child-{os.getpid()}-{time.monotonic_ns()}"
    children = [f"{prefix}-running", f"{prefix}-finished", f"{prefix}-not-started"]
    clock = FakeClock()
    for run_id in children[:2]:
        # Started in this process, which is alive: only the beats can tell.
        RunLedger(url, run_id, DATASTORE, clock=clock).start_run("dicom-ingest", "/landing")
    RunLedger(url, children[1], DATASTORE, clock=clock).finish_run({})
    migration = RunLedger(url, f"{prefix}-migration", DATASTORE, presumed_dead_seconds=300,
                          clock=clock)

    def seen() -> list[Liveness]:
        recorded = migration.recorded_runs(children)
        return [liveness_of(recorded.get(run_id)) for run_id in children]

    before = seen()
    clock.advance(301)  # the running child has missed its beats

    assert before == [Liveness.LIVE, Liveness.FINISHED, Liveness.WAITING]
    assert seen() == [Liveness.DEAD, Liveness.FINISHED, Liveness.WAITING]


def test_holding_claims_beats_in_the_background_and_releases_at_the_end(
    tmp_path: Path,
) -> None:
    url = ledger_url(None, str(tmp_path / "reports"))
    clock = FakeClock()
    # Five beats per presumed-dead period: one every 10 ms of real time.
    live = RunLedger(url, "live", DATASTORE, presumed_dead_seconds=0.05, clock=clock)
    live.start_run("dicom-ingest", "/landing")

    def last_beat() -> datetime:
        with engine_for(url).connect() as conn:
            return conn.execute(sa.select(runs_table.c.heartbeat_at)
                                .where(runs_table.c.run_id == "live")).scalar_one()

    with live.holding_claims():
        assert len(claim(live, FILES[:5], True).files) == 5
        clock.advance(3600)
        deadline = time.monotonic() + 60
        while last_beat() != clock.now():
            assert time.monotonic() < deadline, "the run never beat"
            threading.Event().wait(0.01)
        blocked = claim(RunLedger(url, "other", DATASTORE, presumed_dead_seconds=0.05,
                            clock=clock), FILES[:5], True)
    after = claim(RunLedger(url, "after", DATASTORE, clock=clock), FILES[:5], True)

    assert blocked.claimed_by_other_runs == 5
    assert len(after.files) == 5  # released when the block ended


def test_a_run_started_again_keeps_its_start_and_beats(url: str) -> None:
    """A flow run retried by Prefect starts its ledger run again."""
    run_id = f"again-{os.getpid()}-{time.monotonic_ns()}"
    clock = FakeClock()
    ledger = RunLedger(url, run_id, DATASTORE, clock=clock)

    def row() -> sa.Row:
        with engine_for(url).connect() as conn:
            return conn.execute(sa.select(runs_table.c.started_at, runs_table.c.heartbeat_at)
                                .where(runs_table.c.run_id == run_id)).one()

    ledger.start_run("dicom-ingest", "/landing")
    first = row()
    clock.advance(1)
    ledger.start_run("dicom-ingest", "/landing")
    again = row()

    assert first.heartbeat_at is not None
    assert again.started_at == first.started_at
    assert again.heartbeat_at > first.heartbeat_at


def test_attempts_count_jobs_with_and_without_a_checksum(url: str) -> None:
    """A file from S3 has no SHA-256 (it is copied inside S3): its attempts
    count up as a local file's do, and a new checksum starts again from one."""
    run_id = f"attempts-{os.getpid()}-{time.monotonic_ns()}"
    source = [SourceFile(f"/landing/{run_id}/{name}.dcm", 10, "v1", f"{name}.dcm")
              for name in ("s3", "local")]
    ledger = RunLedger(url, run_id, DATASTORE)
    claim(ledger, source, False)

    def start(job_id: str, local_sha256: str) -> dict[str, int]:
        records = tuple(
            ValidationRecord(uri=f.uri, relative_path=f.relative_path, size=f.size,
                             status=FileValidity.VALID, version=f.version, sha256=sha256)
            for f, sha256 in zip(source, (None, local_sha256), strict=True)
        )
        ledger.record_job_started(job_id, Batch(records, job_id.ljust(64, "0")), "s3://in/")
        with engine_for(url).connect() as conn:
            return {Path(uri).stem: attempts for uri, attempts in conn.execute(
                sa.select(files_table.c.uri, files_table.c.attempts)
                .where(files_table.c.uri.in_([f.uri for f in source])))}

    assert start("job-1", "a" * 64) == {"s3": 1, "local": 1}
    assert start("job-2", "a" * 64) == {"s3": 2, "local": 2}
    assert start("job-2", "a" * 64) == {"s3": 2, "local": 2}  # the same job again
    assert start("job-3", "b" * 64) == {"s3": 3, "local": 1}  # new bytes


def test_a_ledger_from_before_heartbeats_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE ledger_runs (run_id VARCHAR(64) PRIMARY KEY, "
                    "flow VARCHAR(64) NOT NULL, source TEXT, datastore_id VARCHAR(64) "
                    "NOT NULL, started_at DATETIME NOT NULL, finished_at DATETIME, "
                    "counts TEXT)")
        old.execute("INSERT INTO ledger_runs VALUES ('earlier', 'dicom-ingest', '/landing', "
                    "'ds', '2026-01-01 00:00:00', NULL, NULL)")

    ledger = RunLedger(f"sqlite:///{path}", "now", DATASTORE)
    ledger.start_run("dicom-ingest", "/landing")

    with sqlite3.connect(path) as new:
        rows = dict(new.execute("SELECT run_id, heartbeat_at FROM ledger_runs"))
    assert rows["earlier"] is None and rows["now"] is not None


def test_sqlite_ledger_cannot_live_on_s3() -> None:
    from tasks.ledger import LedgerError

    with pytest.raises(LedgerError, match="DICOM_IMPORT_LEDGER_URL"):
        ledger_url(None, "s3://bucket/reports")


def test_an_inventory_counts_its_listed_files_by_status(empty_ledger_url: str) -> None:
    """What a migration's summary counts, on both backends: PostgreSQL refused
    the first version of this query (GROUP BY a label that names a column)."""
    inventory = Inventory(RunLedger(empty_ledger_url, "run-1", DATASTORE), "migration")
    inventory.fill("/landing", FILES[:5], skip_unchanged=False, max_attempts=3)

    assert inventory.file_statuses() == {"unfinished": 5}
