"""The file each inventory keeps of each SOP instance.

Adds ``ledger_inventory_instances``. Windows found the file an earlier
window kept among recorded outcomes only, so a window submitted while the
one before it was still importing (or a sibling run's window) imported its
duplicates too. The table is filled from what inventories recorded so far,
so a migration listed before this revision goes on as it would have.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_inventory_instances",
        sa.Column("inventory_id", sa.String(64), primary_key=True),
        sa.Column("datastore_id", sa.String(64), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("uri", sa.String(2048), nullable=False),
    )
    # The first file in URI order of each instance an inventory recorded as
    # anything but invalid or a duplicate: what the windows kept until now.
    op.execute(
        "INSERT INTO ledger_inventory_instances "
        "(inventory_id, datastore_id, sop_instance_uid, uri) "
        "SELECT i.inventory_id, i.datastore_id, f.sop_instance_uid, MIN(f.uri) "
        "FROM ledger_inventory i JOIN ledger_files f "
        "ON f.datastore_id = i.datastore_id AND f.uri = i.uri "
        "WHERE i.done AND f.sop_instance_uid IS NOT NULL "
        "AND f.status NOT IN ('invalid', 'duplicate') "
        "GROUP BY i.inventory_id, i.datastore_id, f.sop_instance_uid")


def downgrade() -> None:
    op.drop_table("ledger_inventory_instances")
