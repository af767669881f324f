"""Data store and import job records, and the status changes each may make
(image sets' too: their records are the repository's dicts).

Every status change goes through ``advance``, checked against one table per
kind (moto's ``ManagedState`` keeps its transitions the same way), so a
change the service never makes on AWS fails loudly here instead of showing
up on the wire. A data store's own changes (CREATING -> ACTIVE, DELETING ->
DELETED) are not run by a timer: the record keeps when the change is due and
``settle`` applies it whenever the record is read, so a data store is ACTIVE
once its time has passed however many others are changing at once.

Records are stored with the wire's member names (plus when a change is due),
so a data directory written before these classes reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class IllegalTransition(RuntimeError):
    """A status change the table does not allow: a bug in the service."""


DATASTORE_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "CREATING": ("ACTIVE",),
    "ACTIVE": ("DELETING",),
    "DELETING": ("DELETED",),
}
# The data store changes that happen by themselves, after
# ``ServiceConfig.datastore_transition_seconds``.
DATASTORE_TIMED: dict[str, str] = {"CREATING": "ACTIVE", "DELETING": "DELETED"}

JOB_TRANSITIONS: dict[str, tuple[str, ...]] = {
    # FAILED straight from SUBMITTED: a queued job when the service stops.
    "SUBMITTED": ("IN_PROGRESS", "FAILED"),
    "IN_PROGRESS": ("COMPLETED", "FAILED"),
}
RUNNING_JOB_STATES = ("SUBMITTED", "IN_PROGRESS")

# An image set's (imageSetState, imageSetWorkflowStatus).
ImageSetStatus = tuple[str, str]
_WRITES_ON_AN_ACTIVE_SET: tuple[ImageSetStatus, ...] = (
    ("ACTIVE", "IMPORTED"),  # an import adding instances
    ("LOCKED", "UPDATING"),
    ("LOCKED", "COPYING"),  # the destination of a copy
    ("LOCKED", "COPYING_WITH_READ_ONLY_ACCESS"),  # the source of a copy
    ("LOCKED", "DELETING"),
)
# None is a set not written yet: an import creates it, or a copy.
IMAGE_SET_TRANSITIONS: dict[ImageSetStatus | None, tuple[ImageSetStatus, ...]] = {
    None: (("ACTIVE", "IMPORTED"), ("LOCKED", "COPYING")),
    **dict.fromkeys(
        [("ACTIVE", "IMPORTED"), ("ACTIVE", "UPDATED"), ("ACTIVE", "COPIED")],
        _WRITES_ON_AN_ACTIVE_SET,
    ),
    ("LOCKED", "UPDATING"): (("ACTIVE", "UPDATED"),),
    ("LOCKED", "COPYING"): (("ACTIVE", "COPIED"),),
    ("LOCKED", "COPYING_WITH_READ_ONLY_ACCESS"): (("ACTIVE", "COPIED"),),
    ("LOCKED", "DELETING"): (("DELETED", "DELETED"),),
}
# A write leaves its sets LOCKED; each ends by itself, after
# ``ServiceConfig.write_seconds``, as the one change its LOCKED status allows.
IMAGE_SET_WRITE_ENDS: dict[ImageSetStatus, ImageSetStatus] = {
    status: changes[0]
    for status, changes in IMAGE_SET_TRANSITIONS.items()
    if status is not None and status[0] == "LOCKED"
}


def _checked(kind: str, table: Mapping[K, tuple[V, ...]], current: K, new: V) -> V:
    if new not in table.get(current, ()):
        raise IllegalTransition(f"{kind} cannot go from {current} to {new}")
    return new


def checked_image_set_change(current: ImageSetStatus | None, new: ImageSetStatus) -> None:
    """Refuse an image set change the table does not allow (``current``
    None: the set is being created)."""
    _checked("An image set", IMAGE_SET_TRANSITIONS, current, new)


@dataclass
class Datastore:
    datastore_id: str
    name: str | None
    status: str
    arn: str
    kms_key_arn: str
    lambda_authorizer_arn: str | None
    lossless_storage_format: str
    created_at: float
    updated_at: float
    # When the status's own change (DATASTORE_TIMED) is due, epoch seconds.
    # None on a record stored before it was kept: due at once, as a restart
    # used to finish such changes straight away.
    due_at: float | None = None

    def advance(self, status: str, now: float, delay: float | None = None) -> None:
        """Move to ``status``; ``delay`` says when its own change is due."""
        self.status = _checked("A data store", DATASTORE_TRANSITIONS, self.status, status)
        self.updated_at = now
        self.due_at = now + delay if delay is not None else None

    def settle(self, now: float) -> bool:
        """Apply the change that is due by ``now``; True when the status moved."""
        nxt = DATASTORE_TIMED.get(self.status)
        if nxt is None or (self.due_at is not None and self.due_at > now):
            return False
        self.advance(nxt, self.due_at if self.due_at is not None else now)
        return True

    def to_wire(self) -> dict[str, Any]:
        """GetDatastore's ``datastoreProperties``."""
        return {
            "datastoreId": self.datastore_id,
            "datastoreName": self.name,
            "datastoreStatus": self.status,
            "datastoreArn": self.arn,
            "kmsKeyArn": self.kms_key_arn,
            "lambdaAuthorizerArn": self.lambda_authorizer_arn,
            "losslessStorageFormat": self.lossless_storage_format,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }

    def to_summary(self) -> dict[str, Any]:
        """ListDatastores' summary: no keys, authorizer or storage format."""
        keep = ("datastoreId", "datastoreName", "datastoreStatus", "datastoreArn",
                "createdAt", "updatedAt")
        wire = self.to_wire()
        return {key: wire[key] for key in keep}

    def to_record(self) -> dict[str, Any]:
        return {**self.to_wire(), "transitionDueAt": self.due_at}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Datastore:
        return cls(
            datastore_id=record["datastoreId"],
            name=record.get("datastoreName"),
            status=record["datastoreStatus"],
            arn=record["datastoreArn"],
            kms_key_arn=record["kmsKeyArn"],
            lambda_authorizer_arn=record.get("lambdaAuthorizerArn"),
            lossless_storage_format=record["losslessStorageFormat"],
            created_at=record["createdAt"],
            updated_at=record["updatedAt"],
            due_at=record.get("transitionDueAt"),
        )


@dataclass
class ImportJob:
    job_id: str
    job_name: str | None
    status: str
    datastore_id: str
    data_access_role_arn: str
    input_s3_uri: str
    # Where the job writes: the requested URI with the job's own folder added.
    output_s3_uri: str
    requested_output_s3_uri: str
    input_owner_account_id: str | None
    import_configuration: dict[str, Any] | None
    submitted_at: float
    ended_at: float | None = None
    message: str | None = None

    @property
    def running(self) -> bool:
        return self.status in RUNNING_JOB_STATES

    def advance(self, status: str) -> None:
        self.status = _checked("An import job", JOB_TRANSITIONS, self.status, status)

    def end(self, status: str, now: float, message: str | None) -> None:
        self.advance(status)
        self.ended_at = now
        self.message = message

    def to_start_response(self) -> dict[str, Any]:
        """StartDICOMImportJob's response; a repeated start gets the status
        the job has now."""
        return {
            "datastoreId": self.datastore_id,
            "jobId": self.job_id,
            "jobStatus": self.status,
            "submittedAt": self.submitted_at,
        }

    def to_summary(self) -> dict[str, Any]:
        """ListDICOMImportJobs' summary: no S3 URIs, as on AWS."""
        return {
            "jobId": self.job_id,
            "jobName": self.job_name,
            "jobStatus": self.status,
            "datastoreId": self.datastore_id,
            "dataAccessRoleArn": self.data_access_role_arn,
            "endedAt": self.ended_at,
            "submittedAt": self.submitted_at,
            "message": self.message,
        }

    def to_wire(self) -> dict[str, Any]:
        """GetDICOMImportJob's ``jobProperties``."""
        return {
            **self.to_summary(),
            "inputS3Uri": self.input_s3_uri,
            "outputS3Uri": self.output_s3_uri,
            "importConfiguration": self.import_configuration,
        }

    def to_record(self) -> dict[str, Any]:
        return {
            **self.to_wire(),
            "requestedOutputS3Uri": self.requested_output_s3_uri,
            "inputOwnerAccountId": self.input_owner_account_id,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ImportJob:
        return cls(
            job_id=record["jobId"],
            job_name=record.get("jobName"),
            status=record["jobStatus"],
            datastore_id=record["datastoreId"],
            data_access_role_arn=record["dataAccessRoleArn"],
            input_s3_uri=record["inputS3Uri"],
            output_s3_uri=record["outputS3Uri"],
            requested_output_s3_uri=record["requestedOutputS3Uri"],
            input_owner_account_id=record.get("inputOwnerAccountId"),
            import_configuration=record.get("importConfiguration"),
            submitted_at=record["submittedAt"],
            ended_at=record.get("endedAt"),
            message=record.get("message"),
        )
