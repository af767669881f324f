"""Every status word the pipeline speaks, in one place.

A status written as a string in one module and compared as an enum in another
drifts apart unnoticed; defined here once, each word is spelled in exactly one
line. The codes that say *why* a file was refused or warned about
(``ReasonCode``, ``WarningCode``) stay in ``import_rules.codes``: the local
HealthImaging service (``emulator/``) applies the same rules and shares them,
and it depends on no pipeline module. The choices of a setting (``VerifyMode``)
are ``config.settings``': the settings sit below the pipeline and import
nothing of it.
"""

from __future__ import annotations

from enum import StrEnum


class FileStatus(StrEnum):
    """A file's fate in one run: one per row of the report."""

    IMPORTED = "imported"
    IMPORTED_WITH_WARNINGS = "imported_with_warnings"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    IMPORT_FAILED = "import_failed"
    JOB_FAILED = "job_failed"
    TIMED_OUT = "timed_out"
    # The job COMPLETED but its output could not be read (gone, or not in the
    # documented shape), and the data store does not hold the file either:
    # not known to have failed, not known to be imported (tasks.landed).
    OUTPUT_MISSING = "output_missing"
    # Valid and batched, but nothing was staged or imported (dry run).
    VALIDATED = "validated"
    # In an import job whose output no run has read yet: the run stopped
    # waiting (Ctrl-C) or died; a rerun or retry gets the same job back.
    SUBMITTED = "submitted"
    # The run was stopped before the file's job started: the next run takes it.
    INTERRUPTED = "interrupted"
    # Its job failed for a reason that may pass, max_attempts times (retry).
    GIVEN_UP = "given_up"
    # Imported, but verification found the data store does not hold it as the
    # source has it (tasks.verify): retry_failed imports it again where that
    # replaces the instance, else leaves it to a reconcile decision
    # (tasks.retry_mismatch).
    VERIFY_MISMATCH = "verify_mismatch"
    # Not imported: the data store already holds its SOP instance with the
    # same SHA-256, imported from another file (a copy in another source),
    # named in its error_message (tasks.ledger.instances). Reimport imports it.
    ALREADY_IMPORTED = "already_imported"


class JobStatus(StrEnum):
    """An import job's status: HealthImaging's words, and three of ours."""

    SUBMITTED = "SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    # Ours, not HealthImaging's: we stopped waiting; the job may still finish.
    TIMED_OUT = "TIMED_OUT"
    # Ours: StartDICOMImportJob itself was refused, so there is no job.
    NOT_STARTED = "NOT_STARTED"
    # Ours: the operator stopped the run before the batch's job started: no job.
    INTERRUPTED = "INTERRUPTED"


# The statuses after which HealthImaging never changes a job again.
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})
# HealthImaging's words for a job still running: what a run that stopped
# waiting (Ctrl-C) says of the jobs it leaves, as it last saw them.
RUNNING = frozenset({JobStatus.SUBMITTED, JobStatus.IN_PROGRESS})


class Landing(StrEnum):
    """How a batch's files were sent to the data store (the report's ``landing``)."""

    # An import job: staged to S3, StartDICOMImportJob, its output read.
    JOB = "job"
    # A DICOMweb STOW-RS request: the files in its body, its answer per instance.
    STOW = "stow"


class DatastoreStatus(StrEnum):
    """A data store's status as GetDatastore and ListDatastores give it."""

    CREATING = "CREATING"
    CREATE_FAILED = "CREATE_FAILED"
    ACTIVE = "ACTIVE"
    DELETING = "DELETING"
    DELETED = "DELETED"


class FileValidity(StrEnum):
    """What validation made of a file before anything was uploaded."""

    VALID = "valid"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    # Valid, but the data store already holds its SOP instance with these
    # bytes, imported from another file: not sent again.
    ALREADY_IMPORTED = "already_imported"


class StageAction(StrEnum):
    """What staging did with a valid file."""

    UPLOADED = "uploaded"
    SKIPPED = "skipped"
    FAILED = "failed"
    # Not sent: the operator stopped the run first.
    INTERRUPTED = "interrupted"


class Change(StrEnum):
    """How a file compares with what the ledger recorded for it."""

    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


class Skip(StrEnum):
    """Why an ingestion leaves an unchanged file alone (unless told to reimport)."""

    # Done, or refused for what its bytes are: the same bytes meet the same end.
    SETTLED = "settled"
    # A failure that may pass, tried max_attempts times: retry_failed --force.
    GIVEN_UP = "given_up"


class RetryClass(StrEnum):
    """When a failed file is imported again (tasks.retry_policy decides which)."""

    AUTOMATIC = "automatic"
    IF_CHANGED = "if_changed"
    NEVER = "never"


class JobFailureCause(StrEnum):
    """What a FAILED import job's message blames (tasks.retry_policy reads it)."""

    # The role's access, a quota, an input prefix that is not there: every
    # batch fails alike, so a smaller one would fail too.
    SETUP = "setup"
    # Anything else: a file in the job may be what broke it (a poison file),
    # so retry_failed splits the job's batch to find it.
    CONTENT = "content"


# The error_type of a file alone in a job that FAILED for its content: a
# retry's split found it is what broke its batch's job. Retried only once
# it changed, or when forced, like a file HealthImaging refused.
ISOLATED = "IsolatedPoisonFile"


class ReconcileOutcome(StrEnum):
    """What became of one image set write of a reconciliation."""

    APPLIED = "applied"
    # Refused by HealthImaging, or ended *_FAILED: nothing changed by this write.
    FAILED = "failed"


class DecisionOutcome(StrEnum):
    """What became of one operator decision of a reconciliation."""

    PLANNED = "planned"
    APPLIED = "applied"
    FAILED = "failed"
    # The run was stopped (Ctrl-C) before it: nothing of it was done.
    NOT_STARTED = "not_started"


class DecisionAction(StrEnum):
    """What an operator decides for a non-primary image set (dicom-reconcile)."""

    PROMOTE = "promote"
    MERGE = "merge"


class ImageSetState(StrEnum):
    """An image set's ``imageSetState`` (HealthImaging's)."""

    ACTIVE = "ACTIVE"
    LOCKED = "LOCKED"
    DELETED = "DELETED"


class Verification(StrEnum):
    """What verification found for one file (tasks.verify)."""

    VERIFIED = "verified"
    # The data store holds the instance, but something differs from the source.
    MISMATCH = "mismatch"
    # The image set the import named, or the instance in it, is not there.
    MISSING = "missing"
    # Not imported, verification off, or the source could not be read.
    NOT_CHECKED = "not_checked"


class Liveness(StrEnum):
    """A migration's ingest run, as the migration sees it (tasks.child_runs)."""

    # Asked for, not yet running on a worker (or crashed before it could start).
    WAITING = "waiting"
    LIVE = "live"
    FINISHED = "finished"
    # Its process is gone, or it stopped beating: its files go to the others.
    DEAD = "dead"


class ListingState(StrEnum):
    """A listed file no run has recorded an outcome for since the listing
    (counted beside the file statuses of a migration's inventory)."""

    UNFINISHED = "unfinished"
