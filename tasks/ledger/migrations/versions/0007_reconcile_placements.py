"""Where reconciled files' instances live: for each file whose outcome names
a non-primary image set that ``dicom-reconcile`` copied (and deleted), the
image set that holds its instance now, so that verification and retries
look there instead of at a deleted set.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tasks.ledger.schema import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_placements",
        sa.Column("datastore_id", sa.String(64), primary_key=True),
        sa.Column("uri", sa.String(2048), primary_key=True),
        sa.Column("from_image_set_id", sa.String(32), primary_key=True),
        sa.Column("image_set_id", sa.String(32), nullable=False),
        sa.Column("image_set_version", sa.String(32)),
        sa.Column("study_instance_uid", sa.String(256)),
        sa.Column("series_instance_uid", sa.String(256)),
        sa.Column("attributes", sa.Text),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("recorded_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reconcile_placements")
