"""Claims: which run takes which file, so that of two concurrent runs exactly
one gets each.

A run claims a file before reading it, in one transaction per chunk (SQLite:
``BEGIN IMMEDIATE``, i.e. the database write lock; PostgreSQL: ``SELECT ...
FOR UPDATE`` on known rows and ``INSERT ... ON CONFLICT DO NOTHING`` for new
ones). A claim names its owner (the Prefect flow run ID) and expires after a
lease; recording a file's outcome, or the end of the run, releases it; a run
presumed dead (tasks.ledger.runs) loses it sooner.

A file is (data store ID, URI): the same file is new to another data store.
It is unchanged when its size and version (S3 ETag, local mtime) are those
recorded with its last outcome, or, when only the version moved (a touched or
re-uploaded file), when its SHA-256 is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.checksum import sha256_of_file
from tasks.discover import SourceFile
from tasks.ledger.runs import Holder, Runs
from tasks.ledger.schema import (
    chunks,
    files_table,
    insert_for,
    inventory_table,
    runs_table,
)
from tasks.retry_policy import SETTLED, skip_when_unchanged
from tasks.statuses import Change, Skip
from tasks.validate import ValidationRecord

DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class ClaimResult:
    """What a run may process, and what it left alone (counted, not listed)."""

    files: list[SourceFile]
    changes: dict[str, Change]
    skipped_unchanged: int = 0
    claimed_by_other_runs: int = 0
    # Unchanged, failed max_attempts times for a reason that may pass.
    given_up: int = 0
    holders: tuple[Holder, ...] = ()
    # The jobs that imported the files skipped as unchanged, with counts.
    jobs_of_skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class _ClaimTally:
    """What the claim chunks of one run found, added up."""

    files: list[SourceFile] = field(default_factory=list)
    changes: dict[str, Change] = field(default_factory=dict)
    skipped: dict[Skip, int] = field(default_factory=lambda: dict.fromkeys(Skip, 0))
    held: dict[str, int] = field(default_factory=dict)
    lease_ends: dict[str, datetime] = field(default_factory=dict)
    jobs_of_skipped: Counter[str] = field(default_factory=Counter)

    def hold(self, owner: str | None, expires: datetime | None) -> None:
        owner = owner or "unknown"
        self.held[owner] = self.held.get(owner, 0) + 1
        if expires is not None:
            self.lease_ends[owner] = max(expires, self.lease_ends.get(owner, expires))


class Claims(Runs):
    """A run's claims on files. Built on its run's liveness: claiming first
    frees the claims of runs found dead, and a run beats while it holds any."""

    @contextmanager
    def holding_claims(self) -> Iterator[None]:
        """Beats in the background while the block runs, then releases every
        claim still held. A run killed inside the block stops beating, and its
        files go to the next run once it is presumed dead."""
        try:
            with self.beating():
                yield
        finally:
            self.release()

    def claim(
        self, source: str, files: Iterable[SourceFile], only_new: bool,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> ClaimResult:
        """Claim the files this run should process.

        With ``only_new``, an unchanged file is skipped without a claim when
        :func:`skip_when_unchanged` says so; a file claimed by another live
        run is skipped either way. Runs of this host whose process is gone
        lose their claims first: a rerun right after a kill does the work.
        """
        self.release_dead_runs()
        tally = _ClaimTally()
        for chunk in chunks(files):
            self._claim_chunk(source, chunk, only_new, max_attempts, tally)
        return ClaimResult(tally.files, tally.changes, tally.skipped[Skip.SETTLED],
                           sum(tally.held.values()), tally.skipped[Skip.GIVEN_UP],
                           self._holders(tally.held, tally.lease_ends), dict(tally.jobs_of_skipped))

    def _claim_chunk(
        self, source: str, chunk: list[SourceFile], only_new: bool, max_attempts: int,
        tally: _ClaimTally,
    ) -> None:
        table = files_table
        now = self._now()
        expires = now + timedelta(seconds=self.lease_seconds)
        uris = [f.uri for f in chunk]
        with self.engine.begin() as conn:
            known = {
                row.uri: row
                for row in conn.execute(
                    # The claim rule is _claimable's, evaluated once, in the database.
                    sa.select(table, sa.not_(self._claimable(now)).label("held_elsewhere"))
                    .where(table.c.datastore_id == self.datastore_id, table.c.uri.in_(uris))
                    # One lock order for every run, so PostgreSQL never deadlocks.
                    .order_by(table.c.uri)
                    .with_for_update(of=table)
                )
            }
            changes: dict[str, Change] = {}
            new_rows = []
            reclaimed = []
            for item in chunk:
                row = known.get(item.uri)
                if row is None:
                    changes[item.uri] = Change.NEW
                    new_rows.append(self._new_row(source, item, now, expires))
                    continue
                if row.held_elsewhere:
                    tally.hold(row.claim_owner, row.claim_expires_at)
                    continue
                change = compare(row, item)
                skip = only_new and change is Change.UNCHANGED and skip_when_unchanged(
                    row.status, row.error_type, int(row.attempts or 0), max_attempts)
                if skip:
                    tally.skipped[skip] += 1
                    if row.job_id:
                        tally.jobs_of_skipped[row.job_id] += 1
                    continue
                changes[item.uri] = change
                reclaimed.append({"file_uri": item.uri, "file_size": item.size,
                                  "file_version": item.version, "file_change": change.value,
                                  "file_path": item.relative_path})
            if reclaimed:
                # The rows are locked (FOR UPDATE; SQLite's transaction is
                # IMMEDIATE), so what the select decided still holds.
                conn.execute(
                    sa.update(table)
                    .where(table.c.datastore_id == self.datastore_id,
                           table.c.uri == sa.bindparam("file_uri"))
                    .values(claim_owner=self.run_id, claim_expires_at=expires,
                            claim_size=sa.bindparam("file_size"),
                            claim_version=sa.bindparam("file_version"),
                            claim_change=sa.bindparam("file_change"), source=source,
                            relative_path=sa.bindparam("file_path"), updated_at=now),
                    reclaimed,
                )
            if new_rows:
                inserted = set(
                    conn.execute(
                        insert_for(conn)(table).on_conflict_do_nothing().returning(table.c.uri),
                        new_rows,
                    ).scalars()
                )
                lost = [row["uri"] for row in new_rows if row["uri"] not in inserted]
                # Another run inserted these between our read and our insert.
                for uri in lost:
                    del changes[uri]
                if lost:
                    for row in conn.execute(
                        sa.select(table.c.claim_owner, table.c.claim_expires_at)
                        .where(table.c.datastore_id == self.datastore_id,
                               table.c.uri.in_(lost))
                    ):
                        tally.hold(row.claim_owner, row.claim_expires_at)
        tally.files.extend(f for f in chunk if f.uri in changes)
        tally.changes.update(changes)

    def _new_row(
        self, source: str, item: SourceFile, now: datetime, expires: datetime
    ) -> dict[str, Any]:
        return {
            "datastore_id": self.datastore_id, "uri": item.uri, "source": source,
            "relative_path": item.relative_path, "attempts": 0,
            "claim_owner": self.run_id, "claim_expires_at": expires,
            "claim_size": item.size, "claim_version": item.version,
            "claim_change": Change.NEW.value, "first_seen_at": now, "updated_at": now,
        }

    def _claimable(self, now: datetime) -> sa.ColumnElement[bool]:
        """Unclaimed, ours, past its lease, or held by a run presumed dead."""
        table = files_table
        runs = runs_table
        last_beat_before = now - timedelta(seconds=self.presumed_dead_seconds)
        return sa.or_(
            table.c.claim_owner.is_(None),
            table.c.claim_owner == self.run_id,
            table.c.claim_expires_at <= now,
            sa.exists().where(runs.c.run_id == table.c.claim_owner,
                              runs.c.heartbeat_at <= last_beat_before),
        )

    def claim_known(self, items: Sequence[tuple[SourceFile, Change]]) -> list[SourceFile]:
        """Claim files the ledger already has (a retry), as they are now on
        storage; returns those won."""
        now = self._now()
        expires = now + timedelta(seconds=self.lease_seconds)
        won: list[SourceFile] = []
        for chunk in chunks(sorted(items, key=lambda pair: pair[0].uri)):
            with self.engine.begin() as conn:
                for item, change in chunk:
                    count = conn.execute(
                        sa.update(files_table)
                        .where(files_table.c.datastore_id == self.datastore_id,
                               files_table.c.uri == item.uri, self._claimable(now))
                        .values(claim_owner=self.run_id, claim_expires_at=expires,
                                claim_size=item.size, claim_version=item.version,
                                claim_change=change.value, updated_at=now)
                    ).rowcount
                    if count:
                        won.append(item)
        return won

    def settle_unchanged(
        self, records: Sequence[ValidationRecord], only_new: bool
    ) -> tuple[list[ValidationRecord], int]:
        """Drop files whose version moved but whose bytes did not.

        Only bytes tell a touched file from an edited one, so the few files
        whose version moved at the size they were imported at are read and
        hashed (outside any transaction: the ledger is not locked meanwhile);
        they are released and their new version recorded, so the next run
        skips them unread.
        """
        if not only_new:
            return list(records), 0
        by_uri = {r.uri: r for r in records}
        with self.engine.begin() as conn:
            recorded = [
                (row.uri, row.sha256)
                for chunk in chunks(by_uri)
                for row in conn.execute(
                    sa.select(files_table.c.uri, files_table.c.size, files_table.c.sha256).where(
                        files_table.c.datastore_id == self.datastore_id,
                        files_table.c.uri.in_(chunk),
                        files_table.c.claim_owner == self.run_id,
                        files_table.c.claim_change == Change.CHANGED.value,
                        files_table.c.status.in_(SETTLED),
                        files_table.c.sha256.is_not(None),
                    )
                )
                if by_uri[row.uri].size == row.size
            ]
        same = [uri for uri, sha256 in recorded if sha256_of_file(uri) == sha256]
        now = self._now()
        with self.engine.begin() as conn:
            for chunk in chunks(same):
                conn.execute(
                    sa.update(files_table)
                    .where(files_table.c.datastore_id == self.datastore_id,
                           files_table.c.uri.in_(chunk))
                    .values(version=files_table.c.claim_version, claim_owner=None,
                            claim_expires_at=None, updated_at=now)
                )
                # Settled as an outcome is: no listing offers it again.
                conn.execute(
                    sa.update(inventory_table)
                    .where(inventory_table.c.datastore_id == self.datastore_id,
                           inventory_table.c.uri.in_(chunk), inventory_table.c.done.is_(False))
                    .values(done=True, done_by=self.run_id)
                )
        dropped = set(same)
        return [r for r in records if r.uri not in dropped], len(dropped)

    def renew(self) -> None:
        """Push this run's claims a full lease ahead (call between long stages)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(files_table)
                .where(files_table.c.claim_owner == self.run_id)
                .values(claim_expires_at=self._now() + timedelta(seconds=self.lease_seconds))
            )

    def release(self) -> int:
        """Give back every claim this run still holds (its files had no outcome)."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(files_table)
                .where(files_table.c.claim_owner == self.run_id)
                .values(claim_owner=None, claim_expires_at=None)
            ).rowcount

def compare(row: Any, item: SourceFile) -> Change:
    if row.size is None:
        # Claimed by a run that died before submitting or reporting it.
        return Change.NEW
    if row.size == item.size and row.version == item.version:
        return Change.UNCHANGED
    return Change.CHANGED


@task(name="claim-files", cache_policy=NO_CACHE)
def claim_files(
    ledger: Claims, source: str, files: list[SourceFile], only_new: bool, max_attempts: int
) -> ClaimResult:
    return ledger.claim(source, files, only_new, max_attempts)


@task(name="skip-unchanged-content", cache_policy=NO_CACHE)
def settle_unchanged(
    ledger: Claims, records: list[ValidationRecord], only_new: bool
) -> tuple[list[ValidationRecord], int]:
    return ledger.settle_unchanged(records, only_new)
