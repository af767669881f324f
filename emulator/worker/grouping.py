"""Placing imported instances into image sets (behaviour doc §3.3).

One primary image set per (StudyInstanceUID, SeriesInstanceUID) per data
store, across jobs. An instance joins it when its study- and series-level
elements (StudyDate, AccessionNumber, PatientID, StudyInstanceUID, StudyID,
SeriesInstanceUID, SeriesNumber) equal the set's; an SOP instance imported
again replaces the one in the set. A job makes at most one new version of each
set it touches, so ``imageSetVersion`` > 1 means the set existed before.

Choices where AWS publishes nothing:

* Instances are applied in input key order, so the first instance of a new
  series decides the primary set's elements.
* Conflicting instances of one job that agree among themselves share one new
  non-primary set; non-primary sets are never extended by later jobs.
* Patient, study and series attributes other than the compared ones keep the
  set's existing values; attributes the set lacks are added.
* A job's changes are committed under the repository lock in one step, after
  checking that no other write changed or locked a target set since it was
  read; otherwise the placement is computed again. Jobs in one data store
  place their instances one job at a time, so two jobs never both create the
  primary set of one series.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from emulator.state.imagesets import ImageSetRepository
from emulator.worker.dicom_json import InstanceAttributes

# (document level, keyword) of the elements compared with the primary set.
COMPARED_ELEMENTS = (
    ("Study", "StudyDate"),
    ("Study", "AccessionNumber"),
    ("Patient", "PatientID"),
    ("Study", "StudyInstanceUID"),
    ("Study", "StudyID"),
    ("Series", "SeriesInstanceUID"),
    ("Series", "SeriesNumber"),
)
WORKFLOW_STATUS = "IMPORTED"
# How long placement waits for other writes (Update, Copy, Delete) on the
# sets it targets before the job fails.
BUSY_TIMEOUT_SECONDS = 60.0
_BUSY_POLL_SECONDS = 0.05

_datastore_locks: dict[str, threading.Lock] = {}
_datastore_locks_guard = threading.Lock()


class ImageSetsBusy(Exception):
    """Target image sets stayed locked by other writes for too long."""


@dataclass
class PreparedInstance:
    """An instance whose frames are stored, ready to be placed."""

    input_file: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    attributes: InstanceAttributes
    entry: dict[str, Any]

    def identity(self) -> tuple[Any, ...]:
        return _identity(
            {
                "Patient": self.attributes.patient,
                "Study": self.attributes.study,
                "Series": self.attributes.series,
            }
        )


@dataclass(frozen=True)
class Placement:
    image_set_id: str
    is_primary: bool


@dataclass(frozen=True)
class ImageSetSummary:
    image_set_id: str
    version: int
    is_primary: bool
    matched_sop_instances: int

    def as_json(self) -> dict[str, Any]:
        return {
            "imageSetId": self.image_set_id,
            "imageSetVersion": self.version,
            "isPrimary": self.is_primary,
            "numberOfMatchedSOPInstances": self.matched_sop_instances,
        }


@dataclass
class PlacementResult:
    placements: dict[str, Placement] = field(default_factory=dict)
    summaries: list[ImageSetSummary] = field(default_factory=list)


@dataclass
class _Target:
    """An image set this job creates or extends, with its new document."""

    image_set_id: str | None
    is_primary: bool
    base_version: str | None
    doc: dict[str, Any]
    identity: tuple[Any, ...]
    input_files: list[str] = field(default_factory=list)
    sop_instance_uids: set[str] = field(default_factory=set)

    def add(self, instance: PreparedInstance) -> None:
        attributes = instance.attributes
        _merge(self.doc.setdefault("Patient", {}).setdefault("DICOM", {}), attributes.patient)
        study = self.doc.setdefault("Study", {})
        _merge(study.setdefault("DICOM", {}), attributes.study)
        series = study.setdefault("Series", {}).setdefault(instance.series_instance_uid, {})
        _merge(series.setdefault("DICOM", {}), attributes.series)
        series.setdefault("Instances", {})[instance.sop_instance_uid] = instance.entry
        self.input_files.append(instance.input_file)
        self.sop_instance_uids.add(instance.sop_instance_uid)


def _identity(levels: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """The compared elements, hashable (a malformed file may repeat a value)."""
    values = (levels[level].get(keyword) for level, keyword in COMPARED_ELEMENTS)
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)


def _merge(level: dict[str, Any], attributes: dict[str, Any]) -> None:
    for keyword, value in attributes.items():
        level.setdefault(keyword, value)


def _datastore_lock(datastore_id: str) -> threading.Lock:
    with _datastore_locks_guard:
        return _datastore_locks.setdefault(datastore_id, threading.Lock())


def place_instances(
    repository: ImageSetRepository,
    datastore_id: str,
    instances: list[PreparedInstance],
    import_job_id: str,
) -> PlacementResult:
    """Put ``instances`` (in the order given) into image sets and commit them,
    marked as import ``import_job_id``'s writes (undone if it fails)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    with _datastore_lock(datastore_id):
        while True:
            targets = _plan(repository, datastore_id, instances)
            if targets is not None:
                result = _commit(repository, datastore_id, targets, import_job_id)
                if result is not None:
                    return result
            if time.monotonic() > deadline:
                raise ImageSetsBusy(
                    f"Image sets in data store {datastore_id} stayed locked by other writes "
                    f"for {BUSY_TIMEOUT_SECONDS:.0f} s"
                )
            time.sleep(_BUSY_POLL_SECONDS)


def _existing_primaries(
    repository: ImageSetRepository, datastore_id: str
) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in sorted(repository.in_datastore(datastore_id), key=lambda r: r["createdAt"]):
        tags = record.get("dicomTags") or {}
        study, series = tags.get("DICOMStudyInstanceUID"), tags.get("DICOMSeriesInstanceUID")
        if record["isPrimary"] and study is not None and series is not None:
            found.setdefault((study, series), dict(record))
    return found


def _doc_identity(doc: dict[str, Any], series_instance_uid: str) -> tuple[Any, ...]:
    series = doc.get("Study", {}).get("Series", {}).get(series_instance_uid, {})
    return _identity(
        {
            "Patient": doc.get("Patient", {}).get("DICOM", {}),
            "Study": doc.get("Study", {}).get("DICOM", {}),
            "Series": series.get("DICOM", {}),
        }
    )


def _plan(
    repository: ImageSetRepository, datastore_id: str, instances: list[PreparedInstance]
) -> list[_Target] | None:
    """Targets in the order they were first needed, or None while a set the
    job needs is locked by another write."""
    with repository.lock:
        primaries = _existing_primaries(repository, datastore_id)
    primary_targets: dict[tuple[str, str], _Target] = {}
    other_targets: dict[tuple[Any, ...], _Target] = {}
    order: list[_Target] = []
    for instance in instances:
        key = (instance.study_instance_uid, instance.series_instance_uid)
        primary = primary_targets.get(key)
        if primary is None:
            record = primaries.get(key)
            if record is None:
                primary = _Target(None, True, None, {"SchemaVersion": "1.1"}, instance.identity())
            elif record["imageSetState"] != "ACTIVE":
                return None
            else:
                doc = repository.metadata(record["imageSetId"], record["versionId"])
                identity = _doc_identity(doc, instance.series_instance_uid)
                primary = _Target(record["imageSetId"], True, record["versionId"], doc, identity)
            primary_targets[key] = primary
            order.append(primary)
        target = primary
        if instance.identity() != primary.identity:
            other_key = (*key, *instance.identity())
            if other_key not in other_targets:
                other_targets[other_key] = _Target(
                    None, False, None, {"SchemaVersion": "1.1"}, instance.identity()
                )
                order.append(other_targets[other_key])
            target = other_targets[other_key]
        target.add(instance)
    # An existing primary set whose instances all conflicted gets no version.
    return [target for target in order if target.input_files]


def _commit(
    repository: ImageSetRepository,
    datastore_id: str,
    targets: list[_Target],
    import_job_id: str,
) -> PlacementResult | None:
    """Write every target, or nothing (None) if another write got there first."""
    result = PlacementResult()
    with repository.lock:
        for target in targets:
            if target.image_set_id is None:
                continue
            record = repository.get(datastore_id, target.image_set_id)
            if (
                record["versionId"] != target.base_version
                or record["imageSetState"] != "ACTIVE"
            ):
                return None
        for target in targets:
            if target.image_set_id is None:
                record = repository.create(
                    datastore_id,
                    target.doc,
                    is_primary=target.is_primary,
                    workflow_status=WORKFLOW_STATUS,
                    import_job_id=import_job_id,
                )
            else:
                record = repository.add_version(
                    target.image_set_id,
                    target.doc,
                    workflow_status=WORKFLOW_STATUS,
                    import_job_id=import_job_id,
                )
            placement = Placement(record["imageSetId"], target.is_primary)
            result.placements.update(dict.fromkeys(target.input_files, placement))
            result.summaries.append(
                ImageSetSummary(
                    record["imageSetId"],
                    int(record["versionId"]),
                    target.is_primary,
                    len(target.sop_instance_uids),
                )
            )
    return result
