"""Import jobs: resolve the data store and start one DICOM import job per batch.

Named ``import_jobs`` because ``import`` is a keyword. Starting a job is the
one non-idempotent call in the pipeline, so its client token is derived from
what the job imports: a Prefect retry, a flow rerun after a kill, or a botocore
retry all send the same token and get the same job back.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from config.clients import medical_imaging_client
from tasks.backoff import error_code, exponential, is_transient, jittered, retry_if_transient
from tasks.batch import Batch
from tasks.job_slots import holding_job_slot
from tasks.poll import JobOutcome, wait_for_job
from tasks.statuses import DatastoreStatus, JobStatus

DATASTORE_ID = re.compile(r"[0-9a-f]{32}")
# As the CLI spells them: a refusal names what to change.
DATASTORE_OPTION = "--datastore"
CREATE_DATASTORE_OPTION = "--create-datastore"
# Log records with this extra stay on the CLI's screen (cli.progress): an
# operator must see that a run created a data store, a mistyped name included.
NOTICE = {"notice": True}


class ImportJobError(Exception):
    """StartDICOMImportJob was refused for good (not a rate or quota to wait out)."""


class DatastoreError(Exception):
    """The data store cannot be used; the message says why."""


@dataclass(frozen=True)
class Datastore:
    """An ACTIVE data store: its ID for the API, its name for people."""

    datastore_id: str
    name: str


@runtime_checkable
class JobRecorder(Protocol):
    """What importing a batch tells the record of jobs (tasks.ledger.RunLedger,
    or anything else that keeps it): enough to count a batch's attempts and to
    find a job again if this run dies while it waits."""

    @property
    def run_id(self) -> str: ...

    def failed_attempts(self, input_s3_uri: str, batch_digest: str) -> int:
        """Jobs of this batch that ended FAILED."""
        ...

    def record_job_started(self, job_id: str, batch: Batch, input_s3_uri: str) -> str:
        """Record a started job; returns the run that started it first."""
        ...

    def record_job_status(self, outcome: JobOutcome) -> None: ...


@dataclass(frozen=True)
class StartedJob:
    batch_id: str
    datastore_id: str
    job_id: str
    client_token: str
    input_s3_uri: str


def client_token(
    datastore_id: str, input_s3_uri: str, batch_digest: str, attempt: int = 0
) -> str:
    """64 hex characters, the longest token the API accepts.

    The attempt is the number of this batch's jobs that ended FAILED: a rerun
    of the same attempt (a kill while the job ran) gets its job back, while
    a rerun after a FAILED job starts a new one instead of being handed the
    FAILED job again.
    """
    key = f"{datastore_id}|{input_s3_uri}|{batch_digest}"
    if attempt:
        key += f"|attempt {attempt}"
    return hashlib.sha256(key.encode()).hexdigest()


def start_import_job(
    client: Any,
    datastore_id: str,
    batch: Batch,
    input_s3_uri: str,
    output_s3_uri: str,
    role_arn: str,
    attempt: int = 0,
    max_attempts: int = 8,
    base_delay: float = 2.0,
    max_delay: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> StartedJob:
    """Start the batch's job, waiting out throttling (429) and quotas (402).

    Raises:
        ImportJobError: any other client error, or still throttled after
            ``max_attempts`` calls.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    token = client_token(datastore_id, input_s3_uri, batch.digest, attempt)
    attempt = 0
    while True:
        attempt += 1
        try:
            response = client.start_dicom_import_job(
                jobName=f"dicom-import-{batch.batch_id}",
                datastoreId=datastore_id,
                dataAccessRoleArn=role_arn,
                clientToken=token,
                inputS3Uri=input_s3_uri,
                outputS3Uri=output_s3_uri,
            )
        except ClientError as exc:
            if not is_transient(exc):
                raise ImportJobError(
                    f"StartDICOMImportJob for batch {batch.batch_id} failed with "
                    f"{error_code(exc)}: {exc}"
                ) from exc
            if attempt == max_attempts:
                raise ImportJobError(
                    f"StartDICOMImportJob for batch {batch.batch_id} still got "
                    f"{error_code(exc)} after {max_attempts} attempts."
                ) from exc
            sleep(jittered(exponential(attempt - 1, base_delay, max_delay), rng))
        else:
            return StartedJob(batch.batch_id, datastore_id, response["jobId"], token,
                              input_s3_uri)


def resolve_datastore(
    client: Any,
    id_or_name: str,
    create: bool = False,
    poll_interval: float = 2.0,
    timeout: float = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    creatable: bool = False,
) -> Datastore:
    """An ACTIVE data store, given its ID or its name.

    A name is looked up with ListDatastores. One that matches no data store
    is created only when asked (``create``, with a token derived from the
    name, so two racing runs create one store), which is logged to
    ``logger``: otherwise a typo would become a new store holding the
    imports. ``creatable``: the command could have been asked
    (``--create-datastore``), so the refusal says how.

    Raises:
        DatastoreError: not found (and not created), ambiguous, or never ACTIVE.
    """
    if DATASTORE_ID.fullmatch(id_or_name):
        datastore_id = id_or_name
    else:
        usable = _usable_datastores(client)
        matches = sorted(i for i, name in usable.items() if name == id_or_name)
        if len(matches) > 1:
            raise DatastoreError(
                f"{len(matches)} data stores are named {id_or_name!r} "
                f"({', '.join(matches)}); pass the ID instead."
            )
        if matches:
            datastore_id = matches[0]
        elif create:
            datastore_id = client.create_datastore(
                datastoreName=id_or_name,
                clientToken=hashlib.sha256(f"datastore|{id_or_name}".encode()).hexdigest(),
            )["datastoreId"]
            (logger or logging.getLogger(__name__)).info(
                "Created data store %s (%s)", id_or_name, datastore_id, extra=NOTICE)
        else:
            raise DatastoreError(_no_such_name(id_or_name, set(usable.values()), creatable))
    return _wait_until_active(client, datastore_id, poll_interval, timeout, sleep)


def _usable_datastores(client: Any) -> dict[str, str]:
    """ID -> name of every data store that is or is becoming ACTIVE."""
    found = {}
    for page in client.get_paginator("list_datastores").paginate():
        for summary in page.get("datastoreSummaries", []):
            if summary.get("datastoreStatus") in {DatastoreStatus.ACTIVE,
                                                  DatastoreStatus.CREATING}:
                found[summary["datastoreId"]] = summary.get("datastoreName", "")
    return found


def _no_such_name(name: str, existing: set[str], creatable: bool) -> str:
    """One line: the names the operator probably meant, and how to create one."""
    closest = difflib.get_close_matches(name, sorted(existing), n=3)
    message = f"{DATASTORE_OPTION} {name}: no data store has this name"
    message += (f"; the closest: {', '.join(closest)}." if closest
                else " nor one close to it.")
    if creatable:
        message += f" To create it, give {CREATE_DATASTORE_OPTION}."
    return message


def _wait_until_active(
    client: Any,
    datastore_id: str,
    poll_interval: float,
    timeout: float,
    sleep: Callable[[float], None],
) -> Datastore:
    waited = 0.0
    while True:
        try:
            properties = client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                raise DatastoreError(f"Data store {datastore_id} does not exist.") from exc
            if not is_transient(exc):
                raise
        else:
            status = properties["datastoreStatus"]
            if status == DatastoreStatus.ACTIVE:
                return Datastore(datastore_id, properties.get("datastoreName", ""))
            if status != DatastoreStatus.CREATING:
                raise DatastoreError(f"Data store {datastore_id} is {status}, not ACTIVE.")
        if waited >= timeout:
            raise DatastoreError(
                f"Data store {datastore_id} did not become ACTIVE within {timeout:g} s."
            )
        sleep(poll_interval)
        waited += poll_interval


@task(name="resolve-datastore", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10,
      retry_condition_fn=retry_if_transient)
def resolve(id_or_name: str, create: bool = False, creatable: bool = False) -> Datastore:
    return resolve_datastore(medical_imaging_client(), id_or_name, create=create,
                             logger=get_run_logger(), creatable=creatable)


# Retrying the whole task is safe only because the client token is
# deterministic: the retry gets the running job back instead of a second one.
@task(name="import-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30,
      retry_condition_fn=retry_if_transient)
@holding_job_slot
def import_batch(
    datastore_id: str,
    batch: Batch,
    input_s3_uri: str,
    output_s3_uri: str,
    role_arn: str,
    poll_interval: float,
    poll_timeout: float,
    ledger: JobRecorder | None = None,
) -> JobOutcome:
    """Start and wait: one task run per batch, the unit an operator retries.

    A refused start becomes a NOT_STARTED outcome rather than an exception, so
    the other batches carry on and the report says which files it affects.
    The ledger (any JobRecorder) learns the job ID before the wait, so that a
    run killed while waiting leaves a job that retry_failed can resume.
    """
    client = medical_imaging_client()
    attempt = ledger.failed_attempts(input_s3_uri, batch.digest) if ledger else 0
    while True:
        try:
            job = start_import_job(
                client, datastore_id, batch, input_s3_uri, output_s3_uri, role_arn, attempt
            )
        except ImportJobError as exc:
            return JobOutcome(batch.batch_id, datastore_id, None, JobStatus.NOT_STARTED,
                              str(exc), input_s3_uri=input_s3_uri)
        started_by = ledger.record_job_started(job.job_id, batch, input_s3_uri) if ledger else None
        outcome = wait_for_job(
            client, datastore_id, job.job_id, batch.batch_id,
            poll_interval=poll_interval, timeout=poll_timeout,
        )
        if ledger is None:
            return outcome
        ledger.record_job_status(outcome)
        earlier = started_by != ledger.run_id
        if outcome.status is not JobStatus.FAILED or not earlier:
            return replace(outcome, from_earlier_run=earlier)
        # An earlier run's job, which FAILED after that run died: this run's
        # attempt is the next one.
        attempt += 1
