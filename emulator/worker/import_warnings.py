"""Warnings an import attaches to a file that still imported (behaviour doc
§3.1), as the output's WARNING lines carry them. The codes are
``import_rules``', which validation expects them by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from import_rules.codes import WarningCode


@dataclass(frozen=True)
class ImportWarning:
    code: WarningCode
    message: str

    def as_json(self) -> dict[str, Any]:
        return {
            "warning_reason_code": int(self.code),
            "type": self.code.name,
            "message": self.message,
        }


def discarded_warning(tags: list[str]) -> list[ImportWarning]:
    """ELEMENTS_DISCARDED for the elements left out of the metadata, named by
    tag only: their values may be a patient's."""
    if not tags:
        return []
    return [ImportWarning(
        WarningCode.ELEMENTS_DISCARDED,
        f"{len(tags)} element(s) could not be read and were left out: {', '.join(tags)}",
    )]
