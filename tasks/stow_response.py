"""Reading a STOW-RS answer: the Store Instances Response (PS3.18 Annex I)
in DICOM JSON, per instance: stored (with its warning) or failed (with its
FailureReason).

AWS's proxy sample reads the body of a 200 and of a 409 alike; PS3.18 adds
202 (some stored, or warned). Which failures may pass when the instance is
sent again is this module's to say: a processing failure (0x0110) or out of
resources (0xA7xx) may; a data set the service cannot understand, or that
does not match its SOP class or the request's study, will not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from import_rules.codes import FailureReason, WarningCode, warning_label

# Statuses whose body is a Store Instances Response (a 409 may also be the
# service's own error: a data store not ACTIVE, with a message instead).
ANSWERED = frozenset({200, 202, 409})
# Nothing was stored: the same request may be sent again at once (after a wait).
NOT_TAKEN = frozenset({429, 503})

_REFERENCED = "00081199"
_FAILED = "00081198"
_SOP_INSTANCE = "00081155"
_RETRIEVE_URL = "00081190"
_WARNING = "00081196"
_FAILURE = "00081197"


class NotAStoreResponse(ValueError):
    """The body is not a Store Instances Response."""


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    # The warning's code (WarningReason), when warned.
    warning: int | None
    # Named when it landed in a non-primary image set (the retrieve URL's
    # ``imageSetId``: WADO-RS reaches those sets only so).
    image_set_id: str | None


@dataclass(frozen=True)
class FailedInstance:
    # None when the service could not read which instance it was.
    sop_instance_uid: str | None
    reason: int | None

    @property
    def may_pass(self) -> bool:
        """Whether sending the instance again may store it."""
        return self.reason is not None and (
            self.reason == FailureReason.PROCESSING_FAILURE or 0xA700 <= self.reason <= 0xA7FF)

    @property
    def error_type(self) -> str:
        """As an import job's output would type the failure: the service's
        own (retried automatically), or the file's (retried once changed)."""
        if self.reason == FailureReason.PROCESSING_FAILURE:
            return "InternalServerException"
        return "ValidationException"

    def describe(self) -> str:
        if self.reason is None:
            return "STOW-RS did not store the instance and gave no FailureReason"
        try:
            name = FailureReason(self.reason).name
        except ValueError:
            name = "unknown reason"
        return f"STOW-RS did not store the instance: FailureReason 0x{self.reason:04X} ({name})"


@dataclass(frozen=True)
class StoreAnswer:
    stored: tuple[StoredInstance, ...]
    failed: tuple[FailedInstance, ...]


def read_store_response(document: Any) -> StoreAnswer:
    """The instances a Store Instances Response names.

    Raises:
        NotAStoreResponse: ``document`` is not one.
    """
    if not isinstance(document, dict) or not (
        _REFERENCED in document or _FAILED in document or _RETRIEVE_URL in document
    ):
        raise NotAStoreResponse("the answer is not a Store Instances Response")
    stored = tuple(
        StoredInstance(uid, _first(item, _WARNING), _image_set_of(_first(item, _RETRIEVE_URL)))
        for item in _items(document, _REFERENCED)
        if (uid := _first(item, _SOP_INSTANCE))
    )
    failed = tuple(FailedInstance(_first(item, _SOP_INSTANCE) or None, _first(item, _FAILURE))
                   for item in _items(document, _FAILED))
    return StoreAnswer(stored, failed)


def warning_codes(reason: int | None) -> str | None:
    """A WarningReason as the report's ``warning_codes`` spells an import
    job's warnings (``UNSUPPORTED_TRANSFER_SYNTAX(0xB120)``)."""
    if reason is None:
        return None
    try:
        return warning_label(WarningCode(reason))
    except ValueError:
        return f"WARNING(0x{reason:04X})"


def _items(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = document.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values or [] if isinstance(item, dict)]


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if values else None


def _image_set_of(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    found = parse_qs(urlsplit(url).query).get("imageSetId")
    return found[0] if found else None
