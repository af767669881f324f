"""Isolating a poison file: retry_failed splits a batch whose job FAILED for
something in its files, so that one file cannot keep its neighbours out of
the data store for ever.

Such a job fails whole, naming no file, and a retry of the same batch fails
alike until the batch is given up. Its batch is split in halves, and each
half that fails again in halves, until every part is imported or is the one
file that breaks a job alone, which is reported ``job_failed`` with
HealthImaging's message and ``ISOLATED`` (then retried only once it changes).
The halves of a round run at once: one poison file among n costs at most
⌈log2 n⌉ rounds, each of one job that fails and one that imports its half.
A failure that blames access, a quota or the input prefix is not split: every
part would meet it (tasks.retry_policy.job_failure_cause).

The parts of a failed job are staged under a folder named after that job
(``split_staging_id``): a rerun after a kill splits it into the same parts at
the same prefixes, so their client tokens get the jobs already started back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd

from tasks.batch import Batch
from tasks.poll import JobOutcome
from tasks.retry_policy import job_failure_cause
from tasks.statuses import ISOLATED, FileStatus, JobFailureCause, JobStatus


def split_staging_id(datastore_id: str, job_id: str) -> str:
    """The staging folder of the parts of a failed job."""
    digest = hashlib.sha256(f"{datastore_id}|{job_id}".encode()).hexdigest()[:16]
    return f"{digest}-split"


def _failed_for_content(outcome: JobOutcome) -> bool:
    return (outcome.status is JobStatus.FAILED and outcome.job_id is not None
            and job_failure_cause(outcome.message) is JobFailureCause.CONTENT)


def to_split(
    batches: Sequence[Batch], outcomes: Sequence[JobOutcome]
) -> list[tuple[Batch, JobOutcome]]:
    """The batches of more than one file whose job FAILED for its content."""
    by_id = {b.batch_id: b for b in batches}
    return [(by_id[o.batch_id], o) for o in outcomes
            if o.batch_id in by_id and len(by_id[o.batch_id].files) > 1
            and _failed_for_content(o)]


def isolated(batches: Sequence[Batch], outcomes: Sequence[JobOutcome]) -> set[str]:
    """The batches of one file whose job FAILED for its content."""
    single = {b.batch_id for b in batches if len(b.files) == 1}
    return {o.batch_id for o in outcomes if o.batch_id in single and _failed_for_content(o)}


def mark_isolated(rows: pd.DataFrame, batch_ids: set[str]) -> pd.DataFrame:
    """The report says which files were isolated: their ``error_type``."""
    alone = rows["batch_id"].isin(batch_ids) & (rows["status"] == FileStatus.JOB_FAILED.value)
    return rows.assign(error_type=rows["error_type"].where(~alone, ISOLATED))
