"""The instances DICOMweb reads and searches, kept in memory per image set
version, so that a search does not decompress every image set's metadata
document on every request.

Each image set's entry is the version it was read from; a search compares
that with the set's current version (the records are in memory already) and
reads again only the sets that changed. Whatever writes a version (an import
job, STOW-RS, an update, a copy, a revert, a rolled-back import) is therefore
seen at the next search without telling the index, and a set deleted or
rolled back drops out. The first search after a start reads every set once.

An entry keeps, per instance, the Patient, Study and Series attributes of its
set (shared, not copied) and the instance attributes that searches match and
return by default (``INSTANCE_KEYS``); anything else is read from the
document when a result asks for it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emulator.state.exceptions import ResourceNotFoundException
from emulator.state.imagesets import ImageSetRepository

# Instance attributes searched or returned by default (PS3.18 Table
# 6.7.1-2a's instance level, plus what QIDO-RS matches on).
INSTANCE_KEYS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "TimezoneOffsetFromUTC",
    "WarningReason",
)
# How a STOW-RS warning can be keyed in the document: by keyword as every
# known tag is, or by its tag.
WARNING_REASON_TAG = "00081196"


@dataclass(frozen=True)
class IndexedInstance:
    image_set_id: str
    version_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    patient: Mapping[str, Any]
    study: Mapping[str, Any]
    series: Mapping[str, Any]
    instance: Mapping[str, Any]
    # DICOMVRs of the set's instances together: the VRs of private tags at
    # the Patient, Study and Series levels are recorded per instance.
    vrs: Mapping[str, str]
    frame_count: int


@dataclass(frozen=True)
class IndexedSet:
    """An image set as a search sees it: its record now (primary or not,
    when it last changed) and its instances at its current version."""

    record: Mapping[str, Any]
    instances: tuple[IndexedInstance, ...]


@dataclass(frozen=True)
class _Entry:
    version_id: str
    instances: tuple[IndexedInstance, ...]


class DicomWebIndex:
    def __init__(self, image_sets: ImageSetRepository) -> None:
        self._image_sets = image_sets
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, _Entry]] = {}

    def image_sets(self, datastore_id: str, image_set_id: str | None = None) -> list[IndexedSet]:
        """The data store's primary image sets, or only ``image_set_id``
        (primary or not); deleted sets never."""
        records = self._image_sets.in_datastore(datastore_id)
        found = []
        with self._lock:
            entries = self._entries.setdefault(datastore_id, {})
            for record in records:
                if (record["imageSetId"] != image_set_id if image_set_id is not None
                        else not record["isPrimary"]):
                    continue
                entry = self._entry(entries, record)
                if entry is not None:
                    found.append(IndexedSet(record, entry.instances))
            current = {r["imageSetId"] for r in records}
            for gone in set(entries) - current:
                del entries[gone]
        return found

    def _entry(self, entries: dict[str, _Entry], record: Mapping[str, Any]) -> _Entry | None:
        image_set_id, version_id = record["imageSetId"], record["versionId"]
        entry = entries.get(image_set_id)
        if entry is not None and entry.version_id == version_id:
            return entry
        try:
            doc = self._image_sets.metadata(image_set_id, version_id)
        except (ResourceNotFoundException, KeyError):
            return None  # rolled back since the records were read
        entry = _Entry(version_id, instances_of(image_set_id, version_id, doc))
        entries[image_set_id] = entry
        return entry


def instances_of(
    image_set_id: str, version_id: str, doc: Mapping[str, Any]
) -> tuple[IndexedInstance, ...]:
    patient = (doc.get("Patient") or {}).get("DICOM") or {}
    study_doc = doc.get("Study") or {}
    study = study_doc.get("DICOM") or {}
    study_uid = str(study.get("StudyInstanceUID") or "")
    vrs: dict[str, str] = {}
    found = []
    for series_uid, series in (study_doc.get("Series") or {}).items():
        series_attributes = series.get("DICOM") or {}
        for sop_uid, instance in (series.get("Instances") or {}).items():
            dicom = instance.get("DICOM") or {}
            vrs.update(instance.get("DICOMVRs") or {})
            kept = {key: dicom[key] for key in INSTANCE_KEYS if key in dicom}
            if WARNING_REASON_TAG in dicom:
                kept.setdefault("WarningReason", dicom[WARNING_REASON_TAG])
            found.append(IndexedInstance(
                image_set_id, version_id, study_uid, series_uid, sop_uid, patient, study,
                series_attributes, kept, vrs, len(instance.get("ImageFrames") or []),
            ))
    return tuple(found)
