"""The inventory: a source listed once, handed out in windows.

Adds ``ledger_inventory`` (one row per file per listing, with whether an
outcome was recorded for it since, and which run took it last) and an index
on the SOP Instance UIDs of ``ledger_files``, through which a window finds
the files earlier windows kept.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_inventory",
        sa.Column("inventory_id", sa.String(64), primary_key=True),
        sa.Column("datastore_id", sa.String(64), primary_key=True),
        sa.Column("uri", sa.String(2048), primary_key=True),
        sa.Column("relative_path", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("skip", sa.String(16)),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("done_by", sa.String(64)),
        sa.Column("taken_by", sa.String(64)),
    )
    op.create_index("ix_ledger_inventory_file", "ledger_inventory", ["datastore_id", "uri"])
    not_done = sa.column("done").is_(False)
    op.create_index("ix_ledger_inventory_todo", "ledger_inventory",
                    ["inventory_id", "datastore_id", "uri"],
                    sqlite_where=not_done, postgresql_where=not_done)
    op.create_index("ix_ledger_files_sop", "ledger_files", ["datastore_id", "sop_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_ledger_files_sop", "ledger_files")
    op.drop_table("ledger_inventory")
