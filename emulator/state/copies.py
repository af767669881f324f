"""CopyImageSet on metadata documents: pick the copied part of the source
and merge it into a destination document.

``copiableAttributes`` is a JSON string in the document shape naming what to
copy::

    {"SchemaVersion": "1.1", "Study": {"Series": {"<series uid>":
        {"Instances": {"<sop uid>": {}}}}}}

A series given without ``Instances`` (or with an empty object) is copied whole.
Frames are never duplicated: copied instances keep their ImageFrames IDs.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from emulator.state.exceptions import ConflictException, ValidationException


def _parse(copiable: str) -> dict[str, dict[str, Any]]:
    """series UID -> the instances named (empty: the whole series)."""
    try:
        payload = json.loads(copiable)
    except ValueError:
        raise ValidationException("copiableAttributes is not valid JSON") from None
    series = payload.get("Study", {}).get("Series") if isinstance(payload, dict) else None
    if not isinstance(series, dict) or not series:
        raise ValidationException(
            "copiableAttributes must name at least one series: "
            '{"Study": {"Series": {"<SeriesInstanceUID>": {"Instances": {...}}}}}'
        )
    selection = {}
    for uid, spec in series.items():
        instances = spec.get("Instances", {}) if isinstance(spec, dict) else None
        if not isinstance(instances, dict):
            raise ValidationException(f"copiableAttributes series {uid} must be a JSON object")
        selection[uid] = instances
    return selection


def select(source: dict[str, Any], copiable: str | None) -> dict[str, Any]:
    """The document to copy: all of ``source``, or the Patient and Study
    attributes plus only the series and instances ``copiable`` names. Naming
    a series or instance the source does not hold is a ValidationException;
    anything in copiableAttributes besides the hierarchy is ignored."""
    chosen = copy.deepcopy(source)
    if copiable is None:
        return chosen
    available = chosen.get("Study", {}).get("Series", {})
    picked: dict[str, Any] = {}
    for series_uid, instance_uids in _parse(copiable).items():
        if series_uid not in available:
            raise ValidationException(f"Series {series_uid} is not in the source image set")
        series = available[series_uid]
        missing = set(instance_uids) - set(series.get("Instances", {}))
        if missing:
            raise ValidationException(
                f"SOP instances {sorted(missing)} are not in series {series_uid} of the source"
            )
        if instance_uids:
            series["Instances"] = {
                uid: series["Instances"][uid] for uid in series["Instances"] if uid in instance_uids
            }
        picked[series_uid] = series
    chosen["Study"]["Series"] = picked
    return chosen


def frame_count(doc: dict[str, Any]) -> int:
    return sum(
        len(instance.get("ImageFrames", []))
        for series in doc.get("Study", {}).get("Series", {}).values()
        for instance in series.get("Instances", {}).values()
    )


def sop_instance_uids(doc: dict[str, Any]) -> set[str]:
    return {
        uid
        for series in doc.get("Study", {}).get("Series", {}).values()
        for uid in series.get("Instances", {})
    }


def _differences(ours: dict[str, Any], theirs: dict[str, Any], level: str) -> list[str]:
    return [f"{level}.{key}" for key in sorted(set(ours) & set(theirs)) if ours[key] != theirs[key]]


def merge(destination: dict[str, Any], copied: dict[str, Any], *, force: bool) -> dict[str, Any]:
    """``copied`` merged into a copy of ``destination``.

    SOP Instance UIDs must stay unique in the destination: a copied instance
    that is already there is a ConflictException, with or without force.
    Patient, Study and (for a series in both) Series attributes that both
    documents carry with different values are a ValidationException unless
    ``force``; with force the destination's values stay and the copied
    instances join it. AWS documents that force overrides such mismatches
    but not which side wins; keeping the destination's means a forced copy
    never rewrites what the destination's other instances already say."""
    duplicates = sop_instance_uids(destination) & sop_instance_uids(copied)
    if duplicates:
        raise ConflictException(
            f"SOP instances {sorted(duplicates)} are already in the destination image set; "
            "SOP Instance UIDs must be unique in an image set"
        )
    result = copy.deepcopy(destination)
    src_series = copied.get("Study", {}).get("Series", {})
    dst_series = result.setdefault("Study", {}).setdefault("Series", {})
    mismatches = _differences(
        result.get("Patient", {}).get("DICOM", {}),
        copied.get("Patient", {}).get("DICOM", {}),
        "Patient",
    ) + _differences(
        result["Study"].get("DICOM", {}), copied.get("Study", {}).get("DICOM", {}), "Study"
    )
    for uid, series in src_series.items():
        if uid in dst_series:
            mismatches += _differences(
                dst_series[uid].get("DICOM", {}), series.get("DICOM", {}), f"Series {uid}"
            )
    if mismatches and not force:
        raise ValidationException(
            f"Source and destination disagree on {', '.join(mismatches)}; "
            "set force=true to copy anyway"
        )
    for uid, series in src_series.items():
        if uid in dst_series:
            dst_series[uid].setdefault("Instances", {}).update(copy.deepcopy(series["Instances"]))
        else:
            dst_series[uid] = copy.deepcopy(series)
    return result
