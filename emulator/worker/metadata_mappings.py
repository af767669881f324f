"""DICOM JSON metadata import: ``importConfiguration.dicomJsonMetadataImportConfiguration``
of StartDICOMImportJob maps a study (and optionally one series) to a DICOM JSON
file under the input prefix, whose attributes enhance the imported instances.

AWS documents only the request's shape. Choices made here (the behaviour
contract says to pick these where AWS is silent):

* The file is the DICOM JSON model (PS3.18 Annex F): one object of
  ``{"ggggeeee": {"vr": ..., "Value": [...]}}``, or an array holding one.
* Its attributes override the file's own on conflict; a series mapping is
  applied after (so wins over) a study mapping of the same study.
* Study, Series and SOP Instance UIDs, Pixel Data, the Image Pixel module's
  description of it (Rows, Columns, Bits Allocated, ...) and the file meta
  group (0002) in the JSON are ignored: a mapping enhances instances, it does
  not move them to another study or change how their pixels are read.
* The mapped JSON files are not imported as DICOM files. A mapping that cannot
  be applied (file missing, not JSON, not a DICOM JSON object, or no instance
  in the input with its UIDs) is a FAILURE line naming the JSON file, with
  ``ValidationException``; the instances it named import without it. It never
  fails the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydicom.dataset import Dataset

from emulator.state.records import ImportJob
from emulator.worker.import_output import CUSTOMER_ERROR, FileOutcome
from emulator.worker.input_objects import read_input_object

# The UIDs that place an instance, and what describes its pixels (Pixel Data
# and the Image Pixel module), which the stored frames must keep matching.
_IGNORED_TAGS = frozenset(
    {
        0x0020000D, 0x0020000E, 0x00080018, 0x7FE00010,
        0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011,
        0x00280100, 0x00280101, 0x00280102, 0x00280103,
    }
)


@dataclass(frozen=True)
class MetadataMapping:
    study_instance_uid: str
    series_instance_uid: str | None
    key: str


@dataclass
class LoadedMappings:
    """Readable mappings with their attributes, and the failure of each other one."""

    overlays: dict[MetadataMapping, Dataset] = field(default_factory=dict)
    failures: list[FileOutcome] = field(default_factory=list)
    keys: frozenset[str] = frozenset()

    def apply(self, ds: Dataset, study_uid: str, series_uid: str) -> None:
        """Study mappings first, series mappings after, so the series wins."""
        for series_level in (False, True):
            for mapping, overlay in self.overlays.items():
                if mapping.study_instance_uid != study_uid:
                    continue
                if (mapping.series_instance_uid is not None) != series_level:
                    continue
                if series_level and mapping.series_instance_uid != series_uid:
                    continue
                for elem in overlay:
                    if elem.tag not in _IGNORED_TAGS and elem.tag.group != 0x0002:
                        ds[elem.tag] = elem

    def unmatched(self, imported: set[tuple[str, str]]) -> list[FileOutcome]:
        """A FAILURE line for each readable mapping that named no imported instance."""
        studies = {study for study, _ in imported}
        return [
            _failure(
                mapping.key,
                f"No instance in the input has StudyInstanceUID {mapping.study_instance_uid}"
                + (
                    f" and SeriesInstanceUID {mapping.series_instance_uid}"
                    if mapping.series_instance_uid
                    else ""
                ),
            )
            for mapping in self.overlays
            if (
                (mapping.study_instance_uid, mapping.series_instance_uid) not in imported
                if mapping.series_instance_uid
                else mapping.study_instance_uid not in studies
            )
        ]


def mappings_of(job: ImportJob, prefix: str) -> list[MetadataMapping]:
    configuration = (job.import_configuration or {}).get(
        "dicomJsonMetadataImportConfiguration"
    ) or {}
    base = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
    return [
        MetadataMapping(
            item["studyInstanceUID"],
            item.get("seriesInstanceUID"),
            f"{base}{item['metadataFilePath'].lstrip('/')}",
        )
        for item in configuration.get("dicomMetadataMappings") or []
    ]


def load_mappings(
    s3: Any, bucket: str, mappings: list[MetadataMapping], in_process: bool
) -> LoadedMappings:
    loaded = LoadedMappings(keys=frozenset(m.key for m in mappings))
    for mapping in mappings:
        try:
            data = read_input_object(s3, bucket, mapping.key, in_process)
        except (ClientError, BotoCoreError) as error:
            loaded.failures.append(
                _failure(mapping.key, f"Unable to read the metadata file s3://{bucket}/"
                         f"{mapping.key}: {error}")
            )
            continue
        try:
            loaded.overlays[mapping] = _dicom_json(data)
        except ValueError as error:
            loaded.failures.append(_failure(mapping.key, str(error)))
    return loaded


def _dicom_json(data: bytes) -> Dataset:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("The metadata file is not valid JSON") from None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if not isinstance(document, dict):
        raise ValueError("The metadata file is not one DICOM JSON object (PS3.18 Annex F)")
    try:
        return Dataset.from_json(document)
    except Exception as error:  # pydicom raises many types for malformed DICOM JSON
        raise ValueError(f"The metadata file is not valid DICOM JSON: {error}") from None


def _failure(key: str, message: str) -> FileOutcome:
    return FileOutcome(key, CUSTOMER_ERROR, message)
