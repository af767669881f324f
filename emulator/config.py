"""Settings of the local service: quotas, timings and identity. All of them
are adjustable because the published AWS values are adjustable too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Credentials:
    """The one key pair the service accepts under ``--credentials``."""

    access_key: str
    secret_key: str

    @classmethod
    def parse(cls, text: str) -> Credentials:
        access_key, sep, secret_key = text.partition(":")
        if not sep or not access_key or not secret_key:
            raise ValueError("credentials must be KEY:SECRET, both non-empty")
        return cls(access_key, secret_key)


# What clients are told to use when any key is accepted.
LOCAL_CREDENTIALS = Credentials("local", "local")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ServiceConfig:
    region: str = "us-east-1"
    account_id: str = "123456789012"
    max_files_per_job: int = 5000
    max_bytes_per_job: int = 10 * 1000**3
    max_bytes_per_file: int = 10 * 1000**3
    max_concurrent_jobs: int = 100
    max_datastores: int = 100
    import_workers: int = 4
    # On stop, how long running imports may go on before they end FAILED.
    stop_grace_seconds: float = 3.0
    # CREATING -> ACTIVE and DELETING -> DELETED of a data store.
    datastore_transition_seconds: float = 0.2
    # How long an image set stays LOCKED during Update/Copy/Delete.
    write_seconds: float = 0.1
    # Image set write quotas (behaviour doc §3.4).
    max_concurrent_writes: int = 100
    max_copy_frames: int = 1000
    max_update_payload_bytes: int = 10 * 1024
    # A STOW-RS request's body (AWS: "up to 1GB of DICOM data per request").
    max_stow_request_bytes: int = 1000**3
    # Where import jobs read and write S3; None means this service's own endpoint.
    s3_endpoint: str | None = None
    # Store frames as HTJ2K lossless (AWS behaviour). Off keeps the source
    # bytes, to measure what transcoding costs.
    transcode_htj2k: bool = True
    # None: any signed request is accepted, whatever its key (local stacks'
    # custom). Given: signatures are verified against this one pair.
    credentials: Credentials | None = None
    # How long a connection may sit idle (between requests, or with a request
    # half sent) before the service closes it.
    idle_timeout_seconds: float = 60.0
    # Web origins allowed to read answers (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    # The service's clock for image set timestamps and storage tiers: replace
    # it (also on a running service) to move time, e.g. 31 days ahead.
    clock: Callable[[], datetime] = utc_now
