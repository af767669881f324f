"""The ledger's record of reconciliation: every image set write that
``dicom-reconcile`` made or tried, with the versions before and after.

Its own table in the ingestion ledger (``reconcile_changes``, revision 0003):
the ingestion tables are not touched.
An auditor can follow each non-primary image set to where its instances went.
No attribute values are kept, only keywords: corrections carry patient data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from tasks.ledger import engine_for
from tasks.ledger.schema import reconcile_changes_table as changes_table
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

