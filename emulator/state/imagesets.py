"""Image sets: the current record of each set, every version's metadata
document, and the frames. Shared by the import worker (which creates and
extends sets) and the image set operations (read, search, update, copy,
delete).

Every version stays readable: a version is an immutable gzip-compressed
metadata document plus a small record; frames are immutable blobs shared by
all versions (and by copies) that reference their IDs.

What an import job writes (frames, new sets, new versions) carries the job's
ID in its own record, written with it, so that a job that ends FAILED, even
one cut off by a crash and failed on restart, can be undone from the store
alone (``roll_back_import``): no separate journal can disagree with it.
"""

from __future__ import annotations

import copy
import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from emulator.state.exceptions import ResourceNotFoundException
from emulator.state.records import IMAGE_SET_WRITE_ENDS, checked_image_set_change
from emulator.state.store import Store

SET_KIND = "imageset"
VERSION_KIND = "imageset_version"
FRAME_KIND = "frame"

# DICOMTags of a SearchImageSets item -> (level, DICOM keyword).
SEARCH_TAGS: dict[str, tuple[str, str]] = {
    "DICOMPatientId": ("Patient", "PatientID"),
    "DICOMPatientName": ("Patient", "PatientName"),
    "DICOMPatientBirthDate": ("Patient", "PatientBirthDate"),
    "DICOMPatientSex": ("Patient", "PatientSex"),
    "DICOMStudyInstanceUID": ("Study", "StudyInstanceUID"),
    "DICOMStudyId": ("Study", "StudyID"),
    "DICOMStudyDescription": ("Study", "StudyDescription"),
    "DICOMAccessionNumber": ("Study", "AccessionNumber"),
    "DICOMStudyDate": ("Study", "StudyDate"),
    "DICOMStudyTime": ("Study", "StudyTime"),
    "DICOMSeriesInstanceUID": ("Series", "SeriesInstanceUID"),
    "DICOMSeriesModality": ("Series", "Modality"),
    "DICOMSeriesBodyPart": ("Series", "BodyPartExamined"),
    "DICOMSeriesNumber": ("Series", "SeriesNumber"),
}


def new_id() -> str:
    return uuid.uuid4().hex


def dicom_tags(doc: dict[str, Any]) -> dict[str, Any]:
    """The DICOMTags summary SearchImageSets returns, derived from a document."""
    series_map = doc.get("Study", {}).get("Series", {})
    series: dict[str, Any] = next(iter(series_map.values()), {}) if series_map else {}
    levels = {
        "Patient": doc.get("Patient", {}).get("DICOM", {}),
        "Study": doc.get("Study", {}).get("DICOM", {}),
        "Series": series.get("DICOM", {}),
    }
    tags: dict[str, Any] = {}
    for name, (level, keyword) in SEARCH_TAGS.items():
        value = levels[level].get(keyword)
        if value is None:
            continue
        if name == "DICOMSeriesNumber":
            try:
                value = int(value)
            except (TypeError, ValueError):
                continue
        tags[name] = value if isinstance(value, int) else str(value)
    if series_map:
        tags.setdefault("DICOMSeriesInstanceUID", next(iter(series_map)))
    tags["DICOMNumberOfStudyRelatedSeries"] = len(series_map)
    tags["DICOMNumberOfStudyRelatedInstances"] = sum(
        len(s.get("Instances", {})) for s in series_map.values()
    )
    return tags


# A touch is written to disk at most this often per set (frames are read at
# up to 1,000/s); a restart can make lastAccessedAt this much older, which
# does not matter for a 30-day tier.
_PERSIST_ACCESS_EVERY = 3600.0


class ImageSetRepository:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.now = clock
        self._persisted_access: dict[str, float] = {}
        self.lock = threading.RLock()
        # Read through ``get`` and ``in_datastore``, which end due writes first.
        self._sets: dict[str, dict[str, Any]] = dict(store.load(SET_KIND))
        self.versions: dict[str, list[dict[str, Any]]] = {}
        for _, record in store.load(VERSION_KIND):
            self.versions.setdefault(record["imageSetId"], []).append(record)
        for records in self.versions.values():
            records.sort(key=lambda r: int(r["versionId"]))
        self.frames: dict[str, dict[str, Any]] = dict(store.load(FRAME_KIND))

    # -- frames -------------------------------------------------------------
    def put_frame(
        self, frame_id: str, data: bytes, transfer_syntax_uid: str, *, import_job_id: str
    ) -> None:
        # The record goes after the blob: a crash in between leaves a blob no
        # record names, never a record without its blob.
        self._store.put_blob(f"frames/{frame_id}", data)
        record = {
            "transferSyntaxUID": transfer_syntax_uid,
            "size": len(data),
            "importJobId": import_job_id,
        }
        with self.lock:
            self.frames[frame_id] = record
            self._store.put(FRAME_KIND, frame_id, record)

    def frame(self, frame_id: str) -> tuple[bytes, str]:
        record = self.frames.get(frame_id)
        if record is None:
            raise ResourceNotFoundException(f"Image frame {frame_id} does not exist")
        return self._store.get_blob(f"frames/{frame_id}"), record["transferSyntaxUID"]

    # -- sets and versions --------------------------------------------------
    def _settled(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with its write ended (and stored) once the write is due:
        no timer ends a write, so however many run at once each set is
        ACTIVE as soon as its time has passed, and a write cut off by a
        restart ends on the first read after it. A LOCKED record stored
        without a due time (by an earlier version of the service) is due at
        once. The lock is taken only while a write is pending."""
        if record["imageSetState"] != "LOCKED":
            return record
        with self.lock:
            if record["imageSetState"] != "LOCKED":
                return record
            due = record.get("writeDueAt")
            late = 0.0 if due is None else time.time() - due
            if late < 0:
                return record
            state, workflow_status = IMAGE_SET_WRITE_ENDS[
                (record["imageSetState"], record["imageSetWorkflowStatus"])
            ]
            # The service clock's reading when the write was due (that clock
            # can be moved, so it is not the due time itself).
            ended_at = self.now() - late
            extra = {"deletedAt": ended_at} if state == "DELETED" else {}
            self._restate(record, state, workflow_status, ended_at, **extra)
        return record

    @staticmethod
    def _change(
        record: dict[str, Any],
        state: str,
        workflow_status: str,
        now: float,
        *,
        lock_seconds: float | None = None,
        message: str | None = None,
        **fields: Any,
    ) -> None:
        """Every state change of a set goes through here, checked against
        ``IMAGE_SET_TRANSITIONS`` (which allows LOCKED only as the start of a
        write); a write says how long it locks the set (``lock_seconds``),
        which becomes its due time."""
        current = (
            (record["imageSetState"], record["imageSetWorkflowStatus"])
            if "imageSetState" in record
            else None
        )
        checked_image_set_change(current, (state, workflow_status))
        record.update(
            imageSetState=state,
            imageSetWorkflowStatus=workflow_status,
            updatedAt=now,
            message=message,
            **fields,
        )
        record.pop("writeDueAt", None)
        if lock_seconds is not None:
            record["writeDueAt"] = time.time() + lock_seconds

    def get(self, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        record = self._sets.get(image_set_id)
        if record is None or record["datastoreId"] != datastore_id:
            raise ResourceNotFoundException(
                f"Image set {image_set_id} does not exist in data store {datastore_id}"
            )
        return self._settled(record)

    def version(self, image_set_id: str, version_id: str | int | None = None) -> dict[str, Any]:
        records = self.versions.get(image_set_id, [])
        if version_id is None:
            if not records:
                raise ResourceNotFoundException(f"Image set {image_set_id} has no version")
            return records[-1]
        for record in records:
            if record["versionId"] == str(version_id):
                return record
        raise ResourceNotFoundException(
            f"Version {version_id} of image set {image_set_id} does not exist"
        )

    def metadata_blob(self, image_set_id: str, version_id: str | int | None = None) -> bytes:
        record = self.version(image_set_id, version_id)
        return self._store.get_blob(record["metadataKey"])

    def metadata(self, image_set_id: str, version_id: str | int | None = None) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(
            gzip.decompress(self.metadata_blob(image_set_id, version_id)))
        return document

    def create(
        self,
        datastore_id: str,
        doc: dict[str, Any],
        *,
        is_primary: bool,
        workflow_status: str,
        lock_seconds: float | None = None,
        import_job_id: str | None = None,
    ) -> dict[str, Any]:
        """A new image set at version 1. The caller fills ``doc`` in full; the
        repository stamps DatastoreID and ImageSetID into it."""
        image_set_id = new_id()
        now = self.now()
        with self.lock:
            self._sets[image_set_id] = {
                "datastoreId": datastore_id,
                "imageSetId": image_set_id,
                "versionId": "0",
                "createdAt": now,
                "lastAccessedAt": now,
                "isPrimary": is_primary,
            }
            return self.add_version(
                image_set_id,
                doc,
                workflow_status=workflow_status,
                lock_seconds=lock_seconds,
                import_job_id=import_job_id,
            )

    def add_version(
        self,
        image_set_id: str,
        doc: dict[str, Any],
        *,
        workflow_status: str,
        lock_seconds: float | None = None,
        message: str | None = None,
        is_primary: bool | None = None,
        overrides: dict[str, bool] | None = None,
        import_job_id: str | None = None,
    ) -> dict[str, Any]:
        """Append a version with ``doc`` and make it current: ACTIVE, or for
        a write LOCKED for ``lock_seconds``. ``overrides`` records that the
        version was written with force (GetImageSet and ListImageSetVersions
        report it). A version an import job writes keeps the set's record as
        it was before (none for a set the job creates): what
        ``roll_back_import`` puts back."""
        state = "ACTIVE" if lock_seconds is None else "LOCKED"
        with self.lock:
            record = self._sets[image_set_id]
            before = (
                copy.deepcopy(record)
                if import_job_id is not None and record["versionId"] != "0"
                else None
            )
            number = int(record["versionId"]) + 1
            doc["DatastoreID"] = record["datastoreId"]
            doc["ImageSetID"] = image_set_id
            doc.setdefault("SchemaVersion", "1.1")
            key = f"metadata/{image_set_id}/{number}.json.gz"
            self._store.put_blob(key, gzip.compress(json.dumps(doc).encode(), compresslevel=5))
            now = self.now()
            if is_primary is not None:
                record["isPrimary"] = is_primary
            self._change(
                record,
                state,
                workflow_status,
                now,
                lock_seconds=lock_seconds,
                message=message,
                versionId=str(number),
                dicomTags=dicom_tags(doc),
                # Search matches any series of a set (a copy can merge several).
                seriesInstanceUIDs=list(doc.get("Study", {}).get("Series", {})),
            )
            version = {
                "imageSetId": image_set_id,
                "versionId": str(number),
                "imageSetState": state,
                "ImageSetWorkflowStatus": workflow_status,
                "createdAt": now,
                "updatedAt": now,
                "message": message,
                "isPrimary": record["isPrimary"],
                "metadataKey": key,
                "overrides": overrides,
            }
            if import_job_id is not None:
                version.update(importJobId=import_job_id, setBefore=before)
            self.versions.setdefault(image_set_id, []).append(version)
            self._store.put(VERSION_KIND, f"{image_set_id}/{number}", version)
            self._store.put(SET_KIND, image_set_id, record)
            return record

    def roll_back_import(self, import_job_id: str) -> None:
        """Remove what import job ``import_job_id`` wrote: the sets it
        created, the versions it added (each set back at its earlier
        version) and its frames. Done under the lock, so a reader sees the
        job's writes whole or not at all. A version of the job that a later
        write built on is kept: removing it would renumber that write's.

        Safe to repeat after a crash part-way: the set's record is put back
        before the job's version record goes, so a rerun still finds it."""
        with self.lock:
            for image_set_id, versions in list(self.versions.items()):
                if versions and versions[-1].get("importJobId") == import_job_id:
                    self._drop_current_version(image_set_id, versions)
            frame_ids = [
                frame_id
                for frame_id, record in self.frames.items()
                if record.get("importJobId") == import_job_id
            ]
            for frame_id in frame_ids:
                self.frames.pop(frame_id)
                self._store.delete(FRAME_KIND, frame_id)
                self._store.delete_blob(f"frames/{frame_id}")

    def _drop_current_version(self, image_set_id: str, versions: list[dict[str, Any]]) -> None:
        version = versions[-1]
        before = version["setBefore"]
        if before is None:
            self._sets.pop(image_set_id, None)
            self._store.delete(SET_KIND, image_set_id)
        else:
            record = self._sets[image_set_id]
            # Reads since the import still count for the storage tier.
            before["lastAccessedAt"] = record["lastAccessedAt"]
            record.clear()
            record.update(before)
            self._store.put(SET_KIND, image_set_id, record)
        self._store.delete(VERSION_KIND, f"{image_set_id}/{version['versionId']}")
        self._store.delete_blob(version["metadataKey"])
        versions.pop()
        if not versions:
            del self.versions[image_set_id]

    def touch(self, image_set_id: str) -> None:
        """Record an access (see ``storage_tiers`` for which calls are one)."""
        with self.lock:
            record = self._sets[image_set_id]
            now = self.now()
            record["lastAccessedAt"] = now
            if now - self._persisted_access.get(image_set_id, 0.0) >= _PERSIST_ACCESS_EVERY:
                self._persisted_access[image_set_id] = now
                self._store.put(SET_KIND, image_set_id, record)

    def lock_for_write(
        self, image_set_id: str, *, workflow_status: str, lock_seconds: float
    ) -> dict[str, Any]:
        """Lock the set for a write that adds no version: the source of a
        copy, a delete."""
        with self.lock:
            record = self._sets[image_set_id]
            self._restate(
                record, "LOCKED", workflow_status, self.now(), lock_seconds=lock_seconds
            )
            return record

    def _restate(
        self,
        record: dict[str, Any],
        state: str,
        workflow_status: str,
        now: float,
        *,
        lock_seconds: float | None = None,
        **fields: Any,
    ) -> None:
        """Change the state of the set and of its current version, which
        GetImageSet and ListImageSetVersions describe."""
        self._change(record, state, workflow_status, now, lock_seconds=lock_seconds, **fields)
        current = self.versions[record["imageSetId"]][-1]
        current.update(
            imageSetState=state, ImageSetWorkflowStatus=workflow_status, updatedAt=now, **fields
        )
        self._store.put(SET_KIND, record["imageSetId"], record)
        self._store.put(VERSION_KIND, f"{record['imageSetId']}/{current['versionId']}", current)

    def in_datastore(
        self, datastore_id: str, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        with self.lock:
            records = [
                self._settled(r) for r in self._sets.values() if r["datastoreId"] == datastore_id
            ]
        return [r for r in records if include_deleted or r["imageSetState"] != "DELETED"]
