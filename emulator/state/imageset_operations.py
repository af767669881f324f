"""Image set operations of the HealthImaging data plane (mixin of the backend).

Writes (update, copy, delete) are checked and applied under the backend lock,
leave the image sets LOCKED and become ACTIVE after ``config.write_seconds``,
as the real service's asynchronous writes do. A write's new version is
written at once (LOCKED) and reported in the response, as the AWS CLI
examples show (``latestVersionId`` in the response is the new version).
Every version stays readable; frames are shared by versions and copies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from emulator.state import copies, search
from emulator.state.exceptions import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from emulator.state.imagesets import dicom_tags
from emulator.state.metadata_updates import apply_dicom_updates, parse_payload, study_level_part
from emulator.state.pagination import paginate
from emulator.state.storage_tiers import tier_properties

if TYPE_CHECKING:
    from emulator.config import ServiceConfig
    from emulator.state.imagesets import ImageSetRepository
    from emulator.state.records import Datastore

NOT_LATEST = "Requested version(s) of ImageSet(s) is not the latest."

# GetImageFrame Content-Type by stored transfer syntax (model documentation).
FRAME_CONTENT_TYPES = {
    "1.2.840.10008.1.2.1": "application/octet-stream",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    # Not documented for JPEG 2000 lossless (.90): the same raw J2K codestream
    # as .91, so the same type.
    "1.2.840.10008.1.2.4.90": "image/j2c",
    "1.2.840.10008.1.2.4.91": "image/j2c",
    "1.2.840.10008.1.2.4.202": "image/jph",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.4.107": "video/H256",
    "1.2.840.10008.1.2.4.108": "video/H256",
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.100",
            "1.2.840.10008.1.2.4.100.1",
            "1.2.840.10008.1.2.4.101",
            "1.2.840.10008.1.2.4.101.1",
        ),
        "video/mpeg",
    ),
    **dict.fromkeys(
        (f"1.2.840.10008.1.2.4.{n}{suffix}" for n in range(102, 107) for suffix in ("", ".1")),
        "video/mp4",
    ),
}
DEFAULT_FRAME_CONTENT_TYPE = "image/jph"


def _frame_ids(doc: dict[str, Any]) -> set[str]:
    return {
        frame["ID"]
        for series in doc.get("Study", {}).get("Series", {}).values()
        for instance in series.get("Instances", {}).values()
        for frame in instance.get("ImageFrames", [])
    }


class ImageSetOperations:
    if TYPE_CHECKING:
        config: ServiceConfig
        image_sets: ImageSetRepository
        lock: threading.RLock

        def _datastore(self, datastore_id: str) -> Datastore: ...
        def active_datastore(self, datastore_id: str) -> Datastore: ...
        def image_set_arn(self, datastore_id: str, image_set_id: str) -> str: ...

    # -- lookups and guards -------------------------------------------------
    def _image_set(self, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        self._datastore(datastore_id)
        return self.image_sets.get(datastore_id, image_set_id)

    def _readable(self, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        """Metadata and frames of a DELETED set are gone (404), while
        GetImageSet and ListImageSetVersions still describe it."""
        record = self._image_set(datastore_id, image_set_id)
        if record["imageSetState"] == "DELETED":
            raise ResourceNotFoundException(f"Image set {image_set_id} has been deleted")
        return record

    def _writable(self, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        self.active_datastore(datastore_id)
        record = self.image_sets.get(datastore_id, image_set_id)
        if record["imageSetState"] != "ACTIVE":
            raise ConflictException(
                f"Image set {image_set_id} is {record['imageSetState']} "
                f"({record['imageSetWorkflowStatus']}); wait until it is ACTIVE"
            )
        return record

    @staticmethod
    def _check_latest(record: dict[str, Any], version_id: str) -> None:
        if record["versionId"] != version_id:
            raise ResourceNotFoundException(NOT_LATEST)

    def _check_write_quota(self, datastore_id: str) -> None:
        running = sum(
            1 for r in self.image_sets.in_datastore(datastore_id) if r["imageSetState"] == "LOCKED"
        )
        if running >= self.config.max_concurrent_writes:
            raise ServiceQuotaExceededException(
                f"Data store {datastore_id} already runs {running} image set writes; "
                f"the limit is {self.config.max_concurrent_writes}"
            )

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """The backend lock orders writes against each other; the repository
        lock keeps an import from committing a version between a write's
        checks and its own version (the importer takes only that one)."""
        with self.lock, self.image_sets.lock:
            yield

    def _version_properties(
        self, record: dict[str, Any], version: dict[str, Any]
    ) -> dict[str, Any]:
        """One version as GetImageSet/ListImageSetVersions describe it.
        createdAt is the image set's, updatedAt the version's (as in the
        AWS CLI examples). Once the set is deleted every version reports
        DELETED, since none of them can be read any more."""
        deleted = record["imageSetState"] == "DELETED"
        current = version["versionId"] == record["versionId"]
        return {
            "imageSetId": record["imageSetId"],
            "versionId": version["versionId"],
            "imageSetState": "DELETED" if deleted else version["imageSetState"],
            "ImageSetWorkflowStatus": version["ImageSetWorkflowStatus"],
            "createdAt": record["createdAt"],
            "updatedAt": version["updatedAt"],
            "deletedAt": record.get("deletedAt") if deleted else None,
            "message": record.get("message") if current else version.get("message"),
            "overrides": version.get("overrides"),
            "isPrimary": version.get("isPrimary", record["isPrimary"]),
        }

    # -- reads --------------------------------------------------------------
    def get_image_set(
        self, datastoreId: str, imageSetId: str, versionId: str | None = None
    ) -> dict[str, Any]:
        record = self._image_set(datastoreId, imageSetId)
        props = self._version_properties(record, self.image_sets.version(imageSetId, versionId))
        return {
            "datastoreId": datastoreId,
            "imageSetArn": self.image_set_arn(datastoreId, imageSetId),
            "imageSetWorkflowStatus": props.pop("ImageSetWorkflowStatus"),
            **props,
            **tier_properties(record, self.image_sets.now()),
        }

    def get_image_set_metadata(
        self, datastoreId: str, imageSetId: str, versionId: str | None = None
    ) -> dict[str, Any]:
        """Always gzip, whatever Accept-Encoding says, as AWS does."""
        self._readable(datastoreId, imageSetId)
        blob = self.image_sets.metadata_blob(imageSetId, versionId)
        self.image_sets.touch(imageSetId)
        return {
            "imageSetMetadataBlob": blob,
            "contentType": "application/json",
            "contentEncoding": "gzip",
        }

    def get_image_frame(
        self, datastoreId: str, imageSetId: str, imageFrameInformation: dict[str, str]
    ) -> dict[str, Any]:
        """The frame must be referenced by the current version of this image
        set (a frame of another set, or only of an older version, is 404), so
        a frame ID cannot be used to read pixels through an unrelated set."""
        frame_id = imageFrameInformation["imageFrameId"]
        self._readable(datastoreId, imageSetId)
        if frame_id not in _frame_ids(self.image_sets.metadata(imageSetId)):
            raise ResourceNotFoundException(
                f"Image frame {frame_id} does not exist in image set {imageSetId}"
            )
        data, syntax = self.image_sets.frame(frame_id)
        self.image_sets.touch(imageSetId)
        return {
            "imageFrameBlob": data,
            "contentType": FRAME_CONTENT_TYPES.get(syntax, DEFAULT_FRAME_CONTENT_TYPE),
        }

    def search_image_sets(
        self,
        datastoreId: str,
        searchCriteria: dict[str, Any] | None = None,
        maxResults: int | None = None,
        nextToken: str | None = None,
    ) -> dict[str, Any]:
        """Filters are ANDed; any combination of attributes is accepted
        (AWS does not publish which pairs it supports). Deleted image sets
        are never found; LOCKED ones are. Without criteria every set is
        listed."""
        self._datastore(datastoreId)
        filters = search.parse_filters(searchCriteria)
        sort = (searchCriteria or {}).get("sort")
        with self.image_sets.lock:
            records = [
                r
                for r in self.image_sets.in_datastore(datastoreId)
                if all(f.matches(r) for f in filters)
            ]
            items = search.ordered(records, sort)
        page, token = paginate(items, maxResults, nextToken, (datastoreId, searchCriteria))
        now = self.image_sets.now()
        return {
            "imageSetsMetadataSummaries": [
                {
                    "imageSetId": r["imageSetId"],
                    "version": int(r["versionId"]),
                    "createdAt": r["createdAt"],
                    "updatedAt": r["updatedAt"],
                    "isPrimary": r["isPrimary"],
                    "DICOMTags": r.get("dicomTags", {}),
                    **tier_properties(r, now),
                }
                for r in page
            ],
            "sort": sort,
            "nextToken": token,
        }

    def list_image_set_versions(
        self,
        datastoreId: str,
        imageSetId: str,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        """Newest version first, as in the AWS CLI example output."""
        record = self._image_set(datastoreId, imageSetId)
        versions = list(reversed(self.image_sets.versions.get(imageSetId, [])))
        page, token = paginate(versions, maxResults, nextToken, (datastoreId, imageSetId))
        return {
            "imageSetPropertiesList": [self._version_properties(record, v) for v in page],
            "nextToken": token,
        }

    # -- writes -------------------------------------------------------------
    def update_image_set_metadata(
        self,
        datastoreId: str,
        imageSetId: str,
        latestVersionId: str,
        updateImageSetMetadataUpdates: dict[str, Any],
        force: bool | None = None,
        includeStudyImageSets: bool | None = None,
    ) -> dict[str, Any]:
        """New version LOCKED/UPDATING now, ACTIVE/UPDATED after
        ``config.write_seconds``. Constraint violations are refused up front
        with ValidationException rather than ending UPDATE_FAILED later: AWS
        documents the constraints but not when it checks them, and a
        synchronous error is the one a client cannot overlook.

        Over ``config.max_update_payload_bytes`` (10 KB, both payloads
        together) is ServiceQuotaExceededException. A revert to a version that
        does not exist is ResourceNotFoundException.

        includeStudyImageSets applies the Patient and Study parts of the
        update to every other primary image set of the same Study Instance
        UID (each gets a new version; any of them LOCKED fails the whole
        request with ConflictException). Not enforced: the newest developer
        guide's note that Patient and Series attributes of primary image sets
        cannot be updated at all."""
        force = bool(force)
        revert = updateImageSetMetadataUpdates.get("revertToVersionId")
        with self._write_lock():
            record = self._writable(datastoreId, imageSetId)
            self._check_latest(record, latestVersionId)
            self._check_write_quota(datastoreId)
            if revert is not None:
                if includeStudyImageSets:
                    raise ValidationException(
                        "includeStudyImageSets cannot be used with revertToVersionId"
                    )
                targets = [(imageSetId, self.image_sets.metadata(imageSetId, revert))]
            else:
                targets = self._planned_updates(
                    record,
                    updateImageSetMetadataUpdates.get("DICOMUpdates") or {},
                    force,
                    bool(includeStudyImageSets),
                )
            overrides = {"forced": True} if force else None
            for target_id, doc in targets:
                self.image_sets.add_version(
                    target_id,
                    doc,
                    workflow_status="UPDATING",
                    lock_seconds=self.config.write_seconds,
                    overrides=overrides,
                )
                self.image_sets.touch(target_id)
            result = self.image_sets.get(datastoreId, imageSetId)
        return {
            "datastoreId": datastoreId,
            "imageSetId": imageSetId,
            "latestVersionId": result["versionId"],
            "imageSetState": result["imageSetState"],
            "imageSetWorkflowStatus": result["imageSetWorkflowStatus"],
            "createdAt": result["createdAt"],
            "updatedAt": result["updatedAt"],
            "message": result.get("message"),
        }

    def _planned_updates(
        self, record: dict[str, Any], dicom_updates: dict[str, Any], force: bool, whole_study: bool
    ) -> list[tuple[str, dict[str, Any]]]:
        """(image set ID, new document) for every set the update touches."""
        updatable_raw = dicom_updates.get("updatableAttributes")
        removable_raw = dicom_updates.get("removableAttributes")
        if updatable_raw is None and removable_raw is None:
            raise ValidationException(
                "DICOMUpdates needs updatableAttributes or removableAttributes"
            )
        size = len(updatable_raw or b"") + len(removable_raw or b"")
        if size > self.config.max_update_payload_bytes:
            raise ServiceQuotaExceededException(
                f"The metadata update is {size} bytes; UpdateImageSetMetadata takes at most "
                f"{self.config.max_update_payload_bytes}"
            )
        updatable = parse_payload(updatable_raw, "updatableAttributes")
        removable = parse_payload(removable_raw, "removableAttributes")
        image_set_id = record["imageSetId"]
        current = self.image_sets.metadata(image_set_id)
        targets = [
            (
                image_set_id,
                apply_dicom_updates(
                    current, updatable, removable, force=force, is_primary=record["isPrimary"]
                ),
            )
        ]
        if not whole_study:
            return targets
        study_uid = current.get("Study", {}).get("DICOM", {}).get("StudyInstanceUID")
        for other in self.image_sets.in_datastore(record["datastoreId"]):
            if (
                other["imageSetId"] == image_set_id
                or not other["isPrimary"]
                or other.get("dicomTags", {}).get("DICOMStudyInstanceUID") != study_uid
            ):
                continue
            self._writable(record["datastoreId"], other["imageSetId"])
            targets.append(
                (
                    other["imageSetId"],
                    apply_dicom_updates(
                        self.image_sets.metadata(other["imageSetId"]),
                        study_level_part(updatable),
                        study_level_part(removable),
                        force=force,
                        is_primary=True,
                    ),
                )
            )
        return targets

    def copy_image_set(
        self,
        datastoreId: str,
        sourceImageSetId: str,
        copyImageSetInformation: dict[str, Any],
        force: bool | None = None,
        promoteToPrimary: bool | None = None,
    ) -> dict[str, Any]:
        """Copy all of the source, or the series/instances named in
        copiableAttributes, into a new image set (version 1) or into
        destinationImageSet (a new version of it). Source LOCKED
        COPYING_WITH_READ_ONLY_ACCESS and destination LOCKED COPYING until
        ``config.write_seconds`` have passed; then both ACTIVE COPIED.

        Choices where AWS is silent: a new set is primary only with
        promoteToPrimary (AWS: "a new primary image set ID will be returned");
        merging with promoteToPrimary makes the destination primary; a stale
        latestVersionId (source or destination) is ResourceNotFoundException
        with UpdateImageSetMetadata's message; copying a set into itself is a
        ValidationException; more than ``config.max_copy_frames`` frames is
        ServiceQuotaExceededException. Mismatch and uniqueness rules: see
        ``copies.merge``.

        One primary image set per study and series (behaviour doc §3.3): a
        copy that would make a second one (promoteToPrimary of a set whose
        Study and Series Instance UIDs are those of a primary set that is not
        the destination) is a ConflictException. AWS does not say how it
        refuses this; its documented way to resolve a conflict is to correct
        the UIDs first (UpdateImageSetMetadata with force) or to merge into
        the primary set, and the error says so."""
        source_info = copyImageSetInformation["sourceImageSet"]
        destination_info = copyImageSetInformation.get("destinationImageSet")
        copiable = (source_info.get("DICOMCopies") or {}).get("copiableAttributes")
        with self._write_lock():
            source = self._writable(datastoreId, sourceImageSetId)
            self._check_latest(source, source_info["latestVersionId"])
            destination = self._copy_destination(datastoreId, sourceImageSetId, destination_info)
            self._check_write_quota(datastoreId)
            copied = self._copied_part(sourceImageSetId, copiable)
            if promoteToPrimary:
                self._check_single_primary(
                    datastoreId, copied, destination, exempt={sourceImageSetId}
                )
            destination = self._write_copy(
                datastoreId, copied, destination, bool(force), bool(promoteToPrimary)
            )
            self.image_sets.touch(destination["imageSetId"])
            source = self.image_sets.lock_for_write(
                sourceImageSetId,
                workflow_status="COPYING_WITH_READ_ONLY_ACCESS",
                lock_seconds=self.config.write_seconds,
            )
            properties = [self._copy_properties(r) for r in (source, destination)]
        return {
            "datastoreId": datastoreId,
            "sourceImageSetProperties": properties[0],
            "destinationImageSetProperties": properties[1],
        }

    def _copy_destination(
        self, datastore_id: str, source_id: str, destination_info: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Checked as strictly as the source (ACTIVE, latest version): a copy
        must not merge into a set that changed since the caller read it.
        None when the copy makes a new image set."""
        if not destination_info:
            return None
        if destination_info["imageSetId"] == source_id:
            raise ValidationException("An image set cannot be copied into itself")
        destination = self._writable(datastore_id, destination_info["imageSetId"])
        self._check_latest(destination, destination_info["latestVersionId"])
        return destination

    def _copied_part(self, source_id: str, copiable: str | None) -> dict[str, Any]:
        """Selected and counted before anything is written, so a copy refused
        for its content or its size leaves both image sets as they were."""
        copied = copies.select(self.image_sets.metadata(source_id), copiable)
        frames = copies.frame_count(copied)
        if frames > self.config.max_copy_frames:
            raise ServiceQuotaExceededException(
                f"The copy holds {frames} frames; CopyImageSet takes at most "
                f"{self.config.max_copy_frames}"
            )
        return copied

    def _write_copy(
        self,
        datastore_id: str,
        copied: dict[str, Any],
        destination: dict[str, Any] | None,
        force: bool,
        promote: bool,
    ) -> dict[str, Any]:
        """A new image set, or a new version of ``destination``: LOCKED
        COPYING either way, as the real service's asynchronous copy is."""
        if destination is None:
            return self.image_sets.create(
                datastore_id,
                copied,
                is_primary=promote,
                workflow_status="COPYING",
                lock_seconds=self.config.write_seconds,
            )
        merged = copies.merge(
            self.image_sets.metadata(destination["imageSetId"]), copied, force=force
        )
        return self.image_sets.add_version(
            destination["imageSetId"],
            merged,
            workflow_status="COPYING",
            lock_seconds=self.config.write_seconds,
            is_primary=True if promote else None,
            overrides={"forced": True} if force else None,
        )

    def _check_single_primary(
        self,
        datastore_id: str,
        copied: dict[str, Any],
        destination: dict[str, Any] | None,
        exempt: set[str],
    ) -> None:
        """Refuse a promotion that would give a series a second primary set."""
        if destination is not None and destination["isPrimary"]:
            return
        tags = dicom_tags(copied)
        key = (tags.get("DICOMStudyInstanceUID"), tags.get("DICOMSeriesInstanceUID"))
        if destination is not None:
            exempt = exempt | {destination["imageSetId"]}
        for record in self.image_sets.in_datastore(datastore_id):
            other = record.get("dicomTags") or {}
            if (
                record["isPrimary"]
                and record["imageSetId"] not in exempt
                and (other.get("DICOMStudyInstanceUID"), other.get("DICOMSeriesInstanceUID"))
                == key
            ):
                raise ConflictException(
                    f"Series {key[1]} of study {key[0]} already has primary image set "
                    f"{record['imageSetId']}: copy into it (destinationImageSet), or correct "
                    "the Study or Series Instance UID before promoting"
                )

    def _copy_properties(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "imageSetId": record["imageSetId"],
            "latestVersionId": record["versionId"],
            "imageSetState": record["imageSetState"],
            "imageSetWorkflowStatus": record["imageSetWorkflowStatus"],
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
            "imageSetArn": self.image_set_arn(record["datastoreId"], record["imageSetId"]),
        }

    def delete_image_set(self, datastoreId: str, imageSetId: str) -> dict[str, Any]:
        """LOCKED/DELETING now, DELETED (with deletedAt) after
        ``config.write_seconds``. Deleting a deleted set is a ConflictException
        like any write on a set that is not ACTIVE. Frames stay stored because
        copies may share them; tags stay readable."""
        with self._write_lock():
            self._writable(datastoreId, imageSetId)
            record = self.image_sets.lock_for_write(
                imageSetId, workflow_status="DELETING", lock_seconds=self.config.write_seconds
            )
        return {
            "datastoreId": datastoreId,
            "imageSetId": imageSetId,
            "imageSetState": record["imageSetState"],
            "imageSetWorkflowStatus": record["imageSetWorkflowStatus"],
        }
