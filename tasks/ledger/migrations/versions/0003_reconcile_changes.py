"""The record of reconciliation: every image set write ``dicom-reconcile`` made
or tried, with the versions before and after (keywords, never values).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tasks.ledger.schema import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("datastore_id", sa.String(64), nullable=False),
        sa.Column("decided_image_set_id", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("image_set_id", sa.String(32)),
        sa.Column("version_before", sa.String(32)),
        sa.Column("version_after", sa.String(32)),
        sa.Column("source_image_set_id", sa.String(32)),
        sa.Column("source_version", sa.String(32)),
        sa.Column("attributes", sa.Text),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("recorded_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_reconcile_changes_decided", "reconcile_changes",
                    ["datastore_id", "decided_image_set_id"])


def downgrade() -> None:
    op.drop_table("reconcile_changes")
