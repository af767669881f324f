"""SearchImageSets: check the criteria, match image set records, order them.

The model checks shapes (1-2 filters, 1-2 values, one attribute per value);
the rules between values are the service's, and live here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.state.exceptions import ValidationException

# Filter attribute -> key of the record's DICOMTags summary.
TAG_ATTRIBUTES = {
    "DICOMPatientId": "DICOMPatientId",
    "DICOMAccessionNumber": "DICOMAccessionNumber",
    "DICOMStudyId": "DICOMStudyId",
    "DICOMStudyInstanceUID": "DICOMStudyInstanceUID",
    "DICOMSeriesInstanceUID": "DICOMSeriesInstanceUID",
}
TIMESTAMP_ATTRIBUTES = ("createdAt", "updatedAt")
STUDY_MOMENT = "DICOMStudyDateAndTime"
RANGE_ATTRIBUTES = (*TIMESTAMP_ATTRIBUTES, STUDY_MOMENT)

DEFAULT_SORT = {"sortField": "updatedAt", "sortOrder": "DESC"}

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"(\d{2}|\d{4}|\d{6})(\.\d{1,6})?")


def study_moment(date: Any, time: Any) -> str | None:
    """``YYYYMMDDHHMMSS.ffffff`` for ordering and ranges; None when the
    values are not DICOM DA/TM (old ``HH:MM:SS`` times are accepted)."""
    if not isinstance(date, str) or not _DATE.fullmatch(date):
        return None
    if time in (None, ""):
        return f"{date}000000.000000"
    if not isinstance(time, str):
        return None
    found = _TIME.fullmatch(time.replace(":", "").strip())
    if not found:
        return None
    return f"{date}{found.group(1).ljust(6, '0')}.{(found.group(2) or '.')[1:].ljust(6, '0')}"


@dataclass(frozen=True)
class Filter:
    attribute: str
    operator: str
    values: tuple[Any, ...]

    def matches(self, record: dict[str, Any]) -> bool:
        if self.attribute == STUDY_MOMENT:
            return self._matches_study_moment(record)
        actual = _record_values(record, self.attribute)
        if self.operator == "EQUAL":
            return self.values[0] in actual
        low, high = self.values
        return any(low <= value <= high for value in actual)

    def _matches_study_moment(self, record: dict[str, Any]) -> bool:
        tags = record.get("dicomTags", {})
        moment = study_moment(tags.get("DICOMStudyDate"), tags.get("DICOMStudyTime"))
        if moment is None:
            return False
        if self.operator == "EQUAL":
            wanted = self.values[0]
            # A date without a time matches the whole day.
            return moment.startswith(wanted[:8]) if len(wanted) == 8 else moment == wanted
        low, high = self.values
        within: bool = low <= moment <= high
        return within


def _record_values(record: dict[str, Any], attribute: str) -> list[Any]:
    """The record's values for an attribute (an image set may hold several
    series after a copy, and any of them matches)."""
    if attribute in TIMESTAMP_ATTRIBUTES:
        # Responses carry milliseconds, so EQUAL must compare at that precision.
        return [round(record[attribute], 3)]
    if attribute == "isPrimary":
        return [bool(record.get("isPrimary"))]
    if attribute == "DICOMSeriesInstanceUID" and record.get("seriesInstanceUIDs"):
        return list(record["seriesInstanceUIDs"])
    value = record.get("dicomTags", {}).get(TAG_ATTRIBUTES[attribute])
    return [] if value is None else [value]


def _filter_value(attribute: str, value: Any, bound: str) -> Any:
    if attribute in TIMESTAMP_ATTRIBUTES:
        return round(float(value), 3)
    if attribute == STUDY_MOMENT:
        date, time = value.get("DICOMStudyDate"), value.get("DICOMStudyTime")
        moment = study_moment(date, time)
        if moment is None:
            raise ValidationException(
                "DICOMStudyDateAndTime needs DICOMStudyDate as YYYYMMDD and an optional "
                "DICOMStudyTime as HHMMSS[.ffffff]"
            )
        if time in (None, ""):
            # An upper bound without a time includes that whole day.
            return f"{date}235959.999999" if bound == "upper" else date
        return moment
    return value


def parse_filters(criteria: dict[str, Any] | None) -> list[Filter]:
    """Turn searchCriteria.filters into Filters, refusing what the model
    cannot express: a value count that does not fit the operator, BETWEEN
    bounds naming different attributes or in the wrong order, BETWEEN on an
    identifier or on isPrimary."""
    filters = []
    for index, raw in enumerate((criteria or {}).get("filters") or [], start=1):
        operator, values = raw["operator"], raw["values"]
        where = f"searchCriteria.filters.{index}"
        expected = 1 if operator == "EQUAL" else 2
        if len(values) != expected:
            raise ValidationException(
                f"{where}: operator {operator} takes {expected} value(s), got {len(values)}"
            )
        attributes = {next(k for k, v in value.items() if v is not None) for value in values}
        if len(attributes) != 1:
            raise ValidationException(
                f"{where}: the lower and upper bound must set the same attribute, got "
                f"{sorted(attributes)}"
            )
        attribute = attributes.pop()
        if operator == "BETWEEN" and attribute not in RANGE_ATTRIBUTES:
            raise ValidationException(
                f"{where}: BETWEEN works on {list(RANGE_ATTRIBUTES)}, not {attribute}; use EQUAL"
            )
        bounds = ("value",) if operator == "EQUAL" else ("lower", "upper")
        parsed = tuple(
            _filter_value(attribute, value[attribute], bound)
            for value, bound in zip(values, bounds, strict=True)
        )
        if operator == "BETWEEN" and parsed[0] > parsed[1]:
            raise ValidationException(f"{where}: BETWEEN takes (lowerBound, upperBound) in order")
        filters.append(Filter(attribute, operator, parsed))
    return filters


def ordered(records: list[dict[str, Any]], sort: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Records in the requested order; image sets without a usable study
    date sort after all others in either direction, and the image set ID
    breaks ties so that pages never overlap."""
    field = (sort or DEFAULT_SORT)["sortField"]
    descending = (sort or DEFAULT_SORT)["sortOrder"] == "DESC"
    key: Callable[[dict[str, Any]], Any]
    if field == STUDY_MOMENT:

        def key(record: dict[str, Any]) -> Any:
            tags = record.get("dicomTags", {})
            return study_moment(tags.get("DICOMStudyDate"), tags.get("DICOMStudyTime"))

    else:

        def key(record: dict[str, Any]) -> Any:
            return record[field]

    known = [r for r in records if key(r) is not None]
    unknown = [r for r in records if key(r) is None]
    known.sort(key=lambda r: (key(r), r["imageSetId"]), reverse=descending)
    unknown.sort(key=lambda r: r["imageSetId"])
    return known + unknown
