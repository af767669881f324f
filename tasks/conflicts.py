"""Why files landed in non-primary image sets, asked of the data store.

HealthImaging puts an instance into a non-primary image set when its study-
or series-level elements conflict with the primary image set of its series
(docs/healthimaging.md), and the import output says only ``isPrimary:
false``. An operator deciding what to do (``dicom-import reconcile``) needs to
know which elements differ: this compares the compared elements of each
non-primary set with those of its series' primary set, one
``GetImageSetMetadata`` per image set involved (``SearchImageSets`` finds the
primary set), never one call per file. Only attribute keywords leave this
module: the values are patient data.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

from config.clients import medical_imaging_client
from tasks.backoff import error_code

# The elements HealthImaging compares with the primary image set, by level
# of the metadata document (docs/healthimaging.md, "Grouping into image sets").
COMPARED_ELEMENTS = (
    ("Patient", "PatientID"),
    ("Study", "StudyDate"),
    ("Study", "AccessionNumber"),
    ("Study", "StudyInstanceUID"),
    ("Study", "StudyID"),
    ("Series", "SeriesInstanceUID"),
    ("Series", "SeriesNumber"),
)
CONFLICTS_ARTIFACT_KEY = "dicom-ingest-conflicts"
# Within one report cell, as expected_warnings lists its labels.
SEPARATOR = ";"
# SearchImageSets and GetImageSetMetadata allow 25 and 50 requests/s.
_WORKERS = 4


@dataclass(frozen=True)
class SeriesConflict:
    """The non-primary image sets of one series, and how they differ from its
    primary set. No values: keywords, IDs and counts only."""

    study_instance_uid: str
    series_instance_uid: str
    # None when the series has no primary image set any more (deleted).
    primary_image_set_id: str | None
    # Non-primary image set ID -> keywords that differ (empty when unknown).
    attributes: dict[str, tuple[str, ...]]
    files: int


def image_set_document(client: Any, datastore_id: str, image_set_id: str) -> dict[str, Any] | None:
    """The image set's metadata document, or None once it is deleted."""
    try:
        blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    # GetImageSetMetadata answers gzip whatever the Accept-Encoding.
    document: dict[str, Any] = orjson.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
    return document


def primary_image_set(
    client: Any, datastore_id: str, study_instance_uid: str, series_instance_uid: str
) -> dict[str, Any] | None:
    """The SearchImageSets summary of the series' primary image set, if any."""
    pages = client.get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id,
        searchCriteria={"filters": [
            {"values": [{"DICOMSeriesInstanceUID": series_instance_uid}], "operator": "EQUAL"},
            {"values": [{"isPrimary": True}], "operator": "EQUAL"},
        ]},
    )
    for page in pages:
        for item in page["imageSetsMetadataSummaries"]:
            tags = item.get("DICOMTags") or {}
            if item.get("isPrimary") and tags.get("DICOMStudyInstanceUID") in (
                None, study_instance_uid
            ):
                summary: dict[str, Any] = item
                return summary
    return None


def element_levels(
    document: dict[str, Any], series_instance_uid: str
) -> dict[str, dict[str, Any]]:
    """The Patient, Study and Series attributes of one series of a document."""
    study = document.get("Study") or {}
    series = (study.get("Series") or {}).get(series_instance_uid) or {}
    return {
        "Patient": (document.get("Patient") or {}).get("DICOM") or {},
        "Study": study.get("DICOM") or {},
        "Series": series.get("DICOM") or {},
    }


def differing_elements(
    primary: dict[str, Any], other: dict[str, Any], series_instance_uid: str
) -> tuple[str, ...]:
    """Keywords of the compared elements whose values differ between the two."""
    ours = element_levels(primary, series_instance_uid)
    theirs = element_levels(other, series_instance_uid)
    return tuple(
        keyword for level, keyword in COMPARED_ELEMENTS
        if ours[level].get(keyword) != theirs[level].get(keyword)
    )


def find_conflicts(
    datastore_id: str, files: pd.DataFrame, client: Any | None = None
) -> list[SeriesConflict]:
    """The series of the report's files that landed in non-primary image sets."""
    landed = files[files["is_primary"].eq(False).fillna(False).astype(bool)
                   & files["image_set_id"].notna()]
    if landed.empty:
        return []
    counts = landed.groupby(["study_instance_uid", "series_instance_uid", "image_set_id"]).size()
    series_keys = sorted({(study, series) for study, series, _ in counts.index})
    client = client or medical_imaging_client()
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        primaries = dict(zip(series_keys, pool.map(
            lambda key: primary_image_set(client, datastore_id, *key), series_keys), strict=True))
        wanted = {image_set_id for _, _, image_set_id in counts.index}
        wanted |= {p["imageSetId"] for p in primaries.values() if p is not None}
        documents = dict(zip(wanted, pool.map(
            lambda i: image_set_document(client, datastore_id, i), wanted), strict=True))
    conflicts = []
    for study, series in series_keys:
        primary = primaries[(study, series)]
        primary_doc = documents.get(primary["imageSetId"]) if primary else None
        of_series = counts.loc[(study, series)]
        attributes = {}
        for image_set_id in of_series.index:
            other = documents.get(image_set_id)
            attributes[image_set_id] = (
                differing_elements(primary_doc, other, series)
                if primary_doc is not None and other is not None else ()
            )
        conflicts.append(SeriesConflict(
            study, series, primary["imageSetId"] if primary else None, attributes,
            int(of_series.sum()),
        ))
    return conflicts


def add_conflict_attributes(
    files: pd.DataFrame, conflicts: Iterable[SeriesConflict]
) -> pd.DataFrame:
    """The report rows with ``conflict_attributes`` filled for each file in a
    non-primary image set whose differences are known."""
    by_set = {
        image_set_id: SEPARATOR.join(keywords)
        for conflict in conflicts
        for image_set_id, keywords in conflict.attributes.items() if keywords
    }
    non_primary = files["is_primary"].eq(False).fillna(False).astype(bool)
    column = files["image_set_id"].map(by_set) if by_set else pd.Series(None, index=files.index)
    return files.assign(conflict_attributes=column.where(non_primary, None).astype(object))


def conflicts_markdown(conflicts: list[SeriesConflict]) -> str:
    if not conflicts:
        return "## Non-primary image sets\n\nNo file landed in a non-primary image set.\n"
    lines = [
        "## Non-primary image sets",
        "",
        "Files that HealthImaging put beside the primary image set of their series, and the "
        "elements that differ from it (names only). Decide per image set with "
        "`dicom-import reconcile`.",
        "",
        "| series | primary image set | non-primary image sets | differing elements | files |",
        "|---|---|---|---|---:|",
    ]
    for conflict in conflicts:
        keywords = sorted({k for found in conflict.attributes.values() for k in found})
        lines.append(
            f"| {conflict.series_instance_uid} | {conflict.primary_image_set_id or '(none)'} "
            f"| {', '.join(sorted(conflict.attributes))} "
            f"| {', '.join(keywords) or '(unknown)'} | {conflict.files} |"
        )
    return "\n".join(lines) + "\n"


class NonPrimarySet(BaseModel):
    """A non-primary image set a run's files landed in, as the run's summary
    tells it (a model: it goes out in the flow's result). IDs, keywords and
    counts only."""

    image_set_id: str
    files: int
    # Keywords of the elements that differ from the primary image set of
    # its series; empty when that could not be found out.
    elements: list[str] = []


def landed_non_primary(files: pd.DataFrame) -> Counter[str]:
    """Report rows in non-primary image sets, counted by image set."""
    landed = files["is_primary"].eq(False).fillna(False).astype(bool) \
        & files["image_set_id"].notna()
    return Counter(files.loc[landed, "image_set_id"].astype(str))


def non_primary_sets(
    landed: Counter[str], conflicts: Iterable[SeriesConflict]
) -> list[NonPrimarySet]:
    """The image sets of ``landed`` (landed_non_primary over a run) with the
    elements each differs in, most files first."""
    elements = {image_set_id: keywords for conflict in conflicts
                for image_set_id, keywords in conflict.attributes.items()}
    return [NonPrimarySet(image_set_id=image_set_id, files=count,
                          elements=list(elements.get(image_set_id, ())))
            for image_set_id, count in landed.most_common()]


def element_label(keyword: str) -> str:
    """``PatientID (0010,0020)``: the element's name and tag, never its value."""
    tag = tag_for_keyword(keyword)
    return f"{keyword} {Tag(tag)}" if tag is not None else keyword


@dataclass(frozen=True)
class Explained:
    """Report rows with ``conflict_attributes``, the series behind them, and
    why they could not be explained, if they could not."""

    files: pd.DataFrame
    conflicts: list[SeriesConflict]
    unexplained: str | None = None


def explain(datastore_id: str, files: pd.DataFrame, client: Any | None = None) -> Explained:
    """The report rows with ``conflict_attributes`` (one window's, or a run's).

    The explanation must never cost the report: when the data store cannot
    be asked (throttled past botocore's retries, no permission to read
    metadata), the column stays empty and the artifact and a warning say why.
    """
    try:
        conflicts = find_conflicts(datastore_id, files, client)
    except (ClientError, BotoCoreError) as error:
        reason = (f"{error_code(error)} from {error.operation_name}"
                  if isinstance(error, ClientError) else str(error))
        get_run_logger().warning("Non-primary image sets not explained: %s", reason)
        return Explained(add_conflict_attributes(files, []), [], reason)
    return Explained(add_conflict_attributes(files, conflicts), conflicts)


def publish_conflicts(conflicts: list[SeriesConflict], unexplained: str | None) -> None:
    """Every run, once, so the artifact's latest version is this run's."""
    markdown = (f"## Non-primary image sets\n\nNot explained: {unexplained}\n" if unexplained
                else conflicts_markdown(conflicts))
    create_markdown_artifact(
        key=CONFLICTS_ARTIFACT_KEY,
        markdown=markdown,
        description="Series with files in non-primary image sets: IDs, element names, counts.",
    )


@task(name="explain-conflicts", cache_policy=NO_CACHE)
def explain_conflicts(files: pd.DataFrame, datastore_id: str) -> Explained:
    return explain(datastore_id, files)
