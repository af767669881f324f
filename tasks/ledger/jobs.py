"""Import jobs as the ledger knows them: started (before any waiting, so that
a retry can find a job its run died waiting for), how they ended, and which
still wait for their files' outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tasks.batch import Batch
from tasks.ledger.files import IMPORTED, LedgerFile, ledger_file
from tasks.ledger.part import LedgerPart
from tasks.ledger.schema import chunks, files_table, insert_for, jobs_table, outcomes_table
from tasks.locations import S3Uri
from tasks.poll import JobOutcome
from tasks.statuses import RUNNING, TERMINAL, FileStatus, JobStatus, Landing


@dataclass(frozen=True)
class LedgerJob:
    """An import job started by some run, with the files it was given."""

    job_id: str
    datastore_id: str
    run_id: str
    batch: Batch
    input_s3_uri: str
    files: tuple[LedgerFile, ...] = field(default=())
    landing: Landing = Landing.JOB

    def staged_key(self, item: LedgerFile) -> str:
        """What the job's output names the file by (a STOW-RS request's
        answer: its source URI, tasks.stow_answer)."""
        if self.landing is Landing.STOW:
            return item.uri
        return S3Uri.parse(self.input_s3_uri).join(item.relative_path).key


class Jobs(LedgerPart):
    """The import jobs of the data store, whichever run started them."""

    def record_job_started(
        self, job_id: str, batch: Batch, input_s3_uri: str, landing: Landing = Landing.JOB
    ) -> str:
        """Called right after StartDICOMImportJob answered, before any waiting
        (a STOW-RS request: before it is sent, ``input_s3_uri`` the URL it
        goes to): from here on a retry can find this job even if this run
        dies. Returns the run that started the job first (another one when a
        rerun got an earlier run's job back).

        Attempts count jobs, not calls: the same job returned again (a Prefect
        retry with the same client token) is not a new attempt, and changed
        bytes start counting from one again.
        """
        now = self.now()
        table = files_table
        with self.engine.begin() as conn:
            conn.execute(
                insert_for(conn)(jobs_table)
                .values(datastore_id=self.datastore_id, job_id=job_id, run_id=self.run_id,
                        batch_id=batch.batch_id, batch_digest=batch.digest,
                        input_s3_uri=input_s3_uri, status=JobStatus.SUBMITTED.value,
                        submitted_at=now, landing=landing.value)
                .on_conflict_do_nothing()
            )
            started_by: str = conn.execute(
                sa.select(jobs_table.c.run_id).where(
                    jobs_table.c.datastore_id == self.datastore_id,
                    jobs_table.c.job_id == job_id)
            ).scalar_one()
            sha256: sa.BindParameter[str] = sa.bindparam("file_sha256")
            # The same job returned again (its client token): its outcome is
            # already known, and the rerun only reads its output once more.
            # (No IN: executemany cannot expand it.)
            known = sa.and_(table.c.job_id == job_id,
                            sa.or_(*(table.c.status == status for status in sorted(IMPORTED))))
            started = (
                sa.update(table)
                .where(table.c.datastore_id == self.datastore_id,
                       table.c.uri == sa.bindparam("file_uri"))
                .values(
                    attempts=sa.case(
                        (table.c.job_id == job_id, table.c.attempts),
                        (table.c.sha256.is_not_distinct_from(sha256), table.c.attempts + 1),
                        else_=1,
                    ),
                    status=sa.case((known, table.c.status),
                                   else_=FileStatus.SUBMITTED.value),
                    job_id=job_id,
                    batch_id=batch.batch_id, run_id=self.run_id,
                    size=sa.bindparam("file_size"), version=table.c.claim_version,
                    sha256=sha256, sop_instance_uid=sa.bindparam("file_sop"),
                    study_instance_uid=sa.bindparam("file_study"),
                    series_instance_uid=sa.bindparam("file_series"),
                    error_type=sa.case((known, table.c.error_type)),
                    reason=sa.case((known, table.c.reason)),
                    image_set_id=sa.case((known, table.c.image_set_id)),
                    output_missing_run_id=sa.case((known, table.c.output_missing_run_id)),
                    updated_at=now,
                )
            )
            for chunk in chunks(batch.files):
                conn.execute(started, [
                    {"file_uri": record.uri, "file_sha256": record.sha256,
                     "file_size": record.size, "file_sop": record.sop_instance_uid,
                     "file_study": record.study_instance_uid,
                     "file_series": record.series_instance_uid}
                    for record in chunk
                ])
        return started_by

    def job_known(self, job_id: str) -> bool:
        """Whether some run recorded this job (or STOW-RS request) already."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.select(jobs_table.c.job_id).where(
                    jobs_table.c.datastore_id == self.datastore_id,
                    jobs_table.c.job_id == job_id)
            ).first() is not None

    def failed_attempts(self, input_s3_uri: str, batch_digest: str) -> int:
        """Jobs of this very batch (same files, same input prefix) that ended
        FAILED: the number of the next attempt, which its client token carries."""
        with self.engine.begin() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(jobs_table).where(
                    jobs_table.c.datastore_id == self.datastore_id,
                    jobs_table.c.input_s3_uri == input_s3_uri,
                    jobs_table.c.batch_digest == batch_digest,
                    jobs_table.c.status == JobStatus.FAILED.value)
            ).scalar_one())

    def record_job_status(self, outcome: JobOutcome) -> None:
        """A job's end as soon as it is known, before its files' outcomes are:
        a run killed in between still leaves the next attempt a new token."""
        if outcome.job_id is None or outcome.status not in TERMINAL:
            return
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(jobs_table)
                .where(jobs_table.c.datastore_id == self.datastore_id,
                       jobs_table.c.job_id == outcome.job_id)
                .values(status=outcome.status.value, message=outcome.message,
                        output_s3_uri=outcome.output_s3_uri)
            )

    def unfinished_jobs(
        self, run_id: str | None = None, job_id: str | None = None
    ) -> list[LedgerJob]:
        """Jobs whose files still wait for an outcome: the run that started them
        died before reading their output, or stopped waiting (timed_out)."""
        pending = sa.select(files_table.c.job_id).where(
            files_table.c.datastore_id == self.datastore_id,
            files_table.c.status.in_([FileStatus.SUBMITTED.value, FileStatus.TIMED_OUT.value]),
        )
        query = sa.select(jobs_table).where(
            jobs_table.c.datastore_id == self.datastore_id, jobs_table.c.job_id.in_(pending)
        )
        if job_id:
            query = query.where(jobs_table.c.job_id == job_id)
        if run_id:
            query = query.where(
                sa.or_(jobs_table.c.run_id == run_id,
                       jobs_table.c.job_id.in_(self._outcome_jobs_of(run_id)))
            )
        with self.engine.begin() as conn:
            jobs = list(conn.execute(query.order_by(jobs_table.c.submitted_at)))
            result = []
            for job in jobs:
                members = tuple(
                    ledger_file(row)
                    for row in conn.execute(
                        sa.select(files_table)
                        .where(files_table.c.datastore_id == self.datastore_id,
                               files_table.c.job_id == job.job_id,
                               files_table.c.status.in_(
                                   [FileStatus.SUBMITTED.value, FileStatus.TIMED_OUT.value]))
                        .order_by(files_table.c.uri)
                    )
                )
                batch = Batch(files=tuple(m.as_validation_record() for m in members),
                              digest=job.batch_digest)
                result.append(LedgerJob(job.job_id, self.datastore_id, job.run_id, batch,
                                        job.input_s3_uri, members, Landing(job.landing)))
        return result

    def _outcome_jobs_of(self, run_id: str) -> sa.Select[Any]:
        return sa.select(outcomes_table.c.job_id).where(
            outcomes_table.c.run_id == run_id,
            outcomes_table.c.datastore_id == self.datastore_id,
            outcomes_table.c.job_id.is_not(None),
        )

    def record_jobs_ended(self, outcomes: Sequence[JobOutcome]) -> None:
        """For jobs whose files are reported elsewhere (a FAILED job's files
        re-imported in the same retry)."""
        with self.engine.begin() as conn:
            self._record_jobs_ended(conn, outcomes)

    def _record_jobs_ended(self, conn: Connection, outcomes: Sequence[JobOutcome]) -> None:
        for outcome in outcomes:
            # A run that stopped waiting leaves the job as it was: SUBMITTED, unread.
            if outcome.job_id and outcome.status not in RUNNING:
                conn.execute(
                    sa.update(jobs_table)
                    .where(jobs_table.c.datastore_id == self.datastore_id,
                           jobs_table.c.job_id == outcome.job_id)
                    .values(status=outcome.status.value, message=outcome.message,
                            output_s3_uri=outcome.output_s3_uri,
                            outcome_recorded=outcome.status is not JobStatus.TIMED_OUT)
                )
