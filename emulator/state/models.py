"""State and rules of the local HealthImaging service.

Backend methods are named after the boto3 operations in snake_case and take
the request members as keyword arguments (moto's convention); the HTTP layer
in ``responses`` does the wire format. Image set operations live in
``imageset_operations`` (a mixin), data store and import job records and
their status changes in ``records``, the import itself in the worker's
``importer``.

Deviations from AWS are written on the method that deviates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from emulator.config import LOCAL_CREDENTIALS, ServiceConfig
from emulator.faults import FaultInjector
from emulator.state.exceptions import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from emulator.state.imageset_operations import ImageSetOperations
from emulator.state.imagesets import ImageSetRepository, new_id
from emulator.state.pagination import paginate
from emulator.state.records import DATASTORE_TIMED, Datastore, ImportJob
from emulator.state.store import Store
from emulator.state.stored_instances import InstanceOutcome
from emulator.worker import importer, stow

log = logging.getLogger(__name__)

DATASTORE_KIND = "datastore"
JOB_KIND = "job"
TAGS_KIND = "tags"
TOKEN_KIND = "client_token"
# A STOW-RS request between its first write and its answer: what a restart
# finds of it was cut off, and is rolled back.
STOW_KIND = "stow_request"
# How often a job held for an injected duration reads that duration again.
_JOB_DURATION_RECHECK_SECONDS = 0.05


class HealthImagingBackend(ImageSetOperations):
    def __init__(self, config: ServiceConfig, store: Store, faults: FaultInjector) -> None:
        self.config = config
        self.store = store
        self.faults = faults
        self.lock = threading.RLock()
        self.datastores = {k: Datastore.from_record(v) for k, v in store.load(DATASTORE_KIND)}
        self.jobs = {k: ImportJob.from_record(v) for k, v in store.load(JOB_KIND)}
        self.tags: dict[str, dict[str, str]] = {k: v["tags"] for k, v in store.load(TAGS_KIND)}
        self.client_tokens: dict[str, dict[str, Any]] = dict(store.load(TOKEN_KIND))
        self.image_sets = ImageSetRepository(store, lambda: config.clock().timestamp())
        self._import_pool = ThreadPoolExecutor(config.import_workers, "import-job")
        # Set once a stopping service's grace period is over: running imports
        # end at their next frame (importer.ImportStopped).
        self.imports_cancelled = threading.Event()
        self._accepting_imports = True
        self._s3_lock = threading.Lock()
        self._s3: Any = None
        self.s3_endpoint: str | None = config.s3_endpoint
        # No endpoint given: S3 is moto in this process, on the service's own
        # endpoint (the embedded default).
        self.s3_in_process = config.s3_endpoint is None
        self._recover()

    # -- plumbing -----------------------------------------------------------
    def _save(self, kind: str, record_id: str, record: dict[str, Any]) -> None:
        self.store.put(kind, record_id, record)

    def _save_datastore(self, ds: Datastore) -> None:
        self._save(DATASTORE_KIND, ds.datastore_id, ds.to_record())

    def _save_job(self, job: ImportJob) -> None:
        self._save(JOB_KIND, job.job_id, job.to_record())

    def datastore_arn(self, datastore_id: str) -> str:
        return (
            f"arn:aws:medical-imaging:{self.config.region}:{self.config.account_id}"
            f":datastore/{datastore_id}"
        )

    def _default_kms_key(self) -> str:
        return (
            f"arn:aws:kms:{self.config.region}:{self.config.account_id}:alias/aws/medical-imaging"
        )

    def image_set_arn(self, datastore_id: str, image_set_id: str) -> str:
        return f"{self.datastore_arn(datastore_id)}/imageset/{image_set_id}"

    def s3_client(self) -> Any:
        """One client for the whole service, built once: building one costs
        tens of milliseconds under the GIL, which every StartDICOMImportJob
        (quota check) and import job paid. A built client is thread-safe; the
        lock only keeps two threads from building at once."""
        # Its own S3 takes the service's credentials when they are enforced.
        key = (self.config.credentials if self.s3_in_process else None) or LOCAL_CREDENTIALS
        with self._s3_lock:
            if self._s3 is None or self._s3.meta.endpoint_url != self.s3_endpoint:
                self._s3 = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.s3_endpoint,
                    region_name=self.config.region,
                    aws_access_key_id=key.access_key,
                    aws_secret_access_key=key.secret_key,
                    config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                  max_pool_connections=64),
                )
            return self._s3

    @property
    def accepting_imports(self) -> bool:
        """False once the service began to stop: a start is then refused."""
        return self._accepting_imports

    def stop_imports(self, grace_seconds: float) -> None:
        """Start no import from now on; let running ones go on for
        ``grace_seconds``, then end the rest FAILED. Returns once no import
        thread touches the store any more."""
        with self.lock:
            self._accepting_imports = False
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and self._unfinished_jobs():
            time.sleep(0.05)
        self.imports_cancelled.set()
        self._import_pool.shutdown(wait=True, cancel_futures=True)
        for job in self._unfinished_jobs():  # queued, never started
            self._end_job(job, "FAILED", str(importer.ImportStopped()))

    def _unfinished_jobs(self) -> list[ImportJob]:
        with self.lock:
            return [j for j in self.jobs.values() if j.running]

    def shutdown(self) -> None:
        self._import_pool.shutdown(wait=False, cancel_futures=True)

    def _recover(self) -> None:
        """After a restart: resume jobs that never started, and fail the
        ones that were cut off mid-import (their partial output cannot be
        trusted, so ``_end_job`` removes it) with a message saying so. Data
        stores, and image sets a write left LOCKED, settle when read."""
        for job in self.jobs.values():
            if job.status == "SUBMITTED":
                self._import_pool.submit(self._run_job, job.job_id)
            elif job.status == "IN_PROGRESS":
                self._end_job(
                    job,
                    "FAILED",
                    "The local HealthImaging service stopped while this job was running; "
                    "start a new import job for the same input.",
                )
        # A STOW-RS request cut off before its answer: its client saw no
        # answer and will send it again, so nothing of it may stay.
        for request_id, _ in list(self.store.load(STOW_KIND)):
            self.image_sets.roll_back_import(request_id)
            self.store.delete(STOW_KIND, request_id)

    # -- data stores --------------------------------------------------------
    def _settled(self, ds: Datastore) -> Datastore:
        """``ds`` with its due change applied (and stored). The lock is
        taken only when a change is pending: most reads find none."""
        if ds.status in DATASTORE_TIMED:
            with self.lock:
                if ds.settle(time.time()):
                    self._save_datastore(ds)
        return ds

    def _settled_datastores(self) -> list[Datastore]:
        return [self._settled(ds) for ds in list(self.datastores.values())]

    def _datastore(self, datastore_id: str) -> Datastore:
        ds = self.datastores.get(datastore_id)
        if ds is None or self._settled(ds).status == "DELETED":
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist")
        return ds

    def active_datastore(self, datastore_id: str) -> Datastore:
        ds = self._datastore(datastore_id)
        if ds.status != "ACTIVE":
            raise ConflictException(f"Datastore {datastore_id} is {ds.status}, not ACTIVE")
        return ds

    def create_datastore(
        self,
        clientToken: str,
        datastoreName: str | None = None,
        tags: dict[str, str] | None = None,
        kmsKeyArn: str | None = None,
        lambdaAuthorizerArn: str | None = None,
        losslessStorageFormat: str | None = None,
    ) -> dict[str, Any]:
        """A clientToken repeated with the same name returns the same store.
        KMS keys and Lambda authorizers are recorded, not used."""
        with self.lock:
            token_key = f"datastore/{clientToken}"
            previous = self.client_tokens.get(token_key)
            if previous:
                ds = self._settled(self.datastores[previous["id"]])
                return {"datastoreId": ds.datastore_id, "datastoreStatus": ds.status}
            live = [d for d in self._settled_datastores() if d.status != "DELETED"]
            if len(live) >= self.config.max_datastores:
                raise ServiceQuotaExceededException(
                    f"At most {self.config.max_datastores} data stores per region"
                )
            datastore_id = new_id()
            now = time.time()
            ds = Datastore(
                datastore_id=datastore_id,
                name=datastoreName,
                status="CREATING",
                arn=self.datastore_arn(datastore_id),
                kms_key_arn=kmsKeyArn or self._default_kms_key(),
                lambda_authorizer_arn=lambdaAuthorizerArn,
                lossless_storage_format=losslessStorageFormat or "HTJ2K",
                created_at=now,
                updated_at=now,
                due_at=now + self.config.datastore_transition_seconds,
            )
            self.datastores[datastore_id] = ds
            self._save_datastore(ds)
            self.client_tokens[token_key] = {"id": datastore_id}
            self._save(TOKEN_KIND, token_key, {"id": datastore_id})
            if tags:
                self._set_tags(ds.arn, tags)
        return {"datastoreId": datastore_id, "datastoreStatus": "CREATING"}

    def get_datastore(self, datastoreId: str) -> dict[str, Any]:
        ds = self.datastores.get(datastoreId)
        if ds is None:
            raise ResourceNotFoundException(f"Datastore {datastoreId} does not exist")
        return {"datastoreProperties": self._settled(ds).to_wire()}

    def list_datastores(
        self,
        datastoreStatus: str | None = None,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        items = sorted(self._settled_datastores(), key=lambda d: d.created_at)
        if datastoreStatus:
            items = [d for d in items if d.status == datastoreStatus]
        page, token = paginate(items, maxResults, nextToken, datastoreStatus)
        return {"datastoreSummaries": [d.to_summary() for d in page], "nextToken": token}

    def delete_datastore(self, datastoreId: str) -> dict[str, Any]:
        with self.lock:
            ds = self._datastore(datastoreId)
            if ds.status in ("CREATING", "DELETING"):
                raise ConflictException(f"Datastore {datastoreId} is {ds.status}")
            if self.image_sets.in_datastore(datastoreId):
                raise ConflictException(
                    f"Datastore {datastoreId} still holds image sets; delete them first"
                )
            if any(j.datastore_id == datastoreId and j.running for j in self.jobs.values()):
                raise ConflictException(f"Datastore {datastoreId} has import jobs running")
            ds.advance("DELETING", time.time(), self.config.datastore_transition_seconds)
            self._save_datastore(ds)
        return {"datastoreId": datastoreId, "datastoreStatus": "DELETING"}

    # -- import jobs --------------------------------------------------------
    def start_dicom_import_job(
        self,
        dataAccessRoleArn: str,
        clientToken: str,
        datastoreId: str,
        inputS3Uri: str,
        outputS3Uri: str,
        jobName: str | None = None,
        inputOwnerAccountId: str | None = None,
        importConfiguration: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Idempotent on clientToken: the same token with the same parameters
        returns the original job; with other parameters, ConflictException.
        (AWS does not document token reuse; this is what a careful client
        must survive.)

        The file and byte quotas are checked here by listing the input, so an
        oversized job is refused with 402 up front instead of failing later;
        AWS documents the quota but not when it is enforced. An input that
        cannot be listed is accepted and the job ends FAILED, as on AWS."""
        request = {
            "dataAccessRoleArn": dataAccessRoleArn,
            "datastoreId": datastoreId,
            "inputS3Uri": inputS3Uri,
            "outputS3Uri": outputS3Uri,
            "jobName": jobName,
            "inputOwnerAccountId": inputOwnerAccountId,
            "importConfiguration": importConfiguration,
        }
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        token_key = f"job/{datastoreId}/{clientToken}"
        with self.lock:
            self._datastore(datastoreId)
            earlier = self._job_of_token(token_key, clientToken, fingerprint)
            if earlier is not None:
                return earlier.to_start_response()
            self.active_datastore(datastoreId)
            self._check_job_quota(datastoreId)
        self._check_input_quota(inputS3Uri)
        with self.lock:
            if not self._accepting_imports:
                raise ConflictException(
                    "The local service is stopping; it starts no new import job"
                )
            job = self._record_new_job(request, token_key, fingerprint)
            # Under the lock: stop_imports cannot shut the pool in between,
            # and the job cannot leave SUBMITTED before it is answered.
            self._import_pool.submit(self._run_job, job.job_id)
            return job.to_start_response()

    def _job_of_token(
        self, token_key: str, client_token: str, fingerprint: str
    ) -> ImportJob | None:
        """The job an earlier start with this client token made, if any."""
        previous = self.client_tokens.get(token_key)
        if not previous:
            return None
        if previous["fingerprint"] != fingerprint:
            raise ConflictException(
                f"clientToken {client_token} was already used with other parameters"
            )
        return self.jobs[previous["id"]]

    def _check_job_quota(self, datastore_id: str) -> None:
        running = sum(
            1 for j in self.jobs.values() if j.datastore_id == datastore_id and j.running
        )
        if running >= self.config.max_concurrent_jobs:
            raise ServiceQuotaExceededException(
                f"Data store {datastore_id} already has {running} import jobs running; "
                f"the limit is {self.config.max_concurrent_jobs}"
            )

    def _record_new_job(
        self, request: dict[str, Any], token_key: str, fingerprint: str
    ) -> ImportJob:
        """Store a SUBMITTED job and its client token: the fingerprint tells a
        repeated start from a token reused with other parameters."""
        job_id = new_id()
        job = ImportJob(
            job_id=job_id,
            job_name=request["jobName"],
            status="SUBMITTED",
            datastore_id=request["datastoreId"],
            data_access_role_arn=request["dataAccessRoleArn"],
            input_s3_uri=request["inputS3Uri"],
            output_s3_uri=importer.job_output_uri(
                request["outputS3Uri"], request["datastoreId"], job_id
            ),
            requested_output_s3_uri=request["outputS3Uri"],
            input_owner_account_id=request["inputOwnerAccountId"],
            import_configuration=request["importConfiguration"],
            submitted_at=time.time(),
        )
        self.jobs[job_id] = job
        self._save_job(job)
        self.client_tokens[token_key] = {"id": job_id, "fingerprint": fingerprint}
        self._save(TOKEN_KIND, token_key, self.client_tokens[token_key])
        return job

    def _check_input_quota(self, input_s3_uri: str) -> None:
        try:
            objects = importer.list_input(self.s3_client(), input_s3_uri)
        except importer.ImportJobFailed:
            return
        files = len(objects)
        size = sum(o.size for o in objects)
        if files > self.config.max_files_per_job:
            raise ServiceQuotaExceededException(
                f"{input_s3_uri} holds {files} files; an import job takes at most "
                f"{self.config.max_files_per_job}"
            )
        if size > self.config.max_bytes_per_job:
            raise ServiceQuotaExceededException(
                f"{input_s3_uri} holds {size} bytes; an import job takes at most "
                f"{self.config.max_bytes_per_job}"
            )

    def _end_job(self, job: ImportJob, status: str, message: str | None) -> None:
        """A job ending FAILED leaves nothing behind: what it wrote is rolled
        back first, so that a crash during the rollback leaves the job
        IN_PROGRESS, and the restart's ``_recover`` rolls back again."""
        with self.lock:
            if status == "FAILED":
                self.image_sets.roll_back_import(job.job_id)
            job.end(status, time.time(), message)
            self._save_job(job)

    def _run_job(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if self.imports_cancelled.is_set():
            return  # stop_imports ends it
        started = time.monotonic()
        with self.lock:
            job.advance("IN_PROGRESS")
            self._save_job(job)
        status, message = "COMPLETED", None
        try:
            failure = self.faults.job_failure(lambda: (
                o.key for o in importer.list_input(self.s3_client(), job.input_s3_uri)))
            if failure:
                raise importer.ImportJobFailed(failure)
            importer.run_import(job, self, lambda: self._hold_for_job_duration(started))
        except importer.ImportJobFailed as failure:
            status, message = "FAILED", str(failure)
        except Exception as error:  # the job, not the service, fails
            log.exception("import job %s failed", job_id)
            status, message = "FAILED", f"Internal error while importing: {error}"
        if self._stopped_within_job_duration(started):
            # Still running for its client when the service stopped.
            status, message = "FAILED", str(importer.ImportStopped())
        self._end_job(job, status, message)

    def _hold_for_job_duration(self, started: float) -> None:
        if self._stopped_within_job_duration(started):
            raise importer.ImportStopped

    def _stopped_within_job_duration(self, started: float) -> bool:
        """Hold an import until the injected job duration has passed since
        ``started``; True when the service stopped meanwhile. The duration is
        read again as the job waits, so that shortening it (a test, or the
        admin route) releases jobs already waiting instead of leaving them to
        the length they started with."""
        while (remaining := self.faults.config.job_duration_seconds
               - (time.monotonic() - started)) > 0:
            if self.imports_cancelled.wait(min(remaining, _JOB_DURATION_RECHECK_SECONDS)):
                return True
        return False

    def _job(self, datastore_id: str, job_id: str) -> ImportJob:
        job = self.jobs.get(job_id)
        if job is None or job.datastore_id != datastore_id:
            raise ResourceNotFoundException(
                f"Import job {job_id} does not exist in data store {datastore_id}"
            )
        return job

    def get_dicom_import_job(self, datastoreId: str, jobId: str) -> dict[str, Any]:
        job = self._job(datastoreId, jobId)
        return {"jobProperties": job.to_wire()}

    def list_dicom_import_jobs(
        self,
        datastoreId: str,
        jobStatus: str | None = None,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        """Newest first. Summaries carry no S3 URIs, as on AWS."""
        self._datastore(datastoreId)
        items = sorted(
            (j for j in self.jobs.values() if j.datastore_id == datastoreId),
            key=lambda j: j.submitted_at,
            reverse=True,
        )
        if jobStatus:
            items = [j for j in items if j.status == jobStatus]
        page, token = paginate(items, maxResults, nextToken, (datastoreId, jobStatus))
        return {"jobSummaries": [j.to_summary() for j in page], "nextToken": token}

    # -- DICOMweb STOW-RS ---------------------------------------------------
    def store_dicom(
        self, datastoreId: str, files: list[Path | None], studyInstanceUID: str | None = None
    ) -> list[InstanceOutcome]:
        """StoreDICOM, or StoreDICOMStudy with ``studyInstanceUID``: store
        the instances of one request now, through the import jobs' own path,
        and say what became of each (``files`` in request order, None for a
        part that is not DICOM)."""
        self.active_datastore(datastoreId)
        request_id = f"stow-{new_id()}"
        self._save(STOW_KIND, request_id, {"datastoreId": datastoreId})
        try:
            return stow.store_request(self, datastoreId, files, studyInstanceUID, request_id)
        finally:
            self.store.delete(STOW_KIND, request_id)

    # -- tags ---------------------------------------------------------------
    def _check_tag_target(self, arn: str) -> None:
        parts = arn.split(":", 5)[-1].split("/")
        datastore_id = parts[1]
        self._datastore(datastore_id)
        if len(parts) == 4:
            self.image_sets.get(datastore_id, parts[3])

    def _set_tags(self, arn: str, tags: dict[str, str]) -> None:
        with self.lock:
            merged = {**self.tags.get(arn, {}), **tags}
            if "/imageset/" in arn and len(merged) > 50:
                raise ValidationException("An image set can have at most 50 tags")
            self.tags[arn] = merged
            self._save(TAGS_KIND, arn, {"tags": merged})

    def list_tags_for_resource(self, resourceArn: str) -> dict[str, Any]:
        self._check_tag_target(resourceArn)
        return {"tags": dict(self.tags.get(resourceArn, {}))}

    def tag_resource(self, resourceArn: str, tags: dict[str, str]) -> dict[str, Any]:
        self._check_tag_target(resourceArn)
        self._set_tags(resourceArn, tags)
        return {}

    def untag_resource(self, resourceArn: str, tagKeys: list[str]) -> dict[str, Any]:
        self._check_tag_target(resourceArn)
        with self.lock:
            kept = {k: v for k, v in self.tags.get(resourceArn, {}).items() if k not in tagKeys}
            self.tags[resourceArn] = kept
            self._save(TAGS_KIND, resourceArn, {"tags": kept})
        return {}
