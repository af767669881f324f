"""Which failed jobs a retry splits, and how the report names the file left alone."""

from __future__ import annotations

import pandas as pd

from tasks.poll import JobOutcome
from tasks.report_row import file_rows
from tasks.split import isolated, mark_isolated, split_staging_id, split_when_resumed
from tasks.statuses import ISOLATED, JobStatus
from tests.tasks.test_batch import _series

BROKEN = "Internal error while importing: the import job could not process its input."
DENIED = "Unable to list the input s3://ops/staging/x/: AccessDenied"


def _outcome(batch_id: str, status: JobStatus = JobStatus.FAILED, message: str = BROKEN,
             job_id: str | None = "job") -> JobOutcome:
    return JobOutcome(batch_id, "ds", job_id, status, message)


def test_only_a_retry_s_job_that_failed_for_its_content_is_split_when_resumed() -> None:
    retry = "s3://ops/staging/0123456789abcdef-retry-0123456789ab/batch/"
    part = f"s3://ops/staging/{split_staging_id('ds', 'job')}/batch/"
    ingestion = "s3://ops/staging/0123456789abcdef/batch/"
    assert split_when_resumed(retry, _outcome("b"))
    assert split_when_resumed(part, _outcome("b"))
    assert not split_when_resumed(ingestion, _outcome("b"))
    assert not split_when_resumed(part, _outcome("b", message=DENIED))
    assert not split_when_resumed(part, _outcome("b", status=JobStatus.COMPLETED))


def test_a_file_that_failed_its_job_alone_is_marked_isolated() -> None:
    from tasks.batch import make_batches

    (single,) = make_batches(_series("one", 1))
    (pair,) = make_batches(_series("two", 2))
    (denied,) = make_batches(_series("three", 1))
    outcomes = [_outcome(single.batch_id), _outcome(pair.batch_id),
                _outcome(denied.batch_id, message=DENIED)]
    alone = isolated([single, pair, denied], outcomes)
    assert alone == {single.batch_id}
    rows = file_rows(pd.DataFrame(
        [{"source_uri": f.uri, "batch_id": b.batch_id, "status": "job_failed",
          "error_type": "JobFailed"} for b in (single, pair, denied) for f in b.files]))
    marked = mark_isolated(rows, alone).set_index("source_uri")["error_type"]
    assert marked[single.files[0].uri] == ISOLATED
    assert set(marked.drop(single.files[0].uri)) == {"JobFailed"}
