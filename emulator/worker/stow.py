"""The instances of one STOW-RS request, stored through the import jobs' own
path (``storing``): the same import rules, grouping and storage. STOW-RS
does not deduplicate, so an instance stored again makes a new version of
its image set (behaviour doc §7).

Only the request's own rule is added: with a StudyInstanceUID in its path,
an instance of another study fails (FailureReason 0xA901). A request that
finds the service stopping, or image sets kept locked by other writes, ends
as a whole (503), and what it wrote is removed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from emulator.state.exceptions import ServiceUnavailableException
from emulator.state.stored_instances import InstanceOutcome
from emulator.worker.grouping import ImageSetsBusy
from emulator.worker.import_output import FileOutcome
from emulator.worker.part10 import CheckedInstance, InvalidDicomFile
from emulator.worker.storing import InputFile, Prepare, StoringStopped, store_files
from import_rules.codes import FailureReason

if TYPE_CHECKING:
    from emulator.state.models import HealthImagingBackend


def store_request(
    backend: HealthImagingBackend,
    datastore_id: str,
    files: list[Path | None],
    study_instance_uid: str | None,
    writer_id: str,
) -> list[InstanceOutcome]:
    """Store the request's instances (``files`` in request order; None for a
    part that is not DICOM, which fails unread) and say what became of each.
    Every write is tagged ``writer_id``, by which it is rolled back."""
    inputs = [
        InputFile(_name(number), path.stat().st_size, partial(path.read_bytes))
        for number, path in enumerate(files) if path is not None
    ]
    prepare = _in_study(study_instance_uid) if study_instance_uid else None
    try:
        stored = store_files(backend, datastore_id, inputs, writer_id, prepare=prepare,
                             keep_warning_reason=True)
    except (StoringStopped, ImageSetsBusy) as error:
        backend.image_sets.roll_back_import(writer_id)
        why = str(error) or "The local service is stopping"
        raise ServiceUnavailableException(f"{why}; send the request again") from None
    outcomes = {outcome.input_file: outcome for outcome in stored.outcomes}
    return [
        _outcome(outcomes[_name(number)], path) if path is not None
        else InstanceOutcome(None, None, failure_reason=FailureReason.CANNOT_UNDERSTAND)
        for number, path in enumerate(files)
    ]


def _name(number: int) -> str:
    return f"part {number + 1}"


def _in_study(study: str) -> Prepare:
    def prepare(checked: CheckedInstance) -> None:
        if checked.study_instance_uid != study:
            raise InvalidDicomFile(
                f"StudyInstanceUID {checked.study_instance_uid} is not the study of the "
                f"request, {study}",
                FailureReason.STUDY_INSTANCE_UID_MISMATCH,
            )

    return prepare


def _outcome(outcome: FileOutcome, path: Path) -> InstanceOutcome:
    placement = outcome.placement
    if placement is None:
        sop_class, sop_instance = outcome.sop_class_uid, outcome.sop_instance_uid
        if sop_instance is None:
            sop_class, sop_instance = _identify(path)
        return InstanceOutcome(
            sop_class, sop_instance,
            failure_reason=outcome.reason or FailureReason.PROCESSING_FAILURE,
        )
    return InstanceOutcome(
        outcome.sop_class_uid,
        outcome.sop_instance_uid,
        outcome.study_instance_uid,
        outcome.series_instance_uid,
        placement.image_set_id,
        placement.is_primary,
        warning_reason=int(outcome.warnings[0].code) if outcome.warnings else None,
    )


def _identify(path: Path) -> tuple[str | None, str | None]:
    """The SOP Class and Instance UIDs of a file the import refused, as far
    as they can be read, so that the client can tell which instance failed."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
        sop_class, sop_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
    except Exception:  # whatever a broken file makes the parser raise
        return None, None
    return (str(sop_class) if sop_class else None,
            str(sop_instance) if sop_instance else None)
