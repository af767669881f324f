"""What verification found for each file, and how it joins a per-file report
(its vocabulary: ``Verification`` in tasks.statuses, ``VerifyMode`` in config.settings)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from tasks.statuses import FileStatus, Verification

# Results that say the data store does not hold the source as it is.
DISCREPANCIES = frozenset({Verification.MISMATCH, Verification.MISSING})


@dataclass(frozen=True)
class FileToVerify:
    """An imported file: where it came from and where the import put it."""

    source_uri: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    image_set_id: str
    job_id: str | None = None
    # The warnings HealthImaging attached to it, as the report spells them
    # (';'-separated): a coercion it reported is not a mismatch.
    warning_codes: str | None = None
    # Keywords a reconciliation left other than imported (';'-separated): an
    # operator's decision, not a mismatch (tasks.reconcile_record).
    reconciled: str | None = None


@dataclass(frozen=True)
class FileVerification:
    source_uri: str
    verification: Verification
    # Which attribute or frame differed, by name or number: never a value.
    detail: str | None = None


def with_verification(files: pd.DataFrame, results: Iterable[FileVerification]) -> pd.DataFrame:
    """``files`` (one row per ``source_uri``) with the two verification
    columns; a file without a result is ``not_checked``. An imported file
    the data store does not hold as the source has it becomes
    ``verify_mismatch``: a failure, retried like a failed job."""
    found = {r.source_uri: r for r in results}
    uris = files["source_uri"]
    verification = pd.Series([found[u].verification.value if u in found
                              else Verification.NOT_CHECKED.value for u in uris],
                             index=files.index, dtype=object)
    detail = pd.Series([found[u].detail if u in found else None for u in uris],
                       index=files.index, dtype=object)
    imported = files["status"].isin([FileStatus.IMPORTED.value,
                                     FileStatus.IMPORTED_WITH_WARNINGS.value])
    failed = imported & verification.isin([v.value for v in DISCREPANCIES])
    return files.assign(
        status=files["status"].where(~failed, FileStatus.VERIFY_MISMATCH.value),
        verification=verification, verification_detail=detail)


def verification_counts(results: Sequence[FileVerification]) -> dict[str, int]:
    counts = dict.fromkeys((v.value for v in Verification), 0)
    for result in results:
        counts[result.verification.value] += 1
    return counts
