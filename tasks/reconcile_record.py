"""The ledger's record of reconciliation: every image set write that
``dicom-reconcile`` made or tried, with the versions before and after.

Its own table in the ingestion ledger (``reconcile_changes``, revision 0003).
An auditor can follow each non-primary image set to where its instances went,
and so can the pipeline, file by file: once a copy has finished, every file
whose outcome names the copied set is placed in the set that now holds its
instance (``reconcile_placements``, revision 0007; its latest outcome names
that set too), so that verification and retries look there, not at a set
about to be deleted. No attribute values are kept, only keywords:
corrections carry patient data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from tasks.ledger import LANDED, engine_for
from tasks.ledger.schema import chunks, files_table, insert_for, outcomes_table
from tasks.ledger.schema import reconcile_changes_table as changes_table
from tasks.ledger.schema import reconcile_placements_table as placements_table
from tasks.statuses import ReconcileOutcome


@dataclass(frozen=True)
class Change:
    """One image set write of a reconciliation."""

    decided_image_set_id: str
    action: str
    operation: str
    image_set_id: str | None
    version_before: str | None
    version_after: str | None
    outcome: ReconcileOutcome
    forced: bool = False
    source_image_set_id: str | None = None
    source_version: str | None = None
    attributes: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where a decision put the instances of the non-primary set it copied."""

    from_image_set_id: str
    image_set_id: str
    image_set_version: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    # Keywords the instances hold other than their import stored them.
    attributes: str | None


class ReconcileRecord:
    """One reconcile run's handle on its table."""

    def __init__(self, url: str, run_id: str, datastore_id: str) -> None:
        self.url = url
        self.run_id = run_id
        self.datastore_id = datastore_id

    def record(self, change: Change) -> None:
        """Right after each write, so a run killed halfway leaves what it did."""
        with engine_for(self.url).begin() as conn:
            conn.execute(sa.insert(changes_table).values(
                run_id=self.run_id, datastore_id=self.datastore_id,
                recorded_at=datetime.now(UTC), **asdict(change),
            ))


    def place(self, placement: Placement) -> int:
        """Every file imported into the copied set now has its instance in
        the destination; returns how many files the ledger holds of it."""
        now = datetime.now(UTC)
        outcomes, files = outcomes_table.c, files_table.c
        with engine_for(self.url).begin() as conn:
            uris = [row.uri for row in conn.execute(
                sa.select(outcomes.uri).distinct().where(
                    outcomes.datastore_id == self.datastore_id,
                    outcomes.image_set_id == placement.from_image_set_id,
                    outcomes.status.in_(sorted(LANDED))))]
            for chunk in chunks(uris):
                stmt = insert_for(conn)(placements_table)
                values = {**asdict(placement), "run_id": self.run_id, "recorded_at": now}
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["datastore_id", "uri", "from_image_set_id"],
                    set_={c: stmt.excluded[c] for c in values if c != "from_image_set_id"}),
                    [{"datastore_id": self.datastore_id, "uri": uri, **values} for uri in chunk])
            conn.execute(sa.update(files_table).where(
                files.datastore_id == self.datastore_id,
                files.image_set_id == placement.from_image_set_id,
            ).values(image_set_id=placement.image_set_id, updated_at=now))
        return len(uris)
