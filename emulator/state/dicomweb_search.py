"""QIDO-RS: search studies, series and instances of a data store.

Only primary image sets are searched, unless ``imageSetId`` names one set
(primary or not), as WADO-RS does. Results come from ``DicomWebIndex``; a
study is the primary image sets that share its Study Instance UID, and its
Patient and Study attributes are those of the set changed last.

Matching (PS3.4 C.2.2.2): exact and case-sensitive; ``*`` (any run,
empty included) and ``?`` (one character) as wildcards; an empty value, or
``*`` alone, matches everything and returns the attribute; UIDs as a list
(comma or backslash separated); dates and times as ranges ``A-B``, ``-B``,
``A-``; ``fuzzymatching=true`` makes person names match case-insensitively
on the start of any name component. A key HealthImaging does not search on
at that level is refused (400), as are malformed values.

WarningReason (0008,1196) is read from the instance's attributes in its
image set's metadata document (keyword ``WarningReason`` or tag
``00081196``), where STOW-RS keeps the warning it gave the instance; it
matches by number (decimal, or hexadecimal with ``0x``).

Choices where AWS is silent, written down here:

* ``limit`` defaults to 1000 and over 1000 is refused (AWS: "may not exceed
  1000"); ``offset`` is taken up to 1,000,000, but no match past the
  10,000th is ever returned (AWS: "a maximum of 10,000 records"), so a page
  that would start there is empty (204).
* Order: studies by their newest image set change first; series by Series
  Number; instances by Instance Number; values missing last, then UIDs, so
  that pages never overlap.
* Returned by default: PS3.18 Table 6.7.1-2a's attributes for the level
  (those present), plus the matching keys, plus the levels above for
  searches across studies or series (``/series``, ``/instances``,
  ``/studies/{st}/instances``), plus the Study and Series Instance UIDs.
  ``includefield`` adds keywords or tags (unknown ones ignored; a dotted
  sequence path adds its sequence) or ``all`` (every attribute of the
  levels returned); a binary value over 1 MB is left out of results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emulator.state.dicom_json_model import dataset_json, key_of, tag_of
from emulator.state.dicomweb_index import INSTANCE_KEYS as INDEXED_INSTANCE_KEYS
from emulator.state.dicomweb_index import IndexedInstance, IndexedSet
from emulator.state.exceptions import ValidationException

STUDY, SERIES, INSTANCE = "study", "series", "instance"
DEFAULT_LIMIT = MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000
REACHABLE_RESULTS = 10_000
MAX_INCLUDE_FIELDS = 50

STUDY_KEYS = frozenset({
    "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
    "StudyDescription", "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime",
    "StudyInstanceUID", "StudyID",
})
SERIES_KEYS = frozenset({"Modality", "SeriesInstanceUID"})
INSTANCE_KEYS = frozenset({"SOPClassUID", "SOPInstanceUID", "WarningReason"})
SEARCHABLE = {
    STUDY: STUDY_KEYS,
    SERIES: STUDY_KEYS | SERIES_KEYS,
    INSTANCE: STUDY_KEYS | SERIES_KEYS | INSTANCE_KEYS,
}
_PARAMETERS = frozenset({"limit", "offset", "includefield", "fuzzymatching", "imageSetId"})

STUDY_RETURNED = (
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
    "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID",
)
SERIES_RETURNED = (
    "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
INSTANCE_RETURNED = (
    "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
    "NumberOfFrames", "TimezoneOffsetFromUTC",
)

_UID_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})
_DATE_KEYS = frozenset({"StudyDate", "PatientBirthDate"})
_TIME_KEYS = frozenset({"StudyTime", "PatientBirthTime"})
_NAME_KEYS = frozenset({"PatientName", "ReferringPhysicianName"})
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")


@dataclass(frozen=True)
class Scope:
    """What a search URL names: the level of its results and the study and
    series it is under, if any."""

    level: str
    study_uid: str | None = None
    series_uid: str | None = None

    @property
    def returned_levels(self) -> frozenset[str]:
        """Levels whose attributes a result carries: the target's, and for
        a search not under its parent, the levels above (PS3.18 6.7.1.2.2)."""
        if self.level == STUDY:
            return frozenset({STUDY})
        if self.level == SERIES:
            return frozenset({SERIES} | ({STUDY} if self.study_uid is None else set()))
        above = {SERIES} if self.series_uid is None else set()
        if self.study_uid is None:
            above.add(STUDY)
        return frozenset({INSTANCE} | above)


@dataclass(frozen=True)
class _Match:
    keyword: str
    level: str
    test: Callable[[Any], bool]


@dataclass
class Query:
    scope: Scope
    matches: list[_Match] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    image_set_id: str | None = None


def parse_query(scope: Scope, pairs: Sequence[tuple[str, str]]) -> Query:
    """The query string's (key, value) pairs as a Query, or ValidationException."""
    query = Query(scope)
    seen: set[str] = set()
    single = {key: value for key, value in pairs if key in _PARAMETERS - {"includefield"}}
    for key in _PARAMETERS - {"includefield"}:
        if sum(1 for k, _ in pairs if k == key) > 1:
            raise ValidationException(f"Query parameter {key} is given more than once")
    query.limit = _integer(single.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    query.offset = _integer(single.get("offset"), "offset", 0, MAX_OFFSET, 0)
    fuzzy = single.get("fuzzymatching", "false")
    if fuzzy not in ("true", "false"):
        raise ValidationException("fuzzymatching must be true or false")
    query.image_set_id = single.get("imageSetId") or None
    fields = [f.strip() for k, v in pairs if k == "includefield" for f in v.split(",")]
    fields = [f for f in fields if f]
    if len(fields) > MAX_INCLUDE_FIELDS:
        raise ValidationException(f"includefield takes at most {MAX_INCLUDE_FIELDS} values")
    for name in fields:
        if name == "all":
            query.include_all = True
            continue
        tag = tag_of(name.split(".", 1)[0])
        if tag is not None:  # unknown ones are ignored
            query.include.add(key_of(tag))
    for key, value in pairs:
        if key in _PARAMETERS:
            continue
        keyword = _search_keyword(key, scope.level)
        if keyword in seen:
            raise ValidationException(f"Search key {key} is given more than once")
        seen.add(keyword)
        query.matches.append(_Match(keyword, _level_of(keyword),
                                    _test(keyword, value, fuzzy == "true")))
    return query


def _integer(raw: str | None, name: str, low: int, high: int, default: int) -> int:
    if raw is None:
        return default
    if not re.fullmatch(r"\d+", raw) or not low <= int(raw) <= high:
        raise ValidationException(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _search_keyword(key: str, level: str) -> str:
    tag = tag_of(key)
    keyword = key_of(tag) if tag is not None else key
    if keyword not in SEARCHABLE[level]:
        raise ValidationException(
            f"{key} is not a search key at the {level} level; HealthImaging searches on "
            f"{', '.join(sorted(SEARCHABLE[level]))}"
        )
    return keyword


def _level_of(keyword: str) -> str:
    if keyword in STUDY_KEYS:
        return STUDY
    return SERIES if keyword in SERIES_KEYS else INSTANCE


def _test(keyword: str, raw: str, fuzzy: bool) -> Callable[[Any], bool]:
    """A test of an attribute's value (a scalar, a list, or None)."""
    if raw in ("", "*"):
        return lambda _: True
    if keyword in _UID_KEYS:
        uids = frozenset(u for u in re.split(r"[,\\]", raw) if u)
        return lambda value: any(str(v) in uids for v in _values(value))
    if keyword in _DATE_KEYS:
        low, high = _range(raw, keyword, _date)
        return lambda value: any(low <= str(v) <= high for v in _values(value) if _DATE.fullmatch(
            str(v)))
    if keyword in _TIME_KEYS:
        low, high = _range(raw, keyword, _time)
        return lambda value: any(low <= t <= high for t in map(_time_or_none, _values(value))
                                 if t is not None)
    if keyword == "WarningReason":
        codes = frozenset(_warning_code(part) for part in raw.split(","))
        return lambda value: any(_warning_code_or_none(v) in codes for v in _values(value))
    if fuzzy and keyword in _NAME_KEYS:
        prefix = raw.rstrip("*").casefold()
        return lambda value: any(
            word.casefold().startswith(prefix)
            for v in _values(value) for word in re.split(r"[\^= ]", str(v)) if word)
    if "*" in raw or "?" in raw:
        pattern = re.compile("".join(
            ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in raw), re.DOTALL)
        return lambda value: any(pattern.fullmatch(str(v)) for v in _values(value))
    return lambda value: any(str(v) == raw for v in _values(value))


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


def _range(raw: str, keyword: str, parse: Callable[[str, str], str]) -> tuple[str, str]:
    if raw.count("-") > 1:
        raise ValidationException(f"{keyword}: {raw!r} is not a value or a range A-B")
    low, dash, high = raw.partition("-")
    if not dash:
        return parse(raw, keyword), parse(raw, keyword) + ("\uffff" if keyword in _TIME_KEYS
                                                           else "")
    return (parse(low, keyword) if low else "",
            parse(high, keyword) + ("\uffff" if keyword in _TIME_KEYS else "") if high
            else "\uffff")


def _date(text: str, keyword: str) -> str:
    if not _DATE.fullmatch(text):
        raise ValidationException(f"{keyword}: {text!r} is not a date YYYYMMDD")
    return text


def _time(text: str, keyword: str) -> str:
    normal = _time_or_none(text)
    if normal is None:
        raise ValidationException(f"{keyword}: {text!r} is not a time HHMMSS[.FFFFFF]")
    # A time given to the minute or hour covers all of it: the upper bound
    # adds "\uffff" after the digits given.
    return normal


def _time_or_none(value: Any) -> str | None:
    """The digits of a TM value as given (HH, HHMM, HHMMSS[.F...]), colons
    of old-style times removed; None when it is not a time."""
    found = _TIME.fullmatch(str(value).replace(":", "").strip())
    return found.group(0) if found else None


def _warning_code(text: str) -> int:
    code = _warning_code_or_none(text.strip())
    if code is None:
        raise ValidationException(f"WarningReason: {text!r} is not a number")
    return code


def _warning_code_or_none(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


# -- results -----------------------------------------------------------------


@dataclass
class _Study:
    representative: IndexedInstance
    updated_at: float
    series: set[str] = field(default_factory=set)
    modalities: set[str] = field(default_factory=set)
    instances: int = 0


@dataclass
class _Series:
    representative: IndexedInstance
    instances: int = 0


class InstanceLoader:
    """Full instance attributes for ``includefield`` beyond what the index
    keeps: each image set's document is read once per search."""

    def __init__(self, read: Callable[[str, str], Mapping[str, Any]]) -> None:
        self._read = read
        self._docs: dict[tuple[str, str], Mapping[str, Any]] = {}

    def attributes(self, instance: IndexedInstance) -> Mapping[str, Any]:
        key = (instance.image_set_id, instance.version_id)
        if key not in self._docs:
            self._docs[key] = self._read(*key)
        series = (self._docs[key].get("Study") or {}).get("Series") or {}
        entry = (series.get(instance.series_uid) or {}).get("Instances", {}).get(
            instance.sop_uid) or {}
        attributes: Mapping[str, Any] = entry.get("DICOM") or {}
        return attributes


def search(
    query: Query,
    image_sets: Iterable[IndexedSet],
    loader: InstanceLoader,
    instance_url: Callable[[IndexedInstance], str],
) -> list[dict[str, Any]]:
    """One page of results as DICOM JSON objects (empty when nothing matches)."""
    scope = query.scope
    instances, updated = _in_scope(scope, image_sets)
    studies: dict[str, _Study] = {}
    series: dict[tuple[str, str], _Series] = {}
    for instance in instances:
        at = updated[instance.image_set_id]
        study = studies.get(instance.study_uid)
        if study is None or at > study.updated_at:
            kept = study
            study = studies[instance.study_uid] = _Study(instance, at)
            if kept is not None:
                study.series, study.modalities, study.instances = (
                    kept.series, kept.modalities, kept.instances)
        study.series.add(instance.series_uid)
        if instance.series.get("Modality"):
            study.modalities.add(str(instance.series["Modality"]))
        study.instances += 1
        one = series.setdefault((instance.study_uid, instance.series_uid), _Series(instance))
        one.instances += 1
    by_level = {level: [m for m in query.matches if m.level == level]
                for level in (STUDY, SERIES, INSTANCE)}
    matching_studies = {uid for uid, study in studies.items()
                        if all(m.test(_study_value(study, m.keyword)) for m in by_level[STUDY])}
    if scope.level == STUDY:
        ordered = sorted(matching_studies,
                         key=lambda uid: (-studies[uid].updated_at, uid))
        page = _page(ordered, query)
        return [_study_result(studies[uid], query) for uid in page]
    matching_series = {key for key, one in series.items() if key[0] in matching_studies
                       and all(m.test(_lookup(one.representative, m.keyword, SERIES))
                               for m in by_level[SERIES])}
    if scope.level == SERIES:
        ordered_series = sorted(matching_series, key=lambda key: (
            _number_or_last(series[key].representative.series.get("SeriesNumber")), key))
        return [_series_result(studies[key[0]], series[key], query)
                for key in _page(ordered_series, query)]
    found = [i for i in instances if (i.study_uid, i.series_uid) in matching_series
             and all(m.test(_lookup(i, m.keyword, INSTANCE)) for m in by_level[INSTANCE])]
    found.sort(key=lambda i: (_number_or_last(i.instance.get("InstanceNumber")),
                              i.sop_uid, i.series_uid))
    return [_instance_result(i, studies[i.study_uid], series[(i.study_uid, i.series_uid)],
                             query, loader, instance_url(i))
            for i in _page(found, query)]


def _in_scope(
    scope: Scope, image_sets: Iterable[IndexedSet]
) -> tuple[list[IndexedInstance], dict[str, float]]:
    """Instances under the URL's study and series, each SOP instance once
    (from the set changed last, should two primary sets hold it)."""
    chosen: dict[tuple[str, str, str], IndexedInstance] = {}
    updated: dict[str, float] = {}
    for image_set in image_sets:
        at = float(image_set.record["updatedAt"])
        updated[image_set.record["imageSetId"]] = at
        for instance in image_set.instances:
            if scope.study_uid is not None and instance.study_uid != scope.study_uid:
                continue
            if scope.series_uid is not None and instance.series_uid != scope.series_uid:
                continue
            key = (instance.study_uid, instance.series_uid, instance.sop_uid)
            earlier = chosen.get(key)
            if earlier is None or updated[earlier.image_set_id] < at:
                chosen[key] = instance
    return list(chosen.values()), updated


def _page(ordered: Sequence[Any], query: Query) -> Sequence[Any]:
    reachable = ordered[:REACHABLE_RESULTS]
    return reachable[query.offset:query.offset + query.limit]


def _number_or_last(value: Any) -> tuple[int, float]:
    try:
        return 0, float(value[0] if isinstance(value, list) else value)
    except (TypeError, ValueError, IndexError):
        return 1, 0.0


def _study_value(study: _Study, keyword: str) -> Any:
    if keyword == "ModalitiesInStudy":
        return sorted(study.modalities)
    return _lookup(study.representative, keyword, STUDY)


def _lookup(instance: IndexedInstance, keyword: str, level: str) -> Any:
    """``keyword``'s value at ``level`` or any level above it (Patient
    attributes sit above the Study's)."""
    identity = {"StudyInstanceUID": instance.study_uid,
                "SeriesInstanceUID": instance.series_uid,
                "SOPInstanceUID": instance.sop_uid}
    if keyword in identity:
        return identity[keyword]
    order = {INSTANCE: (instance.instance, instance.series, instance.study, instance.patient),
             SERIES: (instance.series, instance.study, instance.patient),
             STUDY: (instance.study, instance.patient)}[level]
    for attributes in order:
        if keyword in attributes:
            return attributes[keyword]
    return None


def _chosen(
    own: Mapping[str, Any], defaults: Iterable[str], query: Query, level: str,
    instance: IndexedInstance,
) -> dict[str, Any]:
    """A level's attributes in a result: all of them for includefield=all,
    else its defaults and its matching keys, and the includefield keys found
    at this level or above."""
    chosen = dict(own) if query.include_all else {k: own[k] for k in defaults if k in own}
    for keyword in query.include | {m.keyword for m in query.matches if m.level == level}:
        value = own.get(keyword, _lookup(instance, keyword, level))
        if value is not None or keyword in own:
            chosen[keyword] = value
    return chosen


def _study_part(study: _Study, query: Query) -> tuple[dict[str, Any], dict[str, Any]]:
    """(document attributes, computed DICOM JSON elements) of a study."""
    instance = study.representative
    chosen = _chosen({**instance.patient, **instance.study}, STUDY_RETURNED, query, STUDY,
                     instance)
    chosen.pop("ModalitiesInStudy", None)  # computed below, from the series
    computed = {
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": ({"vr": "CS", "Value": sorted(study.modalities)} if study.modalities
                     else {"vr": "CS"}),
        "00201206": {"vr": "IS", "Value": [len(study.series)]},
        "00201208": {"vr": "IS", "Value": [study.instances]},
    }
    return chosen, computed


def _series_part(one: _Series, query: Query) -> tuple[dict[str, Any], dict[str, Any]]:
    instance = one.representative
    chosen = _chosen(instance.series, SERIES_RETURNED, query, SERIES, instance)
    chosen["SeriesInstanceUID"] = instance.series_uid
    return chosen, {"00201209": {"vr": "IS", "Value": [one.instances]}}


def _instance_part(
    instance: IndexedInstance, query: Query, loader: InstanceLoader, url: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    own: Mapping[str, Any] = instance.instance
    beyond_index = query.include - set(INDEXED_INSTANCE_KEYS)
    if query.include_all or any(_lookup(instance, k, SERIES) is None for k in beyond_index):
        own = {**loader.attributes(instance), **instance.instance}
    chosen = _chosen(own, INSTANCE_RETURNED, query, INSTANCE, instance)
    chosen.update(SOPInstanceUID=instance.sop_uid, SeriesInstanceUID=instance.series_uid)
    return chosen, {
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00081190": {"vr": "UR", "Value": [url]},
    }


def _result(
    parts: Iterable[tuple[dict[str, Any], dict[str, Any]]], instance: IndexedInstance
) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    computed: dict[str, Any] = {}
    for chosen, extra in parts:
        attributes.update(chosen)
        computed.update(extra)
    attributes.setdefault("StudyInstanceUID", instance.study_uid)
    attributes.pop("PixelData", None)
    elements = dataset_json(attributes, instance.vrs, bulk_uri=lambda _: None)
    return dict(sorted({**elements, **computed}.items()))


def _study_result(study: _Study, query: Query) -> dict[str, Any]:
    return _result([_study_part(study, query)], study.representative)


def _series_result(study: _Study, one: _Series, query: Query) -> dict[str, Any]:
    parts = [_series_part(one, query)]
    if STUDY in query.scope.returned_levels:
        parts.insert(0, _study_part(study, query))
    return _result(parts, one.representative)


def _instance_result(
    instance: IndexedInstance,
    study: _Study,
    one: _Series,
    query: Query,
    loader: InstanceLoader,
    url: str,
) -> dict[str, Any]:
    levels = query.scope.returned_levels
    parts = []
    if STUDY in levels:
        parts.append(_study_part(study, query))
    if SERIES in levels:
        parts.append(_series_part(one, query))
    parts.append(_instance_part(instance, query, loader, url))
    return _result(parts, instance)
