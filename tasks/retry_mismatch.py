"""Files a verification found the data store does not hold as their source has
them (``verify_mismatch``), and what a retry may do about them.

Importing a file again replaces its instance only where the instance is in
the primary image set of its series and the file's series-level values agree
with that set: otherwise HealthImaging puts the new copy into a non-primary
image set beside it, and the data store holds the instance twice. So before
any of them is imported again the data store is asked where it holds the
instance (tasks.landed), and:

- held where the ledger says, in the primary set only: imported again (the
  documented way to replace an instance), then verified like every import of
  the retry;
- held in another primary set than the ledger names (it was moved, say by a
  merge made outside ``dicom-import``): not imported again; the ledger is
  pointed there and the file verified there;
- held in a non-primary set too: not imported again (that would add one more
  copy); left for an operator's decision.

A file imported again that lands in a non-primary set, or that still
differs, is not ``imported`` either. Whatever is left failing says what to
do: decide with ``dicom-import reconcile``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.settings import VerifyMode
from tasks.landed import Landed, confirmed_row, find_landed, instance_of
from tasks.ledger import IMPORTED, LedgerFile, RunLedger
from tasks.report_row import file_rows
from tasks.statuses import Change, FileStatus
from tasks.verify.results import FileVerification, with_verification
from tasks.verify.run import SourceReader, files_in, verify_files

# Ends every detail of a file left for an operator: the console counts them by it.
DECIDE = "decide with dicom-import reconcile"


def needs_decision(rows: pd.DataFrame) -> int:
    """Files of a retry's report left failing for an operator to decide on."""
    if rows.empty:
        return 0
    return int((rows["status"].eq(FileStatus.VERIFY_MISMATCH.value)
                & rows["error_message"].fillna("").str.endswith(DECIDE)).sum())


def settle_mismatched(
    ledger: RunLedger, candidates: Sequence[LedgerFile], mode: VerifyMode, read: SourceReader,
) -> tuple[pd.DataFrame, list[FileVerification], list[LedgerFile]]:
    """The ``verify_mismatch`` files a retry must not import again, recorded
    (their report rows, and what verifying them found), and the candidates
    left to import. Only files this run wins a claim on are recorded."""
    mismatched = [c for c in candidates
                  if c.status == FileStatus.VERIFY_MISMATCH.value and instance_of(c)]
    if not mismatched:
        return file_rows(pd.DataFrame()), [], list(candidates)
    won = {f.uri for f in ledger.claim_known(
        [(c.as_source_file(), Change.UNCHANGED) for c in mismatched]).files}
    mismatched = [c for c in mismatched if c.uri in won]
    instances = {c.uri: i for c in mismatched if (i := instance_of(c))}
    landed = find_landed(ledger.datastore_id, instances.values())
    held = [row for c in mismatched
            if (row := _held_row(c, landed.get(instances[c.uri]))) is not None]
    if not held:
        return file_rows(pd.DataFrame()), [], list(candidates)
    rows = file_rows(pd.DataFrame(held))
    results = verify_files(ledger.datastore_id, files_in(rows[rows["status"].isin(IMPORTED)]),
                           mode, read)
    rows = with_verification(rows, results)
    rows = ledger.record_outcomes(_with_decision(
        rows, "not imported again: image set " + rows["image_set_id"].fillna("")
        + " holds its instance, but not as the source has it"))
    settled = set(rows["source_uri"])
    return rows, results, [c for c in candidates if c.uri not in settled]


def _held_row(item: LedgerFile, where: Landed | None) -> dict[str, Any] | None:
    """The report row of a file not to import again, None for one to import."""
    if where is None:
        return None
    beside = [*([] if where.is_primary else [where.image_set_id]), *where.also_in]
    if beside:
        return {**confirmed_row(item, item.batch_id, item.job_id, where, ""),
                "status": FileStatus.VERIFY_MISMATCH.value,
                "error_message": f"not imported again: the data store holds its instance in "
                                 f"non-primary image set {', '.join(beside)} already; {DECIDE}"}
    if where.image_set_id == item.image_set_id:
        return None  # in place: importing it again replaces it
    return confirmed_row(item, item.batch_id, item.job_id, where,
                         f"Confirmed in the data store in image set {where.image_set_id} "
                         f"(the ledger named {item.image_set_id or 'none'}): not imported again")


def judge_reimported(rows: pd.DataFrame, mismatched: Collection[str]) -> pd.DataFrame:
    """A retry's report rows once verified: a file imported again because it
    mismatched (``mismatched``, URIs) is not ``imported`` when the copy went
    into a non-primary image set, and says what to do when it still differs."""
    again = rows["source_uri"].isin(list(mismatched))
    beside = (again & rows["status"].isin(IMPORTED)
              & rows["is_primary"].eq(False).fillna(False).astype(bool))
    landed_beside = ("imported again into non-primary image set " + rows["image_set_id"]
                     .fillna("") + ": its values conflict with the primary image set of its "
                     f"series; {DECIDE}")
    rows = rows.assign(
        status=rows["status"].where(~beside, FileStatus.VERIFY_MISMATCH.value),
        error_message=rows["error_message"].where(~beside, landed_beside))
    return _with_decision(rows, "still not as the source has it after importing it again",
                          again)


def _with_decision(
    rows: pd.DataFrame, why: pd.Series | str, among: pd.Series | None = None
) -> pd.DataFrame:
    """Rows ``verify_mismatch`` after verification (of ``among`` only) say
    ``why``, what differs, and what to do."""
    left = rows["status"].eq(FileStatus.VERIFY_MISMATCH.value) & ~rows[
        "error_message"].fillna("").str.endswith(DECIDE)
    if among is not None:
        left &= among
    detail = rows["verification_detail"].fillna(rows["verification"].fillna(""))
    return rows.assign(error_message=rows["error_message"].where(
        ~left, why + " (" + detail + f"); {DECIDE}"))


@task(name="find-mismatched-in-datastore", cache_policy=NO_CACHE)
def look_up_mismatched(
    ledger: RunLedger, candidates: list[LedgerFile], mode: VerifyMode, read: SourceReader,
) -> tuple[pd.DataFrame, list[FileVerification], list[LedgerFile]]:
    return settle_mismatched(ledger, candidates, mode, read)
