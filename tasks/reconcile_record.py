"""The ledger's record of reconciliation: every image set write that
``dicom-reconcile`` made or tried, with the versions before and after.

Its own table on its own ``MetaData``, created when first used, in the
ingestion ledger's database (same URL): the ingestion tables are not touched.
An auditor can follow each non-primary image set to where its instances went.
No attribute values are kept, only keywords: corrections carry patient data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tasks.ledger import engine_for

metadata = sa.MetaData()

changes_table = sa.Table(
    "reconcile_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("datastore_id", sa.String(64), nullable=False),
    # The non-primary image set the operator's decision is about.
    sa.Column("decided_image_set_id", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    # UpdateImageSetMetadata, CopyImageSet or DeleteImageSet.
    sa.Column("operation", sa.String(32), nullable=False),
    # The image set the operation wrote, and its versions around the write
    # (before: none for a copy into a new set; after: none for a deletion or
    # a refused write).
    sa.Column("image_set_id", sa.String(32)),
    sa.Column("version_before", sa.String(32)),
    sa.Column("version_after", sa.String(32)),
    # For a copy: the set copied from, at the version copied.
    sa.Column("source_image_set_id", sa.String(32)),
    sa.Column("source_version", sa.String(32)),
    # Keywords corrected (";"-separated), never their values.
    sa.Column("attributes", sa.Text),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_reconcile_changes_decided", "datastore_id", "decided_image_set_id"),
)


class Outcome(StrEnum):
    APPLIED = "applied"
    # Refused by HealthImaging, or ended *_FAILED: nothing changed by this write.
    FAILED = "failed"


@dataclass(frozen=True)
class Change:
    """One image set write of a reconciliation."""

    decided_image_set_id: str
    action: str
    operation: str
    image_set_id: str | None
    version_before: str | None
    version_after: str | None
    outcome: Outcome
    forced: bool = False
    source_image_set_id: str | None = None
    source_version: str | None = None
    attributes: str | None = None
    error: str | None = None


_created: set[str] = set()


def _engine(url: str) -> Engine:
    engine = engine_for(url)
    if url not in _created:
        with engine.begin() as conn:
            metadata.create_all(conn)
        _created.add(url)
    return engine


class ReconcileRecord:
    """One reconcile run's handle on its table."""

    def __init__(self, url: str, run_id: str, datastore_id: str) -> None:
        self.url = url
        self.run_id = run_id
        self.datastore_id = datastore_id

    def record(self, change: Change) -> None:
        """Right after each write, so a run killed halfway leaves what it did."""
        with _engine(self.url).begin() as conn:
            conn.execute(sa.insert(changes_table).values(
                run_id=self.run_id, datastore_id=self.datastore_id,
                recorded_at=datetime.now(UTC), **asdict(change),
            ))

