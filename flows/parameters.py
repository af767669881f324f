"""The ingest flow's parameters: one model, so the Prefect UI renders one form
with a description per field, and defaults come from the settings of the
machine that runs the flow (env ``DICOM_IMPORT_*`` or ``dicom-import.toml``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from config.settings import LandingMode, VerifyMode, get_settings
from tasks.locations import canonical_source, is_s3


def _verify_field() -> Any:
    """One field, the same for ingestion and retries: a retry checks what it imports."""
    return Field(
        # Validated: the setting is text, and "off" must become VerifyMode.OFF.
        default_factory=_setting("verify"), validate_default=True,
        description="What to check of the imported files once their jobs ended: metadata "
        "(each image set's metadata read once: instance, attributes, frames), pixels (also "
        "every source frame decoded and its CRC-32 compared with HealthImaging's), or off.",
    )


def _setting(name: str) -> Any:
    return lambda: getattr(get_settings(), name)


# Ingestion's and a migration's, worded once: the form says the same in both.
REIMPORT = (
    "Import again the files an earlier run already handled and that have not changed since "
    "(same size and ETag/mtime, or same SHA-256), and files whose SOP instance the data store "
    "already holds with the same SHA-256, imported from another source. Off (the default): "
    "they are skipped and counted, and only new and changed files are imported."
)


def _create_datastore() -> Any:
    """The field of the flows that may begin a data store (ingest, migrate)."""
    return Field(
        default_factory=_setting("create_datastore"),
        description="Create the data store when no data store has the name given. Off: such "
        "a name is refused (a typo would otherwise make a new store and import into it).",
    )


class ImportOptions(BaseModel):
    """Where files go and within which limits: shared by ingestion and retries,
    so both forms in the UI read the same."""

    source: str | None = Field(
        default=None,
        description="Only files found under this folder or s3://bucket/prefix; all when empty.",
    )
    datastore: str | None = Field(
        default_factory=_setting("datastore"),
        description="HealthImaging data store ID (32 hex) or name. A name that matches no "
        "data store is refused, with the closest names; ingestion and migration create it "
        "when asked to.",
    )
    staging_prefix: str | None = Field(
        default_factory=_setting("staging_prefix"),
        description="s3:// prefix where valid files are copied, one folder per import job.",
    )
    output_prefix: str | None = Field(
        default_factory=_setting("output_prefix"),
        description="s3:// prefix where HealthImaging writes each job's output.",
    )
    import_role_arn: str = Field(
        default_factory=_setting("import_role_arn"),
        description="IAM role HealthImaging assumes to read the staged files and write output.",
    )
    report_location: str = Field(
        default_factory=_setting("report_location"),
        description="Folder or s3:// prefix for the per-file and per-job reports.",
    )
    max_files_per_job: int = Field(
        default_factory=_setting("max_files_per_job"), ge=1, le=5000,
        description="Files per import job (HealthImaging quota: 5,000).",
    )
    max_bytes_per_job: int = Field(
        default_factory=_setting("max_bytes_per_job"), ge=1,
        description="Bytes per import job (HealthImaging quota: 10 GB).",
    )
    max_concurrent_jobs: int = Field(
        default_factory=_setting("max_concurrent_jobs"), ge=1, le=100,
        description="Import jobs running at once (HealthImaging quota: 100 per data store).",
    )
    poll_interval_seconds: float = Field(
        default_factory=_setting("poll_interval_seconds"), gt=0,
        description="Shortest wait between job status checks. Later checks come every 2% "
        "of the time waited (at most every 2 minutes), so a finished job is noticed, and its "
        "slot reused, within about 2% of its run time.",
    )
    poll_timeout_seconds: float = Field(
        default_factory=_setting("poll_timeout_seconds"), gt=0,
        description="Stop waiting for a job after this long and report its files as timed_out.",
    )
    validation_workers: int | None = Field(
        default_factory=_setting("validation_workers"), ge=1,
        description="Processes that validate files; default one per core.",
    )
    stage_concurrency: int = Field(
        default_factory=_setting("stage_concurrency"), ge=1,
        description="Parallel uploads while staging.",
    )
    window_files: int = Field(
        default_factory=_setting("window_files"), ge=1,
        description="Files taken from the source at a time: validated, staged, imported and "
        "reported together. Memory follows this, not the size of the source; import job slots "
        "are shared across windows.",
    )
    dask_address: str | None = Field(
        default_factory=_setting("dask_address"),
        description="Address of a Dask scheduler (tcp://host:8786): validation and staging "
        "run on its workers. Empty: on the machine that runs the flow.",
    )
    max_attempts: int = Field(
        default_factory=_setting("max_attempts"), ge=1,
        description="Import jobs a file may have been in: past this, a file whose job failed "
        "is no longer imported again by itself (reported given_up; retry with force does).",
    )
    landing: LandingMode = Field(
        default_factory=_setting("landing"), validate_default=True,
        description="How valid files reach the data store: job (staged under the staging "
        "prefix, then import jobs), stow (DICOMweb STOW-RS requests read from the source: "
        "needs no staging or output prefix), or auto (STOW-RS for a small delivery, jobs "
        "otherwise; the stow_auto_* settings).",
    )
    include_phi: bool = Field(
        default=False,
        description="Add patient name, ID and birth date to the report files. Off by default: "
        "they are protected health information.",
    )

    def imports(self) -> bool:
        return True

    @field_validator("source", check_fields=False)
    @classmethod
    def _one_spelling(cls, source: str | None) -> str | None:
        return canonical_source(source) if source else source

    @model_validator(mode="after")
    def _import_needs_locations(self) -> ImportOptions:
        if self.imports():
            # STOW-RS alone reads the files from the source: no S3 locations.
            needed = (("datastore",) if self.landing is LandingMode.STOW
                      else ("datastore", "staging_prefix", "output_prefix"))
            missing = [name for name in needed if not getattr(self, name)]
            if missing:
                dry_run = " (or set dry_run)" if "dry_run" in type(self).model_fields else ""
                raise ValueError(f"{', '.join(missing)} must be set to import{dry_run}.")
            for name in ("staging_prefix", "output_prefix"):
                if getattr(self, name) and not is_s3(str(getattr(self, name))):
                    raise ValueError(f"{name} must be an s3:// URI.")
        return self


class IngestParameters(ImportOptions):
    source: str = Field(
        description="Folder or s3://bucket/prefix holding the DICOM files (read recursively)."
    )
    create_datastore: bool = _create_datastore()
    reimport: bool = Field(
        default_factory=_setting("reimport"),
        description=REIMPORT,
    )
    dry_run: bool = Field(
        default=False,
        description="Discover, validate and batch only: no upload, no import, report only.",
    )
    inventory: str | None = Field(
        default=None,
        description="Set by a migration: the ID of the listing of the source it made, which "
        "this run shares with the migration's other runs. Empty: the run lists the source itself.",
        json_schema_extra={"set_by_flows": True},
    )
    verify: VerifyMode = _verify_field()

    def imports(self) -> bool:
        return not self.dry_run


class RetryParameters(ImportOptions):
    """Which failed files to import again. With neither a run nor a job, every
    retryable file of the data store."""

    run_id: str | None = Field(
        default=None,
        description="Only files that failed in this flow run (its ID in the Prefect UI).",
    )
    job_id: str | None = Field(
        default=None, description="Only files of this HealthImaging import job.",
    )
    force: bool = Field(
        default=False,
        description="Also files that failed validation or with a customer error although "
        "they have not changed, and files past the attempt limit.",
    )
    verify: VerifyMode = _verify_field()


class ReconcileParameters(BaseModel):
    """An operator's decisions about non-primary image sets, and whether to
    carry them out or only say what they would do."""

    decisions: str = Field(
        description="JSON file (path or s3:// URI): a non-primary image set ID -> "
        '{"action": "promote" | "merge", "corrections": {"Keyword": value}, "force": false, '
        '"version": "N"} for each image set to reconcile.',
    )
    datastore: str | None = Field(
        default_factory=_setting("datastore"),
        description="HealthImaging data store ID (32 hex) or name.",
    )
    report_location: str = Field(
        default_factory=_setting("report_location"),
        description="Folder beside which the ledger is (ledger.sqlite), unless "
        "DICOM_IMPORT_LEDGER_URL names it: every change is recorded there.",
    )
    apply: bool = Field(
        default=False,
        description="Carry the decisions out. Without it, a dry run: prints what each would "
        "do and changes nothing.",
    )
    write_timeout_seconds: float = Field(
        default=600.0, gt=0,
        description="How long to wait for each image set write (they are asynchronous) "
        "to finish before giving up on that image set.",
    )

    @model_validator(mode="after")
    def _needs_datastore(self) -> ReconcileParameters:
        if not self.datastore:
            raise ValueError("datastore must be set.")
        return self


class VerifyParameters(BaseModel):
    """Which imported files to verify: a run's, a job's, or every file the
    ledger says was imported from a source into a data store."""

    run: str | None = Field(
        default=None, description="Files imported by this flow run (its ID in the Prefect UI).",
    )
    job: str | None = Field(default=None, description="Files of this HealthImaging import job.")
    datastore: str | None = Field(
        default=None,
        description="With --source: every file the ledger says was imported from the source "
        "into this data store (ID or name), and a signed-off verification record.",
    )
    source: str | None = Field(
        default=None, description="Folder or s3://bucket/prefix the files were imported from.",
    )
    mode: VerifyMode = Field(
        default=VerifyMode.METADATA,
        description="metadata (each image set's metadata read once: instance, attributes, "
        "frames) or pixels (also every source frame decoded and its CRC-32 compared with "
        "HealthImaging's).",
    )
    report_location: str = Field(
        default_factory=_setting("report_location"),
        description="The report location the imports used: the ledger is there (unless "
        "DICOM_IMPORT_LEDGER_URL is set), and the verification report goes below it.",
    )
    output: str | None = Field(
        default=None,
        description="Folder or s3:// prefix for the verification report (default: "
        "<report location>/verification/<time>).",
    )
    validation_workers: int | None = Field(
        default_factory=_setting("validation_workers"), ge=1,
        description="Processes that read (and with pixels, decode) the source files; "
        "default one per core.",
    )
    dask_address: str | None = Field(
        default_factory=_setting("dask_address"),
        description="Address of a Dask scheduler: the source files are read on its workers.",
    )

    @field_validator("source")
    @classmethod
    def _one_spelling(cls, source: str | None) -> str | None:
        return canonical_source(source) if source else source

    @model_validator(mode="after")
    def _one_selection(self) -> VerifyParameters:
        chosen = [bool(self.run), bool(self.job), bool(self.datastore)]
        if sum(chosen) != 1:
            raise ValueError("give one of run, job, or datastore with source.")
        if bool(self.datastore) != bool(self.source) and not (self.run or self.job):
            raise ValueError("datastore and source go together.")
        if self.mode is VerifyMode.OFF:
            raise ValueError("mode must be metadata or pixels.")
        return self


class MigrateParameters(ImportOptions):
    """One source, many flow runs: the migration fills an inventory once, then
    runs ``workers`` copies of the ingest deployment on its work pool, each
    claiming windows of that inventory until none are left."""

    source: str = Field(
        description="Folder or s3://bucket/prefix to migrate (read recursively, once)."
    )
    create_datastore: bool = _create_datastore()
    workers: int = Field(
        default=2, ge=1, le=100,
        description="Ingest flow runs started at once on the work pool, each claiming "
        "windows of files until none are left.",
    )
    ingest_deployment: str = Field(
        default="dicom-ingest/manual",
        description="The ingest deployment (flow/deployment) the migration runs, whose "
        "work pool and workers do the work.",
    )
    max_jobs_in_flight: int | None = Field(
        default=None, ge=1, le=100,
        description="Import jobs in flight into the data store across every run and worker "
        "(a Prefect concurrency limit named after the data store). Empty: the limit as it "
        "stands, created at 100 (HealthImaging's quota) when missing.",
    )
    reimport: bool = Field(
        default_factory=_setting("reimport"),
        description=REIMPORT,
    )
    replacements: int = Field(
        default=3, ge=0,
        description="Ingest runs started in place of ones that died (crashed, or their worker "
        "was killed) while files were left, at most.",
    )
    start_timeout_seconds: float = Field(
        default=600.0, gt=0,
        description="Give up when no ingest run has started this long after being asked "
        "for (no worker is polling the deployment's work pool).",
    )
    check_interval_seconds: float = Field(
        default=10.0, gt=0,
        description="How often the migration looks at its ingest runs and what is left.",
    )
