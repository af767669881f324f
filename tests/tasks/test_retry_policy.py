"""The retry policy, stated once: which failures an ingestion takes again by
itself, which wait for changed bytes, and when it gives up."""

from __future__ import annotations

import pytest

from tasks.retry_policy import (
    RETRYABLE,
    SETTLED,
    job_failure_cause,
    retry_class,
    skip_when_unchanged,
)
from tasks.statuses import ISOLATED, FileStatus, JobFailureCause, RetryClass, Skip


@pytest.mark.parametrize(("status", "error_type", "expected"), [
    (FileStatus.JOB_FAILED, None, RetryClass.AUTOMATIC),
    (FileStatus.JOB_FAILED, "JobFailed", RetryClass.AUTOMATIC),
    (FileStatus.JOB_FAILED, ISOLATED, RetryClass.IF_CHANGED),
    (FileStatus.TIMED_OUT, None, RetryClass.AUTOMATIC),
    (FileStatus.OUTPUT_MISSING, None, RetryClass.AUTOMATIC),
    (FileStatus.IMPORT_FAILED, "InternalServerException", RetryClass.AUTOMATIC),
    (FileStatus.IMPORT_FAILED, "StagingError", RetryClass.AUTOMATIC),
    (FileStatus.IMPORT_FAILED, "InvalidDicomError", RetryClass.IF_CHANGED),
    (FileStatus.INVALID, None, RetryClass.IF_CHANGED),
    (FileStatus.DUPLICATE, None, RetryClass.IF_CHANGED),
    (FileStatus.GIVEN_UP, None, RetryClass.IF_CHANGED),
    (FileStatus.IMPORTED, None, RetryClass.NEVER),
    (FileStatus.VALIDATED, None, RetryClass.NEVER),
    (None, None, RetryClass.NEVER),
])
def test_the_kind_of_failure_decides_the_retry(
    status: FileStatus | None, error_type: str | None, expected: RetryClass
) -> None:
    assert retry_class(status, error_type) is expected


def test_an_unchanged_file_is_skipped_unless_its_failure_may_pass() -> None:
    assert skip_when_unchanged(FileStatus.IMPORTED, None, 1, 3) is Skip.SETTLED
    assert skip_when_unchanged(FileStatus.INVALID, None, 0, 3) is Skip.SETTLED
    assert skip_when_unchanged(FileStatus.JOB_FAILED, None, 2, 3) is None
    assert skip_when_unchanged(FileStatus.JOB_FAILED, None, 3, 3) is Skip.GIVEN_UP
    # A dry run's outcome and a file still in a job settle nothing.
    assert skip_when_unchanged(FileStatus.VALIDATED, None, 0, 3) is None
    assert skip_when_unchanged(FileStatus.SUBMITTED, None, 1, 3) is None


def test_retryable_outcomes_are_the_settled_failures() -> None:
    assert RETRYABLE < SETTLED
    assert FileStatus.IMPORTED not in RETRYABLE
    assert {FileStatus.JOB_FAILED, FileStatus.INVALID, FileStatus.GIVEN_UP} <= RETRYABLE


@pytest.mark.parametrize(("message", "cause"), [
    ("Unable to list the input s3://b/staging/x/: An error occurred (AccessDenied)",
     JobFailureCause.SETUP),
    ("Unable to write the output to s3://b/out/: bucket b is not accessible",
     JobFailureCause.SETUP),
    ("User is not authorized to perform: sts:AssumeRole", JobFailureCause.SETUP),
    ("The import job exceeds the service quota for files", JobFailureCause.SETUP),
    ("The specified bucket does not exist", JobFailureCause.SETUP),
    ("Internal error while importing: the import job could not process its input; "
     "retry the job, or contact AWS Support with the job ID.", JobFailureCause.CONTENT),
    ("Injected failure: the local service was asked to fail this job.",
     JobFailureCause.CONTENT),
    (None, JobFailureCause.CONTENT),
])
def test_a_failed_job_is_split_unless_its_message_blames_the_setup(
    message: str | None, cause: JobFailureCause
) -> None:
    """Access, a quota or a missing input prefix would fail every half alike."""
    assert job_failure_cause(message) is cause
