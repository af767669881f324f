"""Which files the data store already holds, asked of the data store itself.

A COMPLETED job's output folder is the only per-file record of what it
imported, and it can vanish (a lifecycle rule on the output bucket, a
restarted service). Importing the files again would add a version to every
image set they are in; reporting them failed would send them to
``retry_failed``, which would do the same. So before either, the data store is
asked: ``SearchImageSets`` by Series Instance UID (one paginated search per
series, never per file), then ``GetImageSetMetadata`` once per image set
found, whose document lists the SOP Instance UIDs it holds under
Study -> Series -> Instances.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson
import pandas as pd
from botocore.exceptions import ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.clients import medical_imaging_client
from tasks.backoff import error_code
from tasks.batch import Batch
from tasks.manifest import SUCCESS_COLUMNS, JobOutput
from tasks.poll import JobOutcome
from tasks.stage import StagedFile
from tasks.statuses import FileStatus, JobStatus

# SearchImageSets' page size limit (1-50).
_PAGE_SIZE = 50
# SearchImageSets and GetImageSetMetadata allow 25 and 50 requests/s: a few
# threads keep well inside that and botocore retries the odd throttle.
_WORKERS = 4


@dataclass(frozen=True)
class Instance:
    """A DICOM instance as a file's header names it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


class IdentifiedFile(Protocol):
    """A file with what its header named (a validation record, a ledger file)."""

    @property
    def uri(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def study_instance_uid(self) -> str | None: ...
    @property
    def series_instance_uid(self) -> str | None: ...
    @property
    def sop_instance_uid(self) -> str | None: ...


def instance_of(item: IdentifiedFile) -> Instance | None:
    """The instance a file's header names, None when it names no full one."""
    if item.study_instance_uid and item.series_instance_uid and item.sop_instance_uid:
        return Instance(item.study_instance_uid, item.series_instance_uid,
                        item.sop_instance_uid)
    return None


@dataclass(frozen=True)
class Landed:
    """Where the data store holds an instance now."""

    image_set_id: str
    is_primary: bool
    # The image set's current version (the job's own version is in the lost output).
    version: int | None
    # Other image sets that hold it too (non-primary ones, made by conflicts).
    also_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class _ImageSet:
    image_set_id: str
    is_primary: bool
    version: int | None
    study_instance_uid: str | None


def find_landed(
    datastore_id: str, instances: Iterable[Instance], client: Any | None = None
) -> dict[Instance, Landed]:
    """The instances the data store holds, with the image set each is in.

    An instance in several image sets (a primary one and a non-primary one
    made by conflicting attributes) is reported in the primary one, with
    the others in ``also_in``. Image sets that are deleted are not found
    (SearchImageSets leaves them out).
    """
    wanted: dict[str, set[Instance]] = {}
    for instance in instances:
        wanted.setdefault(instance.series_instance_uid, set()).add(instance)
    if not wanted:
        return {}
    client = client or medical_imaging_client()
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        found = dict(zip(wanted, pool.map(lambda s: _search_series(client, datastore_id, s),
                                          wanted), strict=True))
        image_sets = {s.image_set_id: s for sets in found.values() for s in sets}
        documents = dict(zip(image_sets, pool.map(
            lambda i: _metadata(client, datastore_id, i), image_sets), strict=True))
    landed: dict[Instance, Landed] = {}
    for series, members in wanted.items():
        # Primary sets first, so a later non-primary one never replaces them.
        for image_set in sorted(found[series], key=lambda s: not s.is_primary):
            held = _instances_in(documents[image_set.image_set_id], series)
            for instance in members:
                if instance.sop_instance_uid not in held:
                    continue
                if image_set.study_instance_uid not in (None, instance.study_instance_uid):
                    continue
                earlier = landed.get(instance)
                landed[instance] = (
                    Landed(image_set.image_set_id, image_set.is_primary, image_set.version)
                    if earlier is None
                    else replace(earlier, also_in=(*earlier.also_in, image_set.image_set_id)))
    return landed


def _search_series(client: Any, datastore_id: str, series_uid: str) -> list[_ImageSet]:
    pages = client.get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id,
        searchCriteria={"filters": [
            {"values": [{"DICOMSeriesInstanceUID": series_uid}], "operator": "EQUAL"}]},
        PaginationConfig={"PageSize": _PAGE_SIZE},
    )
    return [
        _ImageSet(item["imageSetId"], bool(item.get("isPrimary", True)), item.get("version"),
                  (item.get("DICOMTags") or {}).get("DICOMStudyInstanceUID"))
        for page in pages for item in page["imageSetsMetadataSummaries"]
    ]


def _metadata(client: Any, datastore_id: str, image_set_id: str) -> dict[str, Any] | None:
    try:
        blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    except ClientError as exc:
        # Deleted between the search and this call.
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    # GetImageSetMetadata answers gzip whatever the Accept-Encoding.
    document: dict[str, Any] = orjson.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
    return document


def _instances_in(document: dict[str, Any] | None, series_uid: str) -> set[str]:
    series = ((document or {}).get("Study") or {}).get("Series") or {}
    return set((series.get(series_uid) or {}).get("Instances") or {})


def recover_outputs(
    datastore_id: str | None,
    batches: Sequence[Batch],
    staged: Sequence[StagedFile],
    outcomes: Sequence[JobOutcome],
    outputs: Mapping[str, JobOutput | str],
) -> dict[str, JobOutput | str]:
    """Replace each COMPLETED job's unreadable output by what the data store
    holds of its files: a ``JobOutput`` whose success rows are the files
    found, marked ``lost`` with the reason the output could not be read (the
    report says so, and reports the files not found ``output_missing``)."""
    lost = {batch_id: reason for batch_id, reason in outputs.items() if isinstance(reason, str)}
    completed = {o.batch_id for o in outcomes if o.status is JobStatus.COMPLETED}
    members = [b for b in batches if b.batch_id in lost and b.batch_id in completed]
    if datastore_id is None or not members:
        return dict(outputs)
    key_of = {s.source_uri: s.key for s in staged}
    instance_of = {
        record.uri: Instance(record.study_instance_uid, record.series_instance_uid,
                             record.sop_instance_uid)
        for b in members for record in b.files
        if record.study_instance_uid and record.series_instance_uid and record.sop_instance_uid
    }
    landed = find_landed(datastore_id, instance_of.values())
    recovered = dict(outputs)
    for b in members:
        rows = [
            (key_of[r.uri], found.image_set_id, found.is_primary, found.version)
            for r in b.files
            if r.uri in key_of and r.uri in instance_of
            and (found := landed.get(instance_of[r.uri])) is not None
        ]
        success = pd.DataFrame(rows, columns=SUCCESS_COLUMNS)
        success["isPrimary"] = success["isPrimary"].astype("boolean")
        success["imageSetVersion"] = success["imageSetVersion"].astype("Int64")
        recovered[b.batch_id] = replace(JobOutput.empty(), success=success,
                                        lost=lost[b.batch_id])
    return recovered


@task(name="find-lost-outputs-in-datastore", cache_policy=NO_CACHE)
def confirm_lost_outputs(
    datastore_id: str | None,
    batches: list[Batch],
    staged: list[StagedFile],
    outcomes: list[JobOutcome],
    outputs: dict[str, JobOutput | str],
) -> dict[str, JobOutput | str]:
    return recover_outputs(datastore_id, batches, staged, outcomes, outputs)


def confirmed_row(
    item: IdentifiedFile, batch_id: str | None, job_id: str | None, where: Landed, why: str
) -> dict[str, object]:
    """The report row of a file reported imported because the data store
    holds its instance (``where``), though its job did not say so (``why``)."""
    return {"source_uri": item.uri, "size": item.size, "sha256": item.sha256,
            "sop_instance_uid": item.sop_instance_uid,
            "study_instance_uid": item.study_instance_uid,
            "series_instance_uid": item.series_instance_uid,
            "batch_id": batch_id, "job_id": job_id, "status": FileStatus.IMPORTED.value,
            "image_set_id": where.image_set_id, "is_primary": where.is_primary,
            "image_set_version": where.version, "error_message": why}
