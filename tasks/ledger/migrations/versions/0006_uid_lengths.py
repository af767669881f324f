"""UIDs as long as the import accepts them: 256 characters, not DICOM's 64
(import_rules.rules.MAX_UID_LENGTH; HealthImaging imports a longer one with
a warning), and a file's transfer syntax and series number as written,
however long: PostgreSQL refuses a value longer than its column, where
SQLite kept it.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_UIDS = ("sop_instance_uid", "study_instance_uid", "series_instance_uid")
_WIDENED = {
    "ledger_files": {uid: sa.String(256) for uid in _UIDS},
    "ledger_outcomes": {**{uid: sa.String(256) for uid in _UIDS},
                        "series_number": sa.Text(), "transfer_syntax": sa.Text()},
    "ledger_inventory_instances": {"sop_instance_uid": sa.String(256)},
}
_BEFORE = {"series_number": sa.String(32)}


def upgrade() -> None:
    for table, columns in _WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column, wider in columns.items():
                batch.alter_column(column, type_=wider,
                                   existing_type=_BEFORE.get(column, sa.String(64)))


def downgrade() -> None:
    for table, columns in _WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column, wider in columns.items():
                batch.alter_column(column, type_=_BEFORE.get(column, sa.String(64)),
                                   existing_type=wider)
