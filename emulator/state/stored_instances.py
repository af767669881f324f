"""What a STOW-RS request did with each of its instances, as the backend
reports it to the edge, which writes the Store Instances Response."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceOutcome:
    """One instance of a request, in the request's order: stored in
    ``image_set_id`` (with the code of its first import warning, if any), or
    not, for ``failure_reason`` (PS3.18 FailureReason). The UIDs are those
    of the instance as far as they could be read."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    image_set_id: str | None = None
    is_primary: bool = True
    warning_reason: int | None = None
    failure_reason: int | None = None
