"""The metadata check: is the instance where the import said, as the source has it?

One ``GetImageSetMetadata`` per image set, never per file: the document
lists every instance of the set under Study -> Series -> Instances, with the
patient, study and series attributes at their levels and each instance's
ImageFrames.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from import_rules.codes import WarningCode, warning_label
from tasks.backoff import error_code
from tasks.statuses import Verification
from tasks.verify.results import FileToVerify, FileVerification
from tasks.verify.source import COMPARED_ATTRIBUTES, SourceFacts, normalized

# GetImageSetMetadata allows 50 requests/s: a few threads stay well inside it
# and botocore retries the odd throttle.
_WORKERS = 4
# Warnings with which HealthImaging says it changed or dropped values: an
# attribute that differs from the source is then what the import reported.
COERCION_WARNINGS = frozenset(warning_label(code) for code in (
    WarningCode.COERCION_OF_DATA_ELEMENTS, WarningCode.ELEMENTS_DISCARDED,
    WarningCode.INVALID_DICOM_VALUE_LENGTH))
# Warnings with which it says it stored other frames than NumberOfFrames declares.
FRAME_WARNINGS = frozenset(warning_label(code) for code in (
    WarningCode.FRAME_NUMBER_MISMATCH, WarningCode.FRAMES_EXTRACTION_FAILURE,
    WarningCode.UNSUPPORTED_TRANSFER_SYNTAX))


def image_set_documents(
    client: Any, datastore_id: str, image_set_ids: Iterable[str]
) -> dict[str, dict[str, Any] | None]:
    """Each image set's current metadata; None for a set that is gone."""
    ids = sorted(set(image_set_ids))
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return dict(zip(ids, pool.map(lambda i: _document(client, datastore_id, i), ids),
                        strict=True))


def readable_documents(
    client: Any, datastore_id: str, image_set_ids: Iterable[str]
) -> tuple[dict[str, dict[str, Any] | None], dict[str, str]]:
    """The documents that could be read (None: the set is gone), and why the
    others could not: the service failing verification's reads (past
    botocore's retries) leaves their files not checked, never costs the run."""
    ids = sorted(set(image_set_ids))
    documents: dict[str, dict[str, Any] | None] = {}
    unreadable: dict[str, str] = {}

    def read(image_set_id: str) -> None:
        try:
            documents[image_set_id] = _document(client, datastore_id, image_set_id)
        except ClientError as error:
            unreadable[image_set_id] = f"{error_code(error)} from GetImageSetMetadata"
        except BotoCoreError as error:
            unreadable[image_set_id] = f"GetImageSetMetadata failed: {error}"

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(read, ids))
    return documents, unreadable


def _document(client: Any, datastore_id: str, image_set_id: str) -> dict[str, Any] | None:
    try:
        answer = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":  # deleted, or never there
            return None
        raise
    document: dict[str, Any] = orjson.loads(gzip.decompress(answer["imageSetMetadataBlob"].read()))
    return document


def instance_entry(
    document: dict[str, Any] | None, item: FileToVerify
) -> tuple[dict[str, Any] | None, FileVerification | None]:
    """The instance's entry in the document, or why it is missing."""
    if document is None:
        return None, FileVerification(item.source_uri, Verification.MISSING,
                                      f"image set {item.image_set_id} not found")
    study = document.get("Study") or {}
    series = study.get("Series") or {}
    entry = ((series.get(item.series_instance_uid) or {}).get("Instances") or {}).get(
        item.sop_instance_uid)
    if entry is not None:
        return entry, None
    elsewhere = any(item.sop_instance_uid in ((s or {}).get("Instances") or {})
                    for s in series.values())
    detail = (f"SOP instance under another series than {item.series_instance_uid} "
              f"in image set {item.image_set_id}" if elsewhere
              else f"SOP instance not in image set {item.image_set_id}")
    verdict = Verification.MISMATCH if elsewhere else Verification.MISSING
    return None, FileVerification(item.source_uri, verdict, detail)


def check_metadata(
    document: dict[str, Any], entry: dict[str, Any], item: FileToVerify, source: SourceFacts
) -> FileVerification:
    """Attributes at their levels and the number of frames, against the
    source. Differences the import reported (a coercion warning), and those
    an operator's reconciliation decided, are named in the detail but do not
    make a mismatch."""
    warned = set((item.warning_codes or "").split(";"))
    reconciled = set((item.reconciled or "").split(";"))
    study = document.get("Study") or {}
    levels = {
        "Patient": (document.get("Patient") or {}).get("DICOM") or {},
        "Study": study.get("DICOM") or {},
        "Series": ((study.get("Series") or {}).get(item.series_instance_uid) or {}).get(
            "DICOM") or {},
    }
    differing = [keyword for level, keywords in COMPARED_ATTRIBUTES.items()
                 for keyword in keywords
                 if not _same(levels[level].get(keyword), source.attributes.get(keyword))]
    decided = [keyword for keyword in differing if keyword in reconciled]
    differing = [keyword for keyword in differing if keyword not in reconciled]
    notes = [f"{', '.join(decided)} as reconciled"] if decided else []
    problems = [f"{keyword} differs" for keyword in differing]
    stored = len(entry.get("ImageFrames") or [])
    frames_differ = stored != source.frames
    if frames_differ:
        problems.append(f"{stored} frames stored, {source.frames} in the source")
    tolerated = (not differing or warned & COERCION_WARNINGS) and (
        not frames_differ or warned & FRAME_WARNINGS)
    if not problems:
        return FileVerification(item.source_uri, Verification.VERIFIED,
                                "; ".join(notes) or None)
    if tolerated:
        return FileVerification(item.source_uri, Verification.VERIFIED,
                                "; ".join(["as the import warned: " + "; ".join(problems),
                                           *notes]))
    return FileVerification(item.source_uri, Verification.MISMATCH,
                            "; ".join(problems + notes))


def _same(stored: Any, source: str | None) -> bool:
    stored_text = normalized(stored)
    if stored_text == source:
        return True
    # An integer string (SeriesNumber) may be written "001" and stored 1.
    try:
        return stored_text is not None and source is not None and (
            float(stored_text) == float(source))
    except ValueError:
        return False
