"""One settings class for the whole tool: env vars (prefix ``DICOM_IMPORT_``) and an
optional TOML file (``DICOM_IMPORT_CONFIG`` or ``./dicom-import.toml``).

AWS endpoints and credentials are deliberately *not* here: they come from the
standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL_MEDICAL_IMAGING``, ``AWS_REGION``...) so that the same
environment drives boto3, s3fs and the AWS CLI alike.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from platformdirs import user_data_path
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class VerifyMode(StrEnum):
    """How much a run proves of what it imported."""

    # One GetImageSetMetadata per image set: instance present, attributes, frames.
    METADATA = "metadata"
    # Also every source frame decoded and its CRC-32 compared with HealthImaging's.
    PIXELS = "pixels"
    OFF = "off"


class LandingMode(StrEnum):
    """How a run's valid files reach the data store."""

    # Staged to S3, then an import job per batch: built for throughput.
    JOB = "job"
    # Sent with DICOMweb STOW-RS, a study at a time, from the source: built
    # for latency (no staging, no job to wait for).
    STOW = "stow"
    # STOW-RS for a delivery under the stow_auto_* thresholds, jobs otherwise.
    AUTO = "auto"


# AWS's limit on one STOW-RS request body.
STOW_REQUEST_MAX_MB = 1000


APP_NAME = "dicom-import"


def default_report_location() -> str:
    """The reports folder in this user's data folder (on Linux
    ``$XDG_DATA_HOME/dicom-import/reports``, else ``~/.local/share/...``):
    one place whatever folder a command runs from, since the SQLite ledger
    lives there and a ledger per working folder forgets every earlier run."""
    return str(user_data_path(APP_NAME, appauthor=False) / "reports")


def settings_file() -> Path:
    return Path(os.environ.get("DICOM_IMPORT_CONFIG", "dicom-import.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DICOM_IMPORT_", extra="ignore")

    region: str = Field(default="us-east-1", description="AWS region of the data store.")
    datastore: str | None = Field(default=None, description="Data store ID or name.")
    create_datastore: bool = Field(
        default=False,
        description="Create the data store when no data store has the name given; off, "
        "a name that matches none is refused (a typo would otherwise make a new store).",
    )
    staging_prefix: str | None = Field(
        default=None, description="s3:// prefix where valid files are staged for import."
    )
    output_prefix: str | None = Field(
        default=None, description="s3:// prefix where HealthImaging writes job output."
    )
    import_role_arn: str = Field(
        default="arn:aws:iam::123456789012:role/HealthImagingImportRole",
        description="IAM role HealthImaging assumes to read input and write output.",
    )
    report_location: str = Field(
        default_factory=default_report_location,
        description="Folder or s3:// prefix for the reports (and, when a folder, the ledger); "
        "default: reports in this user's data folder.",
    )
    max_files_per_job: int = Field(default=5000, ge=1, le=5000)
    max_bytes_per_job: int = Field(default=10 * 1000**3, ge=1)
    max_concurrent_jobs: int = Field(default=20, ge=1, le=100)
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    poll_timeout_seconds: float = Field(default=6 * 3600.0, gt=0)
    validation_workers: int | None = Field(
        default=None, description="Processes for validation; default: one per core."
    )
    stage_concurrency: int = Field(default=16, ge=1)
    window_files: int = Field(
        default=10_000, ge=1,
        description="Files a run takes from its source at a time: what it holds in memory.",
    )
    dask_address: str | None = Field(
        default=None, description="tcp://host:8786 of a Dask scheduler; local when unset."
    )
    ledger_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the ingestion ledger; SQLite under the report "
        "location when unset.",
    )
    schedule_source: str | None = Field(
        default=None,
        description="Folder or s3:// prefix the scheduled ingestion reads (its landing zone); "
        "`dicom-import serve` serves the scheduled deployment only when this is set.",
    )
    schedule_cron: str = Field(default="0 2 * * *", description="Scheduled ingestion cron.")
    schedule_timezone: str = Field(default="UTC")
    max_attempts: int = Field(
        default=3, ge=1, description="Import jobs a file may be in before retry_failed gives up."
    )
    verify: VerifyMode = Field(
        default=VerifyMode.METADATA,
        description="What an ingestion checks of what it imported: metadata, pixels or off.",
    )
    reimport: bool = Field(
        default=False,
        description="Import again files the ledger holds unchanged (same size and version, "
        "or same SHA-256) and SOP instances the data store holds with the same SHA-256. "
        "Off: a rerun imports only what is new or changed.",
    )
    landing: LandingMode = Field(
        default=LandingMode.JOB,
        description="How valid files reach the data store: job (staged to S3, import jobs), "
        "stow (DICOMweb STOW-RS from the source) or auto (STOW-RS for small deliveries).",
    )
    stow_request_mb: int = Field(
        default=50, ge=1, le=STOW_REQUEST_MAX_MB,
        description="Largest STOW-RS request body, in MB (10^6 bytes; AWS takes at most 1 GB).",
    )
    stow_concurrency: int = Field(
        default=4, ge=1, le=64,
        description="STOW-RS requests in flight at once, on kept-alive connections.",
    )
    stow_auto_max_files: int = Field(
        default=1000, ge=0,
        description="With landing auto: a delivery of at most this many valid files (and at "
        "most stow_auto_max_mb) goes by STOW-RS, a larger one by import jobs.",
    )
    stow_auto_max_mb: int = Field(
        default=1000, ge=0,
        description="With landing auto: the most MB (10^6 bytes) a delivery sent by STOW-RS "
        "may hold.",
    )
    claim_lease_seconds: float = Field(
        default=12 * 3600.0,
        gt=0,
        description="How long a run's claim on a file lasts at most (a run renews its "
        "claims after staging). Keep it above the longest run.",
    )
    run_presumed_dead_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A run beats five times in this period while it holds claims; one "
        "that has not beaten for this long (killed outright) is presumed dead, and its "
        "files go to the next run.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=settings_file()),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
