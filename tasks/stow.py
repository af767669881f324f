"""STOW-RS as a way to land a batch: the batch is one study's files, sent in
one request body (tasks.stow_body) to ``POST .../studies/{StudyInstanceUID}``
(StoreDICOMStudy), and answered per instance.

The request stands where an import job would: its ID (derived from the data
store and the batch, like a job's client token) is the files' ``job_id``,
the ledger records it and its files before it is sent, and its answer is
read as a job's output (tasks.stow_answer). What differs is that STOW-RS
does not deduplicate: an instance sent twice is stored twice (a new image
set version). So the request is sent again only for what is known not to be
stored:

* 429 or 503: nothing was taken; the same instances go again after a wait;
* an answer naming failed instances: only those whose failure may pass
  (tasks.stow_response) go again, after a wait;
* no answer (a timeout, a reset) or another 5xx: the service may have
  stored any of it, so what landed is looked up first, and only the rest
  goes again (with any file some run imported with other bytes: that its
  instance is there does not say these bytes are);
* a request some run sent before (the ledger knows it: a rerun after a
  kill, or an earlier attempt that failed): what landed is looked up before
  anything is sent.

"What landed" is asked twice over: QIDO-RS (instances of the study by SOP
Instance UID, with the WarningReason each was stored with) and the native
API (tasks.landed: SearchImageSets and GetImageSetMetadata), which also sees
non-primary image sets, where QIDO-RS does not look, and gives the image set
each file is in for the report and verification.

Sends of one request's instances are at most ``MAX_SENDS``, waits between
them growing with jitter (tasks.backoff). Instances still not stored after
that are reported ``import_failed`` as a server error (retried later, as
after a failed job); a request refused whole (4xx: a bad body, access) is
reported like a job that FAILED.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import requests
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.backoff import exponential, jittered
from tasks.batch import Batch
from tasks.interruption import sleep_unless_stopped, stop_requested
from tasks.landed import Instance, Landed, find_landed, instance_of
from tasks.poll import JobOutcome
from tasks.stage import StagedFile
from tasks.statuses import JobStatus, Landing, StageAction
from tasks.stow_answer import Refused, Stored, StowAnswer
from tasks.stow_body import request_body
from tasks.stow_client import StowClient
from tasks.stow_response import (
    ANSWERED,
    NOT_TAKEN,
    FailedInstance,
    NotAStoreResponse,
    StoreAnswer,
    read_store_response,
    warning_codes,
)
from tasks.validate import ValidationRecord

MAX_SENDS = 6
BASE_DELAY = 1.0
MAX_DELAY = 60.0
# The error_type of a file still not stored after MAX_SENDS (a server error:
# retried automatically, tasks.retry_policy).
NOT_STORED = "InternalServerException"


class RequestRecorder(Protocol):
    """What sending a request tells the ledger (tasks.ledger.RunLedger)."""

    @property
    def run_id(self) -> str: ...

    def job_known(self, job_id: str) -> bool: ...

    def failed_attempts(self, input_s3_uri: str, batch_digest: str) -> int: ...

    def record_job_started(
        self, job_id: str, batch: Batch, input_s3_uri: str, landing: Landing = Landing.JOB
    ) -> str: ...

    def record_job_status(self, outcome: JobOutcome) -> None: ...

    def imported_as_other_bytes(self, sha256: Mapping[str, str | None]) -> set[str]: ...


def request_id(datastore_id: str, batch_digest: str, attempt: int = 0) -> str:
    """32 hex characters, as a job ID: the same batch is the same request
    until one of its attempts FAILED."""
    key = f"stow|{datastore_id}|{batch_digest}"
    if attempt:
        key += f"|attempt {attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass
class _Progress:
    """Where one request's files stand."""

    pending: dict[str, ValidationRecord]
    read: dict[str, StagedFile] = field(default_factory=dict)
    stored: dict[str, Stored] = field(default_factory=dict)
    # Named in an answer as stored in a non-primary image set.
    non_primary: dict[str, str] = field(default_factory=dict)
    refused: dict[str, Refused] = field(default_factory=dict)
    sends: int = 0
    last_problem: str = "no request was sent"

    def landed(self, found: dict[str, Stored]) -> None:
        for uri, stored in found.items():
            if self.pending.pop(uri, None) is not None:
                self.stored[uri] = stored

    def answered(self, answer: StoreAnswer, sent: Sequence[ValidationRecord]) -> list[str]:
        """Take an answer to a send of ``sent``; returns the files it does not
        name, which may or may not be stored (none, unless the service
        could not read which instance a part was)."""
        by_uid = {r.sop_instance_uid: r.uri for r in sent}
        named: set[str] = set()
        for item in answer.stored:
            uri = by_uid.get(item.sop_instance_uid)
            if uri is not None and self.pending.pop(uri, None) is not None:
                named.add(uri)
                self.stored[uri] = Stored(uri, item.image_set_id, None, None,
                                          warning_codes(item.warning))
                if item.image_set_id:
                    self.non_primary[uri] = item.image_set_id
        unnamed_failures = []
        for failed in answer.failed:
            uri = by_uid.get(failed.sop_instance_uid) if failed.sop_instance_uid else None
            if uri is None:
                unnamed_failures.append(failed)
                continue
            named.add(uri)
            self._failed(uri, failed)
        unnamed = [r.uri for r in sent if r.uri not in named and r.uri in self.pending]
        # Parts it could not read the UIDs of: which failure is whose does
        # not matter when they all say the same.
        if (unnamed and len(unnamed_failures) >= len(unnamed)
                and len({f.reason for f in unnamed_failures}) == 1):
            for uri in unnamed:
                self._failed(uri, unnamed_failures[0])
            return []
        return unnamed

    def _failed(self, uri: str, failed: FailedInstance) -> None:
        self.last_problem = failed.describe()
        if not failed.may_pass and self.pending.pop(uri, None) is not None:
            self.refused[uri] = Refused(uri, failed.error_type, failed.describe())

    def give_up(self, error_type: str, why: str) -> None:
        for uri in list(self.pending):
            self.refused[uri] = Refused(uri, error_type, why)
        self.pending.clear()


def send_batch(
    client: StowClient,
    datastore_id: str,
    batch: Batch,
    ledger: RequestRecorder,
    sleep: Callable[[float], bool] = sleep_unless_stopped,
    rng: random.Random | None = None,
) -> JobOutcome:
    """Send the batch (one study's files) until every file is stored, refused
    for good, or the sends are spent; the request's outcome, its answer in it."""
    study = batch.files[0].study_instance_uid or ""
    url = client.study_url(datastore_id, study)
    attempt = ledger.failed_attempts(url, batch.digest)
    rid = request_id(datastore_id, batch.digest, attempt)
    if stop_requested():
        return JobOutcome(batch.batch_id, datastore_id, None, JobStatus.INTERRUPTED,
                          "The run was stopped before this STOW-RS request was sent.",
                          input_s3_uri=url, landing=Landing.STOW)
    progress = _Progress({r.uri: r for r in batch.files})
    if attempt or ledger.job_known(rid):
        # Sent before, by a run that died or an attempt that failed.
        progress.landed(look_up(client, datastore_id, study, list(progress.pending.values())))
    started_by: str | None = None
    while progress.pending and progress.sends < MAX_SENDS:
        if progress.sends and sleep(jittered(exponential(progress.sends - 1, BASE_DELAY,
                                                         MAX_DELAY), rng)):
            return _stopped(batch, datastore_id, rid, url, ledger, started_by)
        with request_body(list(progress.pending.values()), batch.batch_id) as body:
            for item in body.read:
                progress.read[item.source_uri] = item
                if item.action is StageAction.FAILED:
                    del progress.pending[item.source_uri]
            if not body.included:
                break
            if started_by is None:
                # Before anything is sent: the files with the bytes read.
                started_by = ledger.record_job_started(rid, _with_sha256(batch, progress.read),
                                                       url, Landing.STOW)
            progress.sends += 1
            sent = body.included
            try:
                response = client.store(url, body)
            except requests.RequestException as lost:
                progress.last_problem = f"no answer ({type(lost).__name__}: {lost})"
                response = None
        in_doubt = _take(response, sent, progress)
        if isinstance(in_doubt, str):  # refused whole
            if not progress.stored:
                return _refused_whole(batch, datastore_id, rid, url, ledger, started_by,
                                      in_doubt)
            progress.give_up(NOT_STORED, in_doubt)
        elif in_doubt:
            progress.landed(_sent_and_found(client, datastore_id, study, in_doubt, progress,
                                            ledger))
    progress.give_up(NOT_STORED, f"Not stored after {progress.sends} STOW-RS sends: "
                                 f"{progress.last_problem}.")
    if started_by is None:
        started_by = ledger.record_job_started(rid, _with_sha256(batch, progress.read), url,
                                               Landing.STOW)
    # A file found stored before this run sent it was not read: the answer
    # still names it by its source URI.
    read = tuple(progress.read.get(r.uri) or StagedFile(r.uri, batch.batch_id, r.uri,
                                                        StageAction.SKIPPED, sha256=r.sha256)
                 for r in batch.files)
    answer = StowAnswer(read, _placed(datastore_id, batch, progress),
                        tuple(progress.refused.values()), progress.sends)
    outcome = JobOutcome(batch.batch_id, datastore_id, rid, JobStatus.COMPLETED,
                         input_s3_uri=url, from_earlier_run=started_by != ledger.run_id,
                         landing=Landing.STOW, answer=answer)
    ledger.record_job_status(outcome)
    return outcome


def _take(
    response: requests.Response | None, sent: Sequence[ValidationRecord], progress: _Progress,
) -> list[ValidationRecord] | str:
    """Learn what a send of ``sent`` did: the files it may or may not have
    stored, to look up before any is sent again; or the reason when the
    service refused the request whole (sending it again would not store it)."""
    in_doubt: Sequence[ValidationRecord] = ()
    status = response.status_code if response is not None else None
    if response is not None and status in ANSWERED:
        try:
            unnamed = set(progress.answered(read_store_response(response.json()), sent))
            in_doubt = [r for r in sent if r.uri in unnamed]
        except (ValueError, NotAStoreResponse):
            if status == 409:  # the service's own refusal (a data store not ACTIVE)
                return _refusal(response)
            progress.last_problem = f"{status}, but not a Store Instances Response"
            in_doubt = sent
    elif response is not None and status in NOT_TAKEN:
        progress.last_problem = f"{status} {response.reason}"
    elif response is None or (status is not None and status >= 500):
        if response is not None:
            progress.last_problem = f"{status} {response.reason}"
        in_doubt = sent  # it may have stored any of it before the answer was lost
    else:
        return _refusal(response)
    return [r for r in in_doubt if r.uri in progress.pending]


def _sent_and_found(
    client: StowClient, datastore_id: str, study: str, records: Sequence[ValidationRecord],
    progress: _Progress, ledger: RequestRecorder,
) -> dict[str, Stored]:
    """What the data store holds of files just sent without a clear answer.
    Not a file some run imported with other bytes: the data store holding
    its instance would not say whether these bytes landed, so it is sent
    again (the bytes sent are the ones that must be there)."""
    found = look_up(client, datastore_id, study, records)
    other = ledger.imported_as_other_bytes(
        {uri: progress.read[uri].sha256 for uri in found if uri in progress.read})
    return {uri: stored for uri, stored in found.items() if uri not in other}


def _refusal(response: requests.Response) -> str:
    return f"STOW-RS refused the request: {response.status_code} {response.text[:300]}"


def look_up(
    client: StowClient, datastore_id: str, study: str, records: Sequence[ValidationRecord]
) -> dict[str, Stored]:
    """Which of these files of the study the data store holds, by URI."""
    instances = {r.uri: i for r in records if (i := instance_of(r))}
    if not instances:
        return {}
    warnings = client.warnings_of_stored(datastore_id, study,
                                         [i.sop_instance_uid for i in instances.values()])
    landed = find_landed(datastore_id, instances.values())
    return {uri: _stored(uri, where, warning_codes(warnings.get(i.sop_instance_uid)))
            for uri, i in instances.items() if (where := landed.get(i)) is not None}


def _placed(datastore_id: str, batch: Batch, progress: _Progress) -> tuple[Stored, ...]:
    """The stored files with the image set each is in: an answer names only
    non-primary ones, the data store every one (tasks.landed)."""
    records = {r.uri: r for r in batch.files}
    unplaced = {uri: i for uri, s in progress.stored.items()
                if s.image_set_id is None or s.is_primary is None
                if (i := instance_of(records[uri])) is not None}
    landed: dict[Instance, Landed] = find_landed(datastore_id, unplaced.values()) \
        if unplaced else {}
    placed = []
    for uri, stored in progress.stored.items():
        where = landed.get(unplaced[uri]) if uri in unplaced else None
        named = progress.non_primary.get(uri)
        if named is not None:
            version = where.version if where and where.image_set_id == named else None
            placed.append(replace(stored, image_set_id=named, is_primary=False,
                                  version=version))
        elif where is not None:
            placed.append(_stored(uri, where, stored.warnings))
        else:
            placed.append(stored)
    return tuple(placed)


def _stored(uri: str, where: Landed, warnings: str | None) -> Stored:
    return Stored(uri, where.image_set_id, where.is_primary, where.version, warnings)


def _with_sha256(batch: Batch, read: dict[str, StagedFile]) -> Batch:
    return replace(batch, files=tuple(
        replace(r, sha256=read[r.uri].sha256) if r.uri in read else r for r in batch.files))


def _stopped(
    batch: Batch, datastore_id: str, rid: str, url: str, ledger: RequestRecorder,
    started_by: str | None,
) -> JobOutcome:
    """Stopped between sends: the files stay with the request, whose answer
    is looked up by the next run (as a job left running is got back)."""
    return JobOutcome(batch.batch_id, datastore_id, rid if started_by else None,
                      JobStatus.INTERRUPTED,
                      "Stopped between sends of this STOW-RS request; the next run looks up "
                      "what it stored before sending the rest.", input_s3_uri=url,
                      from_earlier_run=bool(started_by) and started_by != ledger.run_id,
                      landing=Landing.STOW)


def _refused_whole(
    batch: Batch, datastore_id: str, rid: str, url: str, ledger: RequestRecorder,
    started_by: str | None, why: str,
) -> JobOutcome:
    outcome = JobOutcome(batch.batch_id, datastore_id, rid, JobStatus.FAILED, why,
                         input_s3_uri=url, from_earlier_run=bool(started_by)
                         and started_by != ledger.run_id, landing=Landing.STOW)
    ledger.record_job_status(outcome)
    return outcome


@task(name="stow-batch", cache_policy=NO_CACHE)
def stow_batch(
    client: StowClient, datastore_id: str, batch: Batch, ledger: RequestRecorder
) -> JobOutcome:
    """One task run per request, the unit a window waits for. No Prefect
    retries: sending again is this module's decision alone."""
    return send_batch(client, datastore_id, batch, ledger)
