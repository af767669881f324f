"""Claims: which run takes which file, so that of two concurrent runs exactly
one gets each.

An ingestion claims a window of its inventory at a time (tasks.ledger.inventory:
SQLite's ``BEGIN IMMEDIATE``, i.e. the database write lock; PostgreSQL's
``SELECT ... FOR UPDATE SKIP LOCKED``); a retry claims the files it retries
(:meth:`Claims.claim_known`). A claim names its owner (the Prefect flow run ID)
and expires after a lease; recording a file's outcome, or the end of the run,
releases it; a run presumed dead (tasks.ledger.runs) loses it sooner.

A file is (data store ID, URI): the same file is new to another data store.
It is unchanged when its size and version (S3 ETag, local mtime) are those
recorded with its last outcome, or, when only the version moved (a touched or
re-uploaded file), when its SHA-256 is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.checksum import sha256_of_file
from tasks.discover import SourceFile
from tasks.ledger.runs import Runs
from tasks.ledger.schema import (
    chunks,
    files_table,
    inventory_table,
    runs_table,
)
from tasks.retry_policy import SETTLED
from tasks.statuses import Change
from tasks.validate import ValidationRecord


@dataclass(frozen=True)
class KnownClaims:
    """What claiming files the ledger already has won."""

    files: list[SourceFile]
    # Other runs whose claims were taken: presumed dead, or past the lease.
    taken_from: tuple[str, ...]


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

    def claimable(self, now: datetime) -> sa.ColumnElement[bool]:
        """Unclaimed, ours, past its lease, or held by a run that stopped beating."""
        table = files_table
        return sa.or_(
            table.c.claim_owner.is_(None),
            table.c.claim_owner == self.run_id,
            table.c.claim_expires_at <= now,
            sa.exists().where(runs_table.c.run_id == table.c.claim_owner,
                              self.stopped_beating(now)),
        )

    def claim_known(self, items: Sequence[tuple[SourceFile, Change]]) -> KnownClaims:
        """Claim files the ledger already has (a retry), as they are now on
        storage; returns those won, and whose claims they were."""
        now = self.now()
        expires = now + timedelta(seconds=self.lease_seconds)
        won: list[SourceFile] = []
        taken: set[str] = set()
        for chunk in chunks(sorted(items, key=lambda pair: pair[0].uri)):
            with self.engine.begin() as conn:
                owners = {row.uri: row.claim_owner for row in conn.execute(
                    sa.select(files_table.c.uri, files_table.c.claim_owner)
                    .where(files_table.c.datastore_id == self.datastore_id,
                           files_table.c.uri.in_([item.uri for item, _ in chunk])))}
                for item, change in chunk:
                    count = conn.execute(
                        sa.update(files_table)
                        .where(files_table.c.datastore_id == self.datastore_id,
                               files_table.c.uri == item.uri, self.claimable(now))
                        .values(claim_owner=self.run_id, claim_expires_at=expires,
                                claim_size=item.size, claim_version=item.version,
                                claim_change=change.value, updated_at=now)
                    ).rowcount
                    if count:
                        won.append(item)
                        if owners.get(item.uri) not in (None, self.run_id):
                            taken.add(str(owners[item.uri]))
        return KnownClaims(won, tuple(sorted(taken)))

    def settle_unchanged(
        self, records: Sequence[ValidationRecord], skip_unchanged: bool
    ) -> tuple[list[ValidationRecord], int]:
        """Drop files whose version moved but whose bytes did not.

        Only bytes tell a touched file from an edited one, so the few files
        whose version moved at the size they were imported at are read and
        hashed (outside any transaction: the ledger is not locked meanwhile);
        they are released and their new version recorded, so the next run
        skips them unread.
        """
        if not skip_unchanged:
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
        now = self.now()
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
                .values(claim_expires_at=self.now() + timedelta(seconds=self.lease_seconds))
            )

    def release(self) -> int:
        """Give back every claim this run still holds (its files had no outcome)."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(files_table)
                .where(files_table.c.claim_owner == self.run_id)
                .values(claim_owner=None, claim_expires_at=None)
            ).rowcount

def compare(row: sa.Row[*tuple[Any, ...]], item: SourceFile) -> Change:
    if row.size is None:
        # Claimed by a run that died before submitting or reporting it.
        return Change.NEW
    if row.size == item.size and row.version == item.version:
        return Change.UNCHANGED
    return Change.CHANGED


@task(name="skip-unchanged-content", cache_policy=NO_CACHE)
def settle_unchanged(
    ledger: Claims, records: list[ValidationRecord], skip_unchanged: bool
) -> tuple[list[ValidationRecord], int]:
    return ledger.settle_unchanged(records, skip_unchanged)
