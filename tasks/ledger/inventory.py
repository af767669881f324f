"""The inventory: a source listed into the ledger once, then handed out in windows.

A run never holds its whole source: discovery streams the listing into the
ledger (URI, size, version, and how each file compares with what earlier runs
recorded), and the run then claims a bounded window of files at a time,
processes it and records it, until nothing claimable is left. Memory follows
the window, not the source. The child runs of a migration share one
inventory, so one listing is split between them with nothing but the claims
every run already takes.

Windows are claimed in URI order: after a kill, the next run's first window
is the window the dead run was working on (the files of earlier windows are
recorded, so skipped or done), its batches are the same, and its jobs come
back by their client tokens instead of being started twice.

An outcome recorded for a file marks it done in every inventory that lists
it (``Claims.record_outcomes``), so a file another run handled meanwhile is
never taken again from an older listing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.discover import SourceFile, iter_source
from tasks.ledger.claims import Claims, compare
from tasks.ledger.runs import Holder
from tasks.ledger.schema import (
    chunks,
    files_table,
    insert_for,
    inventory_instances_table,
    inventory_table,
)
from tasks.retry_policy import skip_when_unchanged
from tasks.statuses import Change, ListingState, Skip

DEFAULT_WINDOW_FILES = 10_000


@dataclass(frozen=True)
class Listing:
    """What filling an inventory found (counts only: the files are in the ledger)."""

    files: int = 0
    to_process: int = 0
    skipped_unchanged: int = 0
    given_up: int = 0


@dataclass(frozen=True)
class Window:
    """Files one run claimed, to process and record together."""

    files: list[SourceFile]
    changes: dict[str, Change]
    # Other runs whose claims this claim freed or took over: runs presumed
    # dead, or (lease over) maybe alive; the caller judges which.
    taken_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Leftover:
    """What a run did not take from its inventory, once no window is left."""

    # Listed, but held by another live run, or recorded by one since.
    claimed_by_other_runs: int = 0
    holders: tuple[Holder, ...] = ()
    skipped_unchanged: int = 0
    given_up: int = 0
    # The jobs that imported (or refused) the files skipped as unchanged.
    jobs_of_skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    """One inventory as one run sees it: the run claims, records and counts."""

    ledger: Claims
    inventory_id: str

    def fill(self, source: str, files: Iterable[SourceFile], skip_unchanged: bool,
             max_attempts: int) -> Listing:
        """List ``files`` (a stream) into the inventory, a chunk per transaction.

        Nothing is claimed yet: files held by another run are listed like the
        rest and taken, or not, window by window. Filling again (a flow run
        retried) updates what changed and keeps what is done.
        """
        totals = Counter[str]()
        for chunk in chunks(files):
            totals.update(self._fill_chunk(source, chunk, skip_unchanged, max_attempts))
        return Listing(files=totals["files"], to_process=totals["to_process"],
                       skipped_unchanged=totals[Skip.SETTLED], given_up=totals[Skip.GIVEN_UP])

    def _fill_chunk(self, source: str, chunk: list[SourceFile], skip_unchanged: bool,
                    max_attempts: int) -> Counter[str]:
        files, inventory = files_table, inventory_table
        ledger = self.ledger
        now = ledger.now()
        counts = Counter[str](files=len(chunk))
        with ledger.engine.begin() as conn:
            known = {
                row.uri: row for row in conn.execute(
                    sa.select(files.c.uri, files.c.size, files.c.version, files.c.status,
                              files.c.error_type, files.c.attempts)
                    .where(files.c.datastore_id == ledger.datastore_id,
                           files.c.uri.in_([item.uri for item in chunk])))
            }
            new_files, listed = [], []
            for item in chunk:
                row = known.get(item.uri)
                skip = None
                if row is None:
                    change = Change.NEW
                    new_files.append({
                        "datastore_id": ledger.datastore_id, "uri": item.uri, "source": source,
                        "relative_path": item.relative_path, "attempts": 0,
                        "first_seen_at": now, "updated_at": now})
                else:
                    change = compare(row, item)
                    if skip_unchanged and change is Change.UNCHANGED:
                        skip = skip_when_unchanged(row.status, row.error_type,
                                                   int(row.attempts or 0), max_attempts)
                counts[skip.value if skip else "to_process"] += 1
                listed.append({
                    "inventory_id": self.inventory_id, "datastore_id": ledger.datastore_id,
                    "uri": item.uri, "relative_path": item.relative_path, "size": item.size,
                    "version": item.version, "change": change.value,
                    "skip": skip.value if skip else None})
            if new_files:
                conn.execute(insert_for(conn)(files).on_conflict_do_nothing(), new_files)
            statement = insert_for(conn)(inventory)
            conn.execute(statement.on_conflict_do_update(
                index_elements=["inventory_id", "datastore_id", "uri"],
                set_={column: statement.excluded[column]
                      for column in ("relative_path", "size", "version", "change", "skip")},
            ), listed)
        return counts

    def claim_window(self, size: int) -> Window:
        """Claim the next ``size`` files of the inventory (in URI order) that no
        live run holds and nobody has recorded since the listing.

        Runs of this host whose process is gone lose their claims first, so
        a window a killed run was working on is taken again at once. The
        window names the runs whose claims it freed or took
        (``Window.taken_from``).
        """
        ledger = self.ledger
        freed = ledger.release_dead_runs()
        files, inventory = files_table, inventory_table
        now = ledger.now()
        expires = now + timedelta(seconds=ledger.lease_seconds)
        with ledger.engine.begin() as conn:
            query = (
                sa.select(inventory.c.uri, inventory.c.relative_path, inventory.c.size,
                          inventory.c.version, inventory.c.change, files.c.claim_owner)
                .join(files, self._same_file())
                .where(self._mine(), inventory.c.done.is_(False), inventory.c.skip.is_(None),
                       ledger.claimable(now),
                       # Never twice to one run: not the window it is still
                       # reporting, nor a file it gave back unrecorded.
                       inventory.c.taken_by.is_distinct_from(ledger.run_id))
                .order_by(inventory.c.uri)
                .limit(size)
            )
            if conn.dialect.name == "postgresql":
                # Sibling runs of a migration pass over each other's rows
                # instead of queueing behind them (SQLite: the write lock).
                query = query.with_for_update(of=files, skip_locked=True)
            rows = conn.execute(query).all()
            for chunk in chunks(rows):
                conn.execute(
                    sa.update(inventory)
                    .where(self._mine(), inventory.c.uri.in_([row.uri for row in chunk]))
                    .values(taken_by=ledger.run_id))
                conn.execute(
                    sa.update(files)
                    .where(files.c.datastore_id == ledger.datastore_id,
                           files.c.uri == sa.bindparam("file_uri"))
                    .values(claim_owner=ledger.run_id, claim_expires_at=expires,
                            claim_size=sa.bindparam("file_size"),
                            claim_version=sa.bindparam("file_version"),
                            claim_change=sa.bindparam("file_change"),
                            relative_path=sa.bindparam("file_path"), updated_at=now),
                    [{"file_uri": row.uri, "file_size": row.size, "file_version": row.version,
                      "file_change": row.change, "file_path": row.relative_path}
                     for row in chunk],
                )
        taken = {row.claim_owner for row in rows} - {None, ledger.run_id}
        return Window(
            files=[SourceFile(row.uri, row.size, row.version, row.relative_path) for row in rows],
            changes={row.uri: Change(row.change) for row in rows},
            taken_from=tuple(sorted(taken | set(freed))),
        )

    def keep_instances(self, candidates: Mapping[str, str]) -> dict[str, str]:
        """Keep each SOP instance of ``candidates`` (UID -> the window's file of
        it) unless a window of this inventory kept another file of it first;
        returns those others (UID -> the file kept), whose instance this
        window's file duplicates, as it would had both been in one window.

        A window names its instances before it stages anything, whether or
        not the window before it is still importing or a sibling run's window
        is, and the first to name one keeps it: a key, not a lookup, decides.
        The kept file naming its instance again (its window taken over after a
        kill) keeps it still. Rows go in sorted by UID so that two PostgreSQL
        transactions of sibling runs take their row locks in one order and
        cannot deadlock.
        """
        instances = inventory_instances_table
        ledger = self.ledger
        kept_elsewhere: dict[str, str] = {}
        with ledger.engine.begin() as conn:
            for chunk in chunks(sorted(candidates.items())):
                conn.execute(insert_for(conn)(instances).on_conflict_do_nothing(), [
                    {"inventory_id": self.inventory_id, "datastore_id": ledger.datastore_id,
                     "sop_instance_uid": sop, "uri": uri} for sop, uri in chunk])
                for sop, uri in conn.execute(
                    sa.select(instances.c.sop_instance_uid, instances.c.uri)
                    .where(instances.c.inventory_id == self.inventory_id,
                           instances.c.datastore_id == ledger.datastore_id,
                           instances.c.sop_instance_uid.in_([sop for sop, _ in chunk]))):
                    if uri != candidates[sop]:
                        kept_elsewhere[sop] = uri
        return kept_elsewhere

    def leftover(self) -> Leftover:
        """Counted once no window is left: what was skipped, and who holds the rest."""
        files, inventory = files_table, inventory_table
        ledger = self.ledger
        held: dict[str, int] = {}
        lease_ends: dict[str, datetime] = {}
        with ledger.engine.begin() as conn:
            skipped: dict[str, int] = dict(conn.execute(
                sa.select(inventory.c.skip, sa.func.count())
                .where(self._mine(), inventory.c.skip.is_not(None))
                .group_by(inventory.c.skip)).all())
            jobs: dict[str, int] = dict(conn.execute(
                sa.select(files.c.job_id, sa.func.count())
                .join(inventory, self._same_file())
                .where(self._mine(), inventory.c.skip.is_not(None), files.c.job_id.is_not(None))
                .group_by(files.c.job_id)).all())
            holding = conn.execute(
                sa.select(files.c.claim_owner, sa.func.count(),
                          sa.func.max(files.c.claim_expires_at))
                .join(files, self._same_file())
                .where(self._mine(), inventory.c.skip.is_(None), inventory.c.done.is_(False),
                       files.c.claim_owner.is_not(None), files.c.claim_owner != ledger.run_id)
                .group_by(files.c.claim_owner)).all()
            recorded_elsewhere = conn.execute(
                sa.select(sa.func.count()).select_from(inventory)
                .where(self._mine(), inventory.c.done.is_(True),
                       inventory.c.done_by != ledger.run_id)).scalar_one()
        for owner, count, expires in holding:
            held[owner] = int(count)
            if expires is not None:
                lease_ends[owner] = expires
        return Leftover(
            claimed_by_other_runs=sum(held.values()) + int(recorded_elsewhere),
            holders=ledger.holders(held, lease_ends),
            skipped_unchanged=int(skipped.get(Skip.SETTLED.value, 0)),
            given_up=int(skipped.get(Skip.GIVEN_UP.value, 0)),
            jobs_of_skipped={job: int(count) for job, count in jobs.items()},
        )

    def untaken(self, size: int) -> Iterator[list[SourceFile]]:
        """Files listed for processing that no run has taken (this run was
        stopped first), ``size`` at a time: the report still names each one."""
        files, inventory = files_table, inventory_table
        after = ""
        while True:
            with self.ledger.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(inventory.c.uri, inventory.c.size, inventory.c.version,
                              inventory.c.relative_path)
                    .join(files, self._same_file())
                    .where(self._mine(), inventory.c.skip.is_(None),
                           inventory.c.done.is_(False), inventory.c.uri > after,
                           sa.or_(files.c.claim_owner.is_(None),
                                  files.c.claim_owner == self.ledger.run_id))
                    .order_by(inventory.c.uri).limit(size)).all()
            if not rows:
                return
            after = rows[-1].uri
            yield [SourceFile(row.uri, row.size, row.version, row.relative_path) for row in rows]

    def _mine(self) -> sa.ColumnElement[bool]:
        return sa.and_(inventory_table.c.inventory_id == self.inventory_id,
                       inventory_table.c.datastore_id == self.ledger.datastore_id)

    @staticmethod
    def _same_file() -> sa.ColumnElement[bool]:
        return sa.and_(files_table.c.datastore_id == inventory_table.c.datastore_id,
                       files_table.c.uri == inventory_table.c.uri)

    def file_statuses(self) -> dict[str, int]:
        """Latest outcome of every file listed to be processed (``unfinished``:
        none recorded since the listing), for the summary of a migration. Files
        skipped as unchanged are not counted: their outcome is an earlier
        run's, and the listing counts them (Listing.skipped_unchanged)."""
        files, inventory = files_table, inventory_table
        status = sa.case((inventory.c.done.is_(True), files.c.status),
                         else_=sa.literal(ListingState.UNFINISHED.value))
        with self.ledger.engine.begin() as conn:
            # Grouped by the expression, not a label: PostgreSQL reads a GROUP
            # BY name as an input column first (ledger_files.status) and then
            # refuses the CASE; SQLite takes the label.
            rows = conn.execute(
                sa.select(status, sa.func.count())
                .join(files, self._same_file())
                .where(self._mine(), inventory.c.skip.is_(None))
                .group_by(status)).all()
        return {str(status): int(count) for status, count in rows}

    def forget(self) -> None:
        """Drop the listing once its run has accounted for it (a run's own
        inventory; a migration keeps its own until the migration ends)."""
        with self.ledger.engine.begin() as conn:
            conn.execute(sa.delete(inventory_table).where(self._mine()))
            conn.execute(sa.delete(inventory_instances_table).where(
                inventory_instances_table.c.inventory_id == self.inventory_id,
                inventory_instances_table.c.datastore_id == self.ledger.datastore_id))



@task(name="list-source", cache_policy=NO_CACHE)
def list_source(inventory: Inventory, source: str, skip_unchanged: bool,
                max_attempts: int) -> Listing:
    return inventory.fill(source, iter_source(source), skip_unchanged, max_attempts)


@task(name="claim-window", cache_policy=NO_CACHE)
def claim_window(inventory: Inventory, size: int) -> Window:
    return inventory.claim_window(size)
