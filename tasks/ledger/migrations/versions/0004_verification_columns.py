"""Verification's two report columns in each run's outcome history, so that a
report rebuilt from the ledger says what verification found.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_outcomes", sa.Column("verification", sa.String(16)))
    op.add_column("ledger_outcomes", sa.Column("verification_detail", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("ledger_outcomes") as table:
        table.drop_column("verification_detail")
        table.drop_column("verification")
