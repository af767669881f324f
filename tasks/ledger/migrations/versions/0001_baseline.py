"""Baseline: the ledger as it was when migrations began.

A fresh ledger gets every table. A ledger made before migrations (its tables
there, no ``alembic_version``) is adopted: the tables it lacks are created
and the columns its tables lack are added, nullable and without defaults, as
the ledger did by hand before; the rows it has are kept.

The tables are written out here, not taken from tasks.ledger.schema: this
revision must create the baseline for ever, whatever later revisions change.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tasks.ledger.schema import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_tables = sa.MetaData()

files_table = sa.Table(
    "ledger_files",
    _tables,
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("uri", sa.String(2048), primary_key=True),
    # The source the file was found under and its path below it: a retry
    # stages it again under the same relative path.
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("relative_path", sa.Text, nullable=False),
    # Identity of the content the latest outcome is about.
    sa.Column("size", sa.BigInteger),
    sa.Column("version", sa.String(256)),
    sa.Column("sha256", sa.String(64)),
    sa.Column("sop_instance_uid", sa.String(64)),
    sa.Column("study_instance_uid", sa.String(64)),
    sa.Column("series_instance_uid", sa.String(64)),
    # Latest outcome.
    sa.Column("status", sa.String(32)),
    sa.Column("change", sa.String(16)),
    sa.Column("error_type", sa.String(256)),
    sa.Column("reason", sa.Text),
    sa.Column("job_id", sa.String(32)),
    sa.Column("batch_id", sa.String(16)),
    sa.Column("image_set_id", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_id", sa.String(64)),
    # The run that last could neither read the output of the job that imported
    # this file nor find it in the data store: the file's imported outcome
    # stands, in doubt, until retry_failed looks it up again.
    sa.Column("output_missing_run_id", sa.String(64)),
    # The current claim, and what the claiming run saw (recorded as the
    # content identity only once an outcome exists, so that a run killed
    # after claiming never makes a changed file look unchanged).
    sa.Column("claim_owner", sa.String(64)),
    sa.Column("claim_expires_at", UtcDateTime),
    sa.Column("claim_size", sa.BigInteger),
    sa.Column("claim_version", sa.String(256)),
    sa.Column("claim_change", sa.String(16)),
    sa.Column("first_seen_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_ledger_files_status", "datastore_id", "status"),
    sa.Index("ix_ledger_files_job", "datastore_id", "job_id"),
    sa.Index("ix_ledger_files_claim", "claim_owner"),
)

jobs_table = sa.Table(
    "ledger_jobs",
    _tables,
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(16), nullable=False),
    sa.Column("batch_digest", sa.String(64), nullable=False),
    sa.Column("input_s3_uri", sa.Text, nullable=False),
    sa.Column("status", sa.String(16)),
    sa.Column("message", sa.Text),
    # The job's own output folder, known once it ended.
    sa.Column("output_s3_uri", sa.Text),
    # True once the files' outcomes from this job's output are recorded; a
    # job started by a run that died before that is resumed by retry_failed.
    sa.Column("outcome_recorded", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("submitted_at", UtcDateTime, nullable=False),
)

outcomes_table = sa.Table(
    "ledger_outcomes",
    _tables,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("uri", sa.String(2048), primary_key=True),
    sa.Column("change", sa.String(16)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(32)),
    sa.Column("image_set_id", sa.String(32)),
    sa.Column("error_type", sa.String(256)),
    sa.Column("reason", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    # The rest of the run's report row, so that the report can be written
    # again from here alone (``dicom-import report``); never PHI.
    sa.Column("report_row", sa.Integer),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("sop_instance_uid", sa.String(64)),
    sa.Column("study_instance_uid", sa.String(64)),
    sa.Column("series_instance_uid", sa.String(64)),
    sa.Column("series_number", sa.String(32)),
    sa.Column("transfer_syntax", sa.String(64)),
    sa.Column("batch_id", sa.String(16)),
    sa.Column("staged_key", sa.Text),
    sa.Column("is_primary", sa.Boolean),
    sa.Column("image_set_version", sa.Integer),
    sa.Column("warning_codes", sa.Text),
    sa.Column("reason_code", sa.String(64)),
    sa.Column("expected_warnings", sa.Text),
    sa.Index("ix_ledger_outcomes_job", "datastore_id", "job_id"),
)

# A run's job report rows, as written (the per-status counts are not kept:
# they are counted again from the run's outcomes).
run_jobs_table = sa.Table(
    "ledger_run_jobs",
    _tables,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("datastore_id", sa.String(64), primary_key=True),
    sa.Column("batch_id", sa.String(16), primary_key=True),
    sa.Column("report_row", sa.Integer, nullable=False),
    sa.Column("job_id", sa.String(32)),
    sa.Column("job_status", sa.String(16)),
    sa.Column("message", sa.Text),
    sa.Column("files", sa.Integer),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("input_s3_uri", sa.Text),
    sa.Column("output_s3_uri", sa.Text),
    sa.Column("scanned_files", sa.Integer),
    sa.Column("imported_files", sa.Integer),
    sa.Column("generated_image_sets", sa.Integer),
)

runs_table = sa.Table(
    "ledger_runs",
    _tables,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("datastore_id", sa.String(64), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("counts", sa.Text),
    # Renewed while the run holds claims; NULL for runs from before heartbeats.
    sa.Column("heartbeat_at", UtcDateTime),
    # The process holding the run's claims: on its own host, a run whose
    # process is gone is dead at once, without waiting for missed beats.
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("process_started_at", UtcDateTime),
    # Where the run writes its report (recorded before writing it).
    sa.Column("report_folder", sa.Text),
)


def upgrade() -> None:
    conn = op.get_bind()
    _tables.create_all(conn, checkfirst=True)
    inspector = sa.inspect(conn)
    for table in _tables.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                op.add_column(table.name, sa.Column(column.name, column.type))


def downgrade() -> None:
    for table in reversed(_tables.sorted_tables):
        op.drop_table(table.name)
