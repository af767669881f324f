"""Which failures are tried again, and how: the one statement of the policy.

Both the ingestion's claim (skip an unchanged file, or take it again) and
retry_failed (which files to import again) decide by it, so that an
ingestion never retries what a retry would refuse, nor the other way round.
The ledger stores outcomes; it asks this module what they mean.
"""

from __future__ import annotations

import re

from tasks.statuses import ISOLATED, FileStatus, JobFailureCause, RetryClass, Skip

# import_failed rows whose error_type says the service (or our own staging or
# output reading) failed, not the file: the same bytes may well succeed later.
SERVER_ERROR_TYPES = frozenset(
    {"InternalServerException", "StagingError", "ManifestError", "MissingFromOutput",
     "NotBatched"}
)
# A FAILED job's message that blames what every batch shares (HealthImaging's
# and the local service's words): access to the input or output, a quota, an
# input prefix that is not there.
_SETUP_FAILURE = re.compile(
    r"access|denied|forbidden|not authori[sz]ed|permission|assume ?role|quota|"
    r"unable to (list|write)|no such (bucket|key)|does not exist|not found",
    re.IGNORECASE,
)
# Outcomes after which an unchanged file needs nothing from an ingestion run:
# done, or refused for a reason the same bytes will meet again, or waiting for
# retry_failed (which counts attempts). A dry run's ``validated`` is not done.
SETTLED = frozenset(
    {FileStatus.IMPORTED.value, FileStatus.IMPORTED_WITH_WARNINGS.value,
     FileStatus.INVALID.value, FileStatus.DUPLICATE.value, FileStatus.IMPORT_FAILED.value,
     FileStatus.JOB_FAILED.value, FileStatus.TIMED_OUT.value, FileStatus.OUTPUT_MISSING.value,
     FileStatus.GIVEN_UP.value, FileStatus.VERIFY_MISMATCH.value,
     FileStatus.ALREADY_IMPORTED.value}
)


def retry_class(status: str | None, error_type: str | None) -> RetryClass:
    """``output_missing``, ``job_failed`` and ``timed_out`` are automatic, but
    retry_failed first looks the file up in the data store (tasks.landed) and
    imports only what is not there. A file isolated in a FAILED job of its own
    (``ISOLATED``) would break the next one alike."""
    if status == FileStatus.JOB_FAILED and error_type == ISOLATED:
        return RetryClass.IF_CHANGED
    if status in {FileStatus.JOB_FAILED, FileStatus.TIMED_OUT, FileStatus.OUTPUT_MISSING,
                  FileStatus.VERIFY_MISMATCH}:
        return RetryClass.AUTOMATIC
    if status == FileStatus.IMPORT_FAILED:
        return RetryClass.AUTOMATIC if error_type in SERVER_ERROR_TYPES else RetryClass.IF_CHANGED
    if status in {FileStatus.INVALID, FileStatus.DUPLICATE, FileStatus.GIVEN_UP}:
        return RetryClass.IF_CHANGED
    return RetryClass.NEVER


# Settled outcomes that some retry may take again: what retry_failed looks for.
RETRYABLE = frozenset(s for s in SETTLED if retry_class(s, None) is not RetryClass.NEVER)


def skip_when_unchanged(
    status: str | None, error_type: str | None, attempts: int, max_attempts: int
) -> Skip | None:
    """Whether a run (unless told to reimport) leaves an unchanged file alone.

    A failure that may pass with the same bytes (a FAILED job, a server
    error, a job nobody waited for to the end) is taken again: its next job
    gets a new client token (tasks.import_jobs), and a job still running is
    got back by its old one, so nothing is imported twice.
    """
    if status not in SETTLED:
        return None
    if retry_class(status, error_type) is not RetryClass.AUTOMATIC:
        return Skip.SETTLED
    return Skip.GIVEN_UP if attempts >= max_attempts else None


def job_failure_cause(message: str | None) -> JobFailureCause:
    """Whether a FAILED job's batch is worth splitting: not when the message
    blames access, a quota or the input prefix, which every part would meet
    again. Anything else (an internal error included: that is how a file that
    breaks the importer shows) may be one file's doing."""
    if message and _SETUP_FAILURE.search(message):
        return JobFailureCause.SETUP
    return JobFailureCause.CONTENT
