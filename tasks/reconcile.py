"""Reconciling non-primary image sets, by an operator's explicit decision for each.

A decision names a non-primary image set and what to do with it:

* ``promote``: make its instances a primary image set of their own
  (``CopyImageSet`` with ``promoteToPrimary``, which answers with a new
  primary image set ID). Allowed only where the series has no primary set,
  or once the corrections change its Study or Series Instance UID: one
  series never gets two primary sets.
* ``merge``: copy its instances into the primary image set of their series
  (``CopyImageSet`` with that set as ``destinationImageSet``).

Either may first correct attributes of the non-primary set
(``UpdateImageSetMetadata``); ``force`` is sent, with both calls, only when
the decision asks for it (it lets an update change UIDs and StudyID of a
non-primary set, and a copy keep the destination's values where the two
still disagree). This is AWS's documented way out of a conflict.

A dry run and ``--apply`` make one plan (``plan_decision``), and it checks
what the writes will check: a correction that needs ``force``, an instance
already in the primary set, values that still differ from the primary
set's without ``force``. A decision the dry run shows is one the writes
take, unless the sets change in between.

A copy leaves its source in place (it copies, never moves), so once the
copy has finished the files imported into the non-primary set are placed,
in the ledger, in the set that now holds their instances (with the keywords
whose values the decision changed: tasks.reconcile_record), and the
non-primary set is deleted: a set left behind would be listed as a
conflict forever.
Every write sends the version it expects (``latestVersionId``): a set that
changed since it was looked at is refused by HealthImaging rather than
overwritten, and the decision fails with one line saying so.

Attribute values (corrections carry patient data) are sent to HealthImaging
and nowhere else: what is printed, logged and recorded names keywords only.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from config.clients import medical_imaging_client
from tasks.backoff import error_code
from tasks.conflicts import (
    COMPARED_ELEMENTS,
    SEPARATOR,
    element_levels,
    image_set_document,
    primary_image_set,
)
from tasks.locations import filesystem_for
from tasks.reconcile_record import Change, Placement, ReconcileRecord
from tasks.statuses import DecisionAction as Action
from tasks.statuses import DecisionOutcome, ImageSetState, ReconcileOutcome

IMAGE_SET_ID = re.compile(r"[0-9a-z]{32}")
SCHEMA_VERSION = "1.1"
# What UpdateImageSetMetadata answers for a stale latestVersionId.
_NOT_LATEST = "not the latest"
_HOME_LEVEL = {keyword: level for level, keyword in COMPARED_ELEMENTS}
_LEVELS = ("Patient", "Study", "Series")
# Corrections UpdateImageSetMetadata refuses without force: UIDs and Study ID
# (docs/healthimaging.md, "Image sets"); multi-valued and sequence values too,
# as the local service reads AWS's metadata constraints.
_NEEDS_FORCE = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"})
UPDATE, COPY, DELETE = "UpdateImageSetMetadata", "CopyImageSet", "DeleteImageSet"


class Decision(BaseModel):
    """An operator's decision about one non-primary image set."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    action: Action
    # Keyword -> corrected value, applied before the copy.
    corrections: dict[str, JsonValue] = {}
    force: bool = False
    # The version the decision was made against: when given, the first
    # write expects it, so a set changed since is refused, not overwritten.
    version: str | None = None


class DecisionsError(ValueError):
    """The decisions file cannot be used; the message says where and why."""


class ReconcileError(Exception):
    """One decision cannot be carried out; the message is one line."""


def read_decisions(path: str) -> dict[str, Decision]:
    """The decisions file: a JSON object of non-primary image set ID ->
    ``{"action": "promote"|"merge", "corrections": {...}, "force": false,
    "version": "N"}``, or just the action's name.

    Raises:
        DecisionsError: unreadable, not JSON, or an entry that is not a decision.
    """
    fs, local = filesystem_for(path)
    try:
        with fs.open(local, "rb") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        raise DecisionsError(f"decisions file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise DecisionsError(f"decisions file {path} is not readable JSON: {error}") from None
    if not isinstance(raw, dict) or not raw:
        raise DecisionsError(
            f"decisions file {path} must be a JSON object of image set ID -> decision"
        )
    decisions = {}
    for image_set_id, entry in raw.items():
        if not IMAGE_SET_ID.fullmatch(image_set_id):
            raise DecisionsError(
                f"decisions file {path}: {image_set_id!r} is not an image set ID (32 hex)"
            )
        try:
            decisions[image_set_id] = Decision.model_validate(
                {"action": entry} if isinstance(entry, str) else entry
            )
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'decision'}: {e['msg']}"
                for e in error.errors(include_input=False)
            )
            raise DecisionsError(f"decisions file {path}: {image_set_id}: {problems}") from None
    return decisions


@dataclass(frozen=True)
class Plan:
    """What carrying out one decision takes, found out by reading only: the
    dry run prints it, ``--apply`` carries out exactly it."""

    image_set_id: str
    decision: Decision
    # The version the first write expects.
    version: str
    # The set's series, as its metadata document keys it now.
    series_instance_uid: str
    # Where its instances go: the study and series once corrected.
    target_study_instance_uid: str
    target_series_instance_uid: str
    # Keyword -> level of the metadata document (Patient, Study or Series).
    levels: dict[str, str] = field(default_factory=dict)
    primary_image_set_id: str | None = None
    primary_version: str | None = None
    # Keywords whose values the instances hold afterwards other than their
    # import stored them: corrected, or the primary set's kept (force).
    changed: tuple[str, ...] = ()

    @property
    def keywords(self) -> str | None:
        return SEPARATOR.join(self.levels) or None

    def update_payload(self) -> bytes:
        """The corrections in the metadata document shape."""
        payload: dict[str, Any] = {"SchemaVersion": SCHEMA_VERSION}
        for keyword, level in self.levels.items():
            value = self.decision.corrections[keyword]
            if level == "Patient":
                payload.setdefault("Patient", {"DICOM": {}})["DICOM"][keyword] = value
            elif level == "Study":
                payload.setdefault("Study", {}).setdefault("DICOM", {})[keyword] = value
            else:
                series = payload.setdefault("Study", {}).setdefault("Series", {})
                series.setdefault(self.series_instance_uid, {"DICOM": {}})["DICOM"][keyword] = value
        return json.dumps(payload).encode()

    def describe(self) -> str:
        """The steps, with IDs, versions and keywords: never a value."""
        force = ", force" if self.decision.force else ""
        steps = []
        if self.levels:
            steps.append(f"{UPDATE} {', '.join(self.levels)} (version {self.version}{force})")
        if self.decision.action is Action.MERGE:
            steps.append(f"{COPY} into primary image set {self.primary_image_set_id} "
                         f"(version {self.primary_version}{force})")
        else:
            steps.append(f"{COPY} with promoteToPrimary{force}")
        steps.append(f"{DELETE} {self.image_set_id}")
        changed = (f"; afterwards {', '.join(self.changed)} as reconciled, not as imported"
                   if self.changed else "")
        return f"(series {self.series_instance_uid}) " + "; then ".join(steps) + changed


def plan_decision(
    client: Any, datastore_id: str, image_set_id: str, decision: Decision
) -> Plan:
    """Check the decision against the data store as it is now, as the writes
    will: a decision planned here is one HealthImaging accepts, unless the
    sets change in between (each write then refuses a stale version).

    Raises:
        ReconcileError: the set is unknown, primary, busy, or the decision
            cannot apply to it, or one of its writes would be refused.
    """
    try:
        props = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            raise ReconcileError("no such image set in this data store") from None
        raise
    if props.get("imageSetState") != ImageSetState.ACTIVE:
        raise ReconcileError(
            f"it is {props.get('imageSetState')} ({props.get('imageSetWorkflowStatus')}): "
            "nothing can change it now"
        )
    if props.get("isPrimary", True):
        raise ReconcileError("it is a primary image set: nothing to reconcile")
    document = image_set_document(client, datastore_id, image_set_id) or {}
    series_uids = list((document.get("Study") or {}).get("Series") or {})
    if len(series_uids) != 1:
        raise ReconcileError(
            f"it holds {len(series_uids)} series; a decision applies to a set of one series"
        )
    series = series_uids[0]
    imported = element_levels(document, series)
    where = _correction_levels(decision, imported)
    corrected = {level: dict(attributes) for level, attributes in imported.items()}
    for keyword, level in where.items():
        corrected[level][keyword] = decision.corrections[keyword]
    study = str(corrected["Study"].get("StudyInstanceUID") or "")
    target_series = str(corrected["Series"].get("SeriesInstanceUID") or series)
    plan = Plan(image_set_id, decision, decision.version or str(props["versionId"]), series,
                study, target_series, where)
    primary = primary_image_set(client, datastore_id, study, target_series)
    if decision.action is Action.MERGE:
        if primary is None:
            raise ReconcileError(
                f"series {target_series} has no primary image set to merge into; promote it "
                "instead"
            )
        after = _merged(client, datastore_id, plan, primary["imageSetId"], document, corrected)
        return replace(plan, primary_image_set_id=primary["imageSetId"],
                       primary_version=str(primary["version"]),
                       changed=_changed(imported, after))
    if primary is not None:
        raise ReconcileError(
            f"series {target_series} already has primary image set {primary['imageSetId']}: "
            "merge into it, or correct StudyInstanceUID or SeriesInstanceUID (with force) "
            "before promoting"
        )
    return replace(plan, changed=_changed(imported, corrected))


def _correction_levels(decision: Decision, levels: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each corrected keyword's level, as UpdateImageSetMetadata will take it.

    Raises:
        ReconcileError: a keyword of no Patient, Study or Series level, or
            one that changes only with force, without it.
    """
    where = {}
    for keyword, value in decision.corrections.items():
        level = next((name for name, attributes in levels.items() if keyword in attributes),
                     _HOME_LEVEL.get(keyword))
        if level is None:
            raise ReconcileError(
                f"{keyword} is not a Patient, Study or Series attribute of this image set"
            )
        if not decision.force and (keyword in _NEEDS_FORCE or isinstance(value, list)):
            raise ReconcileError(f"{UPDATE} would be refused: {keyword} changes only with "
                                 "force (\"force\": true)")
        where[keyword] = level
    return where


def _merged(
    client: Any, datastore_id: str, plan: Plan, primary_id: str, document: dict[str, Any],
    corrected: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """The Patient, Study and Series attributes the instances hold once
    copied into the primary set: the primary's (a copy never rewrites what
    its other instances say; with force, differences are kept so).

    Raises:
        ReconcileError: the copy would be refused: an instance is in the
            primary set already, or values differ without force.
    """
    primary = image_set_document(client, datastore_id, primary_id)
    if primary is None:
        raise ReconcileError(f"primary image set {primary_id} is gone; look again")
    duplicates = _instances(document) & _instances(primary)
    if duplicates:
        raise ReconcileError(
            f"{COPY} would be refused: {len(duplicates)} of its SOP instances are in primary "
            f"image set {primary_id} already (an image set holds each once)"
        )
    kept = element_levels(primary, plan.target_series_instance_uid)
    if not kept["Series"]:
        kept["Series"] = corrected["Series"]
    differing = [keyword for level in _LEVELS
                 for keyword in sorted(set(kept[level]) & set(corrected[level]))
                 if kept[level][keyword] != corrected[level][keyword]]
    if differing and not plan.decision.force:
        raise ReconcileError(
            f"{COPY} would be refused: the values of {', '.join(differing)} differ from "
            f"primary image set {primary_id}; correct them, or set force to keep the primary "
            "set's values"
        )
    return kept


def _instances(document: dict[str, Any]) -> set[str]:
    series = (document.get("Study") or {}).get("Series") or {}
    return {uid for s in series.values() for uid in (s or {}).get("Instances") or {}}


def _changed(
    imported: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> tuple[str, ...]:
    """Keywords whose values differ between the import and the decision's end."""
    return tuple(dict.fromkeys(
        keyword for level in _LEVELS
        for keyword in sorted(set(imported[level]) | set(after[level]))
        if imported[level].get(keyword) != after[level].get(keyword)))


def _wait_until_written(
    client: Any, datastore_id: str, image_set_id: str, operation: str, timeout: float
) -> None:
    """Writes are asynchronous: the set stays LOCKED until the write ends.

    Raises:
        ReconcileError: the write ended *_FAILED, or did not end in time, or
            its end could not be read.
    """
    deadline = time.monotonic() + timeout
    interval = 0.1
    try:
        while True:
            props = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
            if props["imageSetState"] != ImageSetState.LOCKED:
                break
            if time.monotonic() > deadline:
                raise ReconcileError(
                    f"{operation} of image set {image_set_id} had not finished after "
                    f"{timeout:.0f} s (still LOCKED); look at it again later"
                )
            time.sleep(interval)
            interval = min(interval * 1.5, 5.0)
    except ClientError as error:
        raise ReconcileError(
            f"{operation} of image set {image_set_id} was accepted, but whether it finished "
            f"could not be read: {error_code(error)}: {_message(error)}"
        ) from None
    status = str(props.get("imageSetWorkflowStatus", ""))
    if status.endswith("_FAILED"):
        raise ReconcileError(f"{operation} of image set {image_set_id} ended {status}: "
                             f"{props.get('message') or 'no message'}")


def _message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def _refusal(operation: str, expected: str, error: ClientError) -> str:
    """One line for a refused write; ``expected`` names the versions it sent."""
    if error_code(error) == "ResourceNotFoundException" and _NOT_LATEST in _message(error):
        return (f"{operation} refused: {expected} is no longer the latest version (the set "
                "changed since); look at it again and decide again")
    return f"{operation} refused: {error_code(error)}: {_message(error)}"


class _Writer:
    """Carries out one plan's writes and records each in the ledger, refused
    and failed ones too."""

    def __init__(self, client: Any, datastore_id: str, plan: Plan, record: ReconcileRecord,
                 timeout: float) -> None:
        self.client = client
        self.datastore_id = datastore_id
        self.plan = plan
        self.record_to = record
        self.timeout = timeout

    def record(self, operation: str, image_set_id: str | None, before: str | None,
               after: str | None, error: str | None = None, **extra: Any) -> None:
        self.record_to.record(Change(
            self.plan.image_set_id, self.plan.decision.action.value, operation, image_set_id,
            before, after, ReconcileOutcome.FAILED if error else ReconcileOutcome.APPLIED,
            forced=self.plan.decision.force and operation != DELETE, error=error, **extra,
        ))

    def write(self, operation: str, image_set_id: str, before: str | None, expected: str,
              send: Any, **extra: Any) -> dict[str, Any]:
        """Send one write; a refusal is recorded and becomes a ReconcileError."""
        try:
            answer: dict[str, Any] = send()
            return answer
        except ClientError as error:
            line = _refusal(operation, expected, error)
            self.record(operation, image_set_id, before, None, line, **extra)
            raise ReconcileError(line) from None

    def finish(self, operation: str, image_set_ids: tuple[str, ...], image_set_id: str,
               before: str | None, after: str | None, **extra: Any) -> None:
        """Wait for an accepted write to end, and record it either way."""
        try:
            for waited in image_set_ids:
                _wait_until_written(self.client, self.datastore_id, waited, operation,
                                    self.timeout)
        except ReconcileError as error:
            self.record(operation, image_set_id, before, after, str(error), **extra)
            raise
        self.record(operation, image_set_id, before, after, **extra)

    def update(self) -> str:
        plan = self.plan
        expected = f"image set {plan.image_set_id} version {plan.version}"
        response = self.write(UPDATE, plan.image_set_id, plan.version, expected, lambda: (
            self.client.update_image_set_metadata(
                datastoreId=self.datastore_id, imageSetId=plan.image_set_id,
                latestVersionId=plan.version,
                updateImageSetMetadataUpdates={
                    "DICOMUpdates": {"updatableAttributes": plan.update_payload()}},
                force=plan.decision.force,
            )), attributes=plan.keywords)
        after = str(response["latestVersionId"])
        self.finish(UPDATE, (plan.image_set_id,), plan.image_set_id, plan.version, after,
                    attributes=plan.keywords)
        return after

    def copy(self, source_version: str) -> tuple[str, str, str]:
        """The primary set that now holds the instances, its version after
        the copy, and the source's."""
        plan = self.plan
        information: dict[str, Any] = {"sourceImageSet": {"latestVersionId": source_version}}
        expected = f"image set {plan.image_set_id} version {source_version}"
        if plan.decision.action is Action.MERGE:
            information["destinationImageSet"] = {
                "imageSetId": plan.primary_image_set_id,
                "latestVersionId": plan.primary_version}
            expected += (f" or primary image set {plan.primary_image_set_id} version "
                         f"{plan.primary_version}")
        source = {"source_image_set_id": plan.image_set_id, "source_version": source_version}
        response = self.write(
            COPY, plan.primary_image_set_id or plan.image_set_id, plan.primary_version,
            expected, lambda: self.client.copy_image_set(
                datastoreId=self.datastore_id, sourceImageSetId=plan.image_set_id,
                copyImageSetInformation=information, force=plan.decision.force,
                promoteToPrimary=plan.decision.action is Action.PROMOTE,
            ), **source)
        destination = response["destinationImageSetProperties"]
        target = destination["imageSetId"]
        target_version = str(destination["latestVersionId"])
        self.finish(COPY, (target, plan.image_set_id), target, plan.primary_version,
                    target_version, **source)
        source_after = response["sourceImageSetProperties"].get("latestVersionId")
        return target, target_version, str(source_after or source_version)

    def delete(self, version: str) -> None:
        image_set_id = self.plan.image_set_id
        self.write(DELETE, image_set_id, version, f"image set {image_set_id}",
                   lambda: self.client.delete_image_set(datastoreId=self.datastore_id,
                                                        imageSetId=image_set_id))
        self.finish(DELETE, (image_set_id,), image_set_id, version, None)


def apply_plan(
    client: Any, datastore_id: str, plan: Plan, record: ReconcileRecord, timeout: float
) -> str:
    """Carry out the plan; returns the primary image set that now holds the
    instances.

    Raises:
        ReconcileError: a write was refused or failed; the writes before it stand
            (and are in the ledger).
    """
    writer = _Writer(client, datastore_id, plan, record, timeout)
    version = writer.update() if plan.levels else plan.version
    primary, primary_version, version = writer.copy(version)
    # Before the delete: from here on the instances are in the primary set.
    record.place(Placement(plan.image_set_id, primary, primary_version,
                           plan.target_study_instance_uid, plan.target_series_instance_uid,
                           SEPARATOR.join(plan.changed) or None))
    writer.delete(version)
    return primary


class DecisionResult(BaseModel):
    image_set_id: str
    action: Action
    outcome: DecisionOutcome
    # One line, without the image set ID: the steps planned, what was done,
    # or why it failed. Never an attribute value.
    detail: str
    primary_image_set_id: str | None = None


def reconcile(
    datastore_id: str, image_set_id: str, decision: Decision, record: ReconcileRecord | None,
    timeout: float, client: Any | None = None,
) -> DecisionResult:
    """Plan one decision, and carry it out when ``record`` is given (``--apply``).
    Any failure is this decision's alone: the caller goes on with the others."""
    client = client or medical_imaging_client()

    def result(outcome: DecisionOutcome, detail: str,
               primary: str | None = None) -> DecisionResult:
        return DecisionResult(image_set_id=image_set_id, action=decision.action,
                              outcome=outcome, detail=detail, primary_image_set_id=primary)

    try:
        plan = plan_decision(client, datastore_id, image_set_id, decision)
        if record is None:
            return result(DecisionOutcome.PLANNED, plan.describe(), plan.primary_image_set_id)
        primary = apply_plan(client, datastore_id, plan, record, timeout)
    except ReconcileError as error:
        return result(DecisionOutcome.FAILED, str(error))
    except ClientError as error:
        return result(DecisionOutcome.FAILED, f"{error.operation_name} refused: "
                      f"{error_code(error)}: {_message(error)}")
    done = "merged into" if decision.action is Action.MERGE else "promoted to"
    return result(DecisionOutcome.APPLIED,
                  f"{done} primary image set {primary}; {image_set_id} deleted", primary)


def not_started(image_set_id: str, decision: Decision) -> DecisionResult:
    """A decision the run was stopped before: a decision under way finishes
    (its steps wait on HealthImaging's writes), the next one is not begun."""
    return DecisionResult(image_set_id=image_set_id, action=decision.action,
                          outcome=DecisionOutcome.NOT_STARTED,
                          detail="not started: the run was stopped")


@task(name="reconcile-image-set", cache_policy=NO_CACHE)
def reconcile_image_set(
    datastore_id: str, image_set_id: str, decision: Decision, record: ReconcileRecord | None,
    timeout: float,
) -> DecisionResult:
    result = reconcile(datastore_id, image_set_id, decision, record, timeout)
    get_run_logger().info("image set %s: %s %s: %s", image_set_id, decision.action.value,
                          result.outcome.value, result.detail)
    return result
