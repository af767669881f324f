"""STOW-RS as a second way to land files: which way each was sent.

``ledger_jobs.landing`` says whether a row is an import job or a STOW-RS
request (recorded before it is sent, so that a run killed while waiting for
its answer leaves a request a rerun resolves by looking at what landed);
``ledger_outcomes.landing`` and ``ledger_run_jobs.landing`` keep the report
column, so that a rebuilt report says it too. Every row before this revision
is an import job's.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_jobs",
                  sa.Column("landing", sa.String(8), nullable=False,
                            server_default=sa.text("'job'")))
    op.add_column("ledger_outcomes", sa.Column("landing", sa.String(8)))
    op.add_column("ledger_run_jobs", sa.Column("landing", sa.String(8)))
    op.execute("UPDATE ledger_outcomes SET landing = 'job' WHERE job_id IS NOT NULL")
    op.execute("UPDATE ledger_run_jobs SET landing = 'job' WHERE job_id IS NOT NULL")


def downgrade() -> None:
    for table_name in ("ledger_run_jobs", "ledger_outcomes", "ledger_jobs"):
        with op.batch_alter_table(table_name) as table:
            table.drop_column("landing")
