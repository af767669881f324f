"""State and rules of the local HealthImaging service.

Backend methods are named after the boto3 operations in snake_case and take
the request members as keyword arguments (moto's convention); the HTTP layer
in ``responses`` does the wire format. Image set operations live in
``imageset_operations`` (a mixin), the import itself in ``importer``.

Deviations from AWS are written on the method that deviates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
from emulator.state.store import Store
from emulator.worker import importer

log = logging.getLogger(__name__)

DATASTORE_KIND = "datastore"
JOB_KIND = "job"
TAGS_KIND = "tags"
TOKEN_KIND = "client_token"

RUNNING_JOB_STATES = ("SUBMITTED", "IN_PROGRESS")
# ListDICOMImportJobs summaries carry no S3 URIs; GetDICOMImportJob does.
JOB_SUMMARY_KEYS = ("jobId", "jobName", "jobStatus", "datastoreId", "dataAccessRoleArn",
                    "endedAt", "submittedAt", "message")
JOB_PROPERTY_KEYS = (*JOB_SUMMARY_KEYS, "inputS3Uri", "outputS3Uri", "importConfiguration")
_FINISHED_WRITES = {
    "UPDATING": ("ACTIVE", "UPDATED"),
    "COPYING": ("ACTIVE", "COPIED"),
    "COPYING_WITH_READ_ONLY_ACCESS": ("ACTIVE", "COPIED"),
    "DELETING": ("DELETED", "DELETED"),
    "IMPORTING": ("ACTIVE", "IMPORTED"),
}


class HealthImagingBackend(ImageSetOperations):
    def __init__(self, config: ServiceConfig, store: Store, faults: FaultInjector) -> None:
        self.config = config
        self.store = store
        self.faults = faults
        self.lock = threading.RLock()
        self.datastores: dict[str, dict[str, Any]] = dict(store.load(DATASTORE_KIND))
        self.jobs: dict[str, dict[str, Any]] = dict(store.load(JOB_KIND))
        self.tags: dict[str, dict[str, str]] = {k: v["tags"] for k, v in store.load(TAGS_KIND)}
        self.client_tokens: dict[str, dict[str, Any]] = dict(store.load(TOKEN_KIND))
        self.image_sets = ImageSetRepository(store, lambda: config.clock().timestamp())
        self._import_pool = ThreadPoolExecutor(config.import_workers, "import-job")
        self._timer_pool = ThreadPoolExecutor(4, "transition")
        self._stopped = threading.Event()
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
    def _later(self, delay: float, action: Any, *args: Any) -> None:
        """Run ``action`` after ``delay`` seconds, as the real service's
        asynchronous transitions do (CREATING -> ACTIVE, LOCKED -> ACTIVE)."""

        def run() -> None:
            time.sleep(delay)
            if self._stopped.is_set():
                return
            try:
                action(*args)
            except Exception:
                log.exception("background transition failed")

        self._timer_pool.submit(run)

    def _save(self, kind: str, record_id: str, record: dict[str, Any]) -> None:
        self.store.put(kind, record_id, record)

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

    def _unfinished_jobs(self) -> list[dict[str, Any]]:
        with self.lock:
            return [j for j in self.jobs.values() if j["jobStatus"] in RUNNING_JOB_STATES]

    def shutdown(self) -> None:
        self._stopped.set()
        self._import_pool.shutdown(wait=False, cancel_futures=True)
        self._timer_pool.shutdown(wait=False, cancel_futures=True)

    def _recover(self) -> None:
        """After a restart: finish data store transitions, resume jobs that
        never started, and fail the ones that were cut off mid-import (their
        partial output cannot be trusted) with a message saying so."""
        for ds in self.datastores.values():
            if ds["datastoreStatus"] == "CREATING" or ds["datastoreStatus"] == "DELETING":
                self._later(0, self._finish_datastore_transition, ds["datastoreId"])
        for job in self.jobs.values():
            if job["jobStatus"] == "SUBMITTED":
                self._import_pool.submit(self._run_job, job["jobId"])
            elif job["jobStatus"] == "IN_PROGRESS":
                self._end_job(
                    job,
                    "FAILED",
                    "The local HealthImaging service stopped while this job was running; "
                    "start a new import job for the same input.",
                )
        for record in list(self.image_sets.sets.values()):
            if record["imageSetState"] == "LOCKED":
                # A write stores its new version before it locks the set, so
                # what is left after a restart is only the end of the transition.
                finished = _FINISHED_WRITES[record["imageSetWorkflowStatus"]]
                self._finish_write([record["imageSetId"]], *finished)

    # -- data stores --------------------------------------------------------
    def _datastore(self, datastore_id: str) -> dict[str, Any]:
        ds = self.datastores.get(datastore_id)
        if ds is None or ds["datastoreStatus"] == "DELETED":
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist")
        return ds

    def active_datastore(self, datastore_id: str) -> dict[str, Any]:
        ds = self._datastore(datastore_id)
        if ds["datastoreStatus"] != "ACTIVE":
            raise ConflictException(
                f"Datastore {datastore_id} is {ds['datastoreStatus']}, not ACTIVE"
            )
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
                ds = self.datastores[previous["id"]]
                return {"datastoreId": ds["datastoreId"], "datastoreStatus": ds["datastoreStatus"]}
            live = [d for d in self.datastores.values() if d["datastoreStatus"] != "DELETED"]
            if len(live) >= self.config.max_datastores:
                raise ServiceQuotaExceededException(
                    f"At most {self.config.max_datastores} data stores per region"
                )
            datastore_id = new_id()
            now = time.time()
            ds = {
                "datastoreId": datastore_id,
                "datastoreName": datastoreName,
                "datastoreStatus": "CREATING",
                "datastoreArn": self.datastore_arn(datastore_id),
                "kmsKeyArn": kmsKeyArn or self._default_kms_key(),
                "lambdaAuthorizerArn": lambdaAuthorizerArn,
                "losslessStorageFormat": losslessStorageFormat or "HTJ2K",
                "createdAt": now,
                "updatedAt": now,
            }
            self.datastores[datastore_id] = ds
            self._save(DATASTORE_KIND, datastore_id, ds)
            self.client_tokens[token_key] = {"id": datastore_id}
            self._save(TOKEN_KIND, token_key, {"id": datastore_id})
            if tags:
                self._set_tags(ds["datastoreArn"], tags)
        self._later(
            self.config.datastore_transition_seconds,
            self._finish_datastore_transition,
            datastore_id,
        )
        return {"datastoreId": datastore_id, "datastoreStatus": "CREATING"}

    def _finish_datastore_transition(self, datastore_id: str) -> None:
        with self.lock:
            ds = self.datastores[datastore_id]
            nxt = {"CREATING": "ACTIVE", "DELETING": "DELETED"}.get(ds["datastoreStatus"])
            if nxt:
                ds.update(datastoreStatus=nxt, updatedAt=time.time())
                self._save(DATASTORE_KIND, datastore_id, ds)

    def get_datastore(self, datastoreId: str) -> dict[str, Any]:
        ds = self.datastores.get(datastoreId)
        if ds is None:
            raise ResourceNotFoundException(f"Datastore {datastoreId} does not exist")
        return {"datastoreProperties": dict(ds)}

    def list_datastores(
        self,
        datastoreStatus: str | None = None,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        items = sorted(self.datastores.values(), key=lambda d: d["createdAt"])
        if datastoreStatus:
            items = [d for d in items if d["datastoreStatus"] == datastoreStatus]
        page, token = paginate(items, maxResults, nextToken, datastoreStatus)
        keys = (
            "datastoreId",
            "datastoreName",
            "datastoreStatus",
            "datastoreArn",
            "createdAt",
            "updatedAt",
        )
        return {
            "datastoreSummaries": [{k: d.get(k) for k in keys} for d in page],
            "nextToken": token,
        }

    def delete_datastore(self, datastoreId: str) -> dict[str, Any]:
        with self.lock:
            ds = self._datastore(datastoreId)
            if ds["datastoreStatus"] in ("CREATING", "DELETING"):
                raise ConflictException(f"Datastore {datastoreId} is {ds['datastoreStatus']}")
            if self.image_sets.in_datastore(datastoreId):
                raise ConflictException(
                    f"Datastore {datastoreId} still holds image sets; delete them first"
                )
            if any(
                j["datastoreId"] == datastoreId and j["jobStatus"] in RUNNING_JOB_STATES
                for j in self.jobs.values()
            ):
                raise ConflictException(f"Datastore {datastoreId} has import jobs running")
            ds.update(datastoreStatus="DELETING", updatedAt=time.time())
            self._save(DATASTORE_KIND, datastoreId, ds)
        self._later(
            self.config.datastore_transition_seconds, self._finish_datastore_transition, datastoreId
        )
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
            previous = self.client_tokens.get(token_key)
            if previous:
                if previous["fingerprint"] != fingerprint:
                    raise ConflictException(
                        f"clientToken {clientToken} was already used with other parameters"
                    )
                job = self.jobs[previous["id"]]
                return {k: job[k] for k in ("datastoreId", "jobId", "jobStatus", "submittedAt")}
            self.active_datastore(datastoreId)
            running = sum(
                1
                for j in self.jobs.values()
                if j["datastoreId"] == datastoreId and j["jobStatus"] in RUNNING_JOB_STATES
            )
            if running >= self.config.max_concurrent_jobs:
                raise ServiceQuotaExceededException(
                    f"Data store {datastoreId} already has {running} import jobs running; "
                    f"the limit is {self.config.max_concurrent_jobs}"
                )
        self._check_input_quota(inputS3Uri)
        with self.lock:
            if not self._accepting_imports:
                raise ConflictException(
                    "The local service is stopping; it starts no new import job"
                )
            job_id = new_id()
            job = {
                **request,
                "jobId": job_id,
                "jobStatus": "SUBMITTED",
                "submittedAt": time.time(),
                "requestedOutputS3Uri": outputS3Uri,
                "outputS3Uri": importer.job_output_uri(outputS3Uri, datastoreId, job_id),
            }
            self.jobs[job_id] = job
            self._save(JOB_KIND, job_id, job)
            self.client_tokens[token_key] = {"id": job_id, "fingerprint": fingerprint}
            self._save(TOKEN_KIND, token_key, self.client_tokens[token_key])
            # Under the lock: stop_imports cannot shut the pool in between.
            self._import_pool.submit(self._run_job, job_id)
        return {
            "datastoreId": datastoreId,
            "jobId": job_id,
            "jobStatus": "SUBMITTED",
            "submittedAt": job["submittedAt"],
        }

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

    def _end_job(self, job: dict[str, Any], status: str, message: str | None) -> None:
        with self.lock:
            job.update(jobStatus=status, endedAt=time.time(), message=message)
            self._save(JOB_KIND, job["jobId"], job)

    def _run_job(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if self.imports_cancelled.is_set():
            return  # stop_imports ends it
        started = time.monotonic()
        with self.lock:
            job["jobStatus"] = "IN_PROGRESS"
            self._save(JOB_KIND, job_id, job)
        status, message = "COMPLETED", None
        try:
            if self.faults.take_job_failure():
                raise importer.ImportJobFailed(self.faults.config.fail_job_message)
            importer.run_import(job, self)
        except importer.ImportJobFailed as failure:
            status, message = "FAILED", str(failure)
        except Exception as error:  # the job, not the service, fails
            log.exception("import job %s failed", job_id)
            status, message = "FAILED", f"Internal error while importing: {error}"
        remaining = self.faults.config.job_duration_seconds - (time.monotonic() - started)
        if remaining > 0 and self.imports_cancelled.wait(remaining):
            # Still running for its client when the service stopped.
            status, message = "FAILED", str(importer.ImportStopped())
        self._end_job(job, status, message)

    def _job(self, datastore_id: str, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None or job["datastoreId"] != datastore_id:
            raise ResourceNotFoundException(
                f"Import job {job_id} does not exist in data store {datastore_id}"
            )
        return job

    def get_dicom_import_job(self, datastoreId: str, jobId: str) -> dict[str, Any]:
        job = self._job(datastoreId, jobId)
        return {"jobProperties": {k: job.get(k) for k in JOB_PROPERTY_KEYS}}

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
            (j for j in self.jobs.values() if j["datastoreId"] == datastoreId),
            key=lambda j: j["submittedAt"],
            reverse=True,
        )
        if jobStatus:
            items = [j for j in items if j["jobStatus"] == jobStatus]
        page, token = paginate(items, maxResults, nextToken, (datastoreId, jobStatus))
        return {
            "jobSummaries": [{k: j.get(k) for k in JOB_SUMMARY_KEYS} for j in page],
            "nextToken": token,
        }

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
