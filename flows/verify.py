"""The ``dicom-verify`` flow: prove that what earlier runs imported is in the
data store as the source has it.

Wiring only: the ledger says which files were imported and where
(tasks.ledger), tasks.verify checks them, and the results go to a
verification report, to the ledger (a discrepancy is ``verify_mismatch``,
which retry_failed imports again) and, for a whole source, to a signed-off
verification record (tasks.verify.audit).
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from config.settings import get_settings
from flows.cluster import source_reader
from flows.parameters import VerifyParameters
from flows.run_identity import verify_run_name
from flows.task_arguments import quote
from tasks.import_jobs import resolve
from tasks.ledger import ledger_url, select_imported
from tasks.ledger import record_verification as record_in_ledger
from tasks.preflight import check_dask_address
from tasks.report import write_table
from tasks.verify.audit import sign_off, write_record
from tasks.verify.results import DISCREPANCIES, verification_counts, with_verification
from tasks.verify.run import files_in, verify

SUMMARY_ARTIFACT_KEY = "dicom-verify-summary"


class VerifyResult(BaseModel):
    datastore_id: str | None
    files: int
    counts: dict[str, int]
    report_parquet: str | None = None
    report_csv: str | None = None
    # The signed-off record (--datastore with --source only).
    record_json: str | None = None
    record_markdown: str | None = None


# Prefect's types reject its own ThreadPoolTaskRunner here (PrefectHQ/prefect#16938).
@flow(name="dicom-verify", task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
      flow_run_name=verify_run_name)
def dicom_verify(params: VerifyParameters) -> VerifyResult:
    """Verify the files a run, a job, or a whole source imported.

    Args:
        params: Which files, how deeply, and where the ledger and reports are.
    """
    if params.dask_address:
        check_dask_address(params.dask_address)
    url = ledger_url(get_settings().ledger_url, params.report_location)
    datastore = resolve(params.datastore, create=False) if params.datastore else None
    selected = select_imported(url, params.run, params.job,
                               datastore.datastore_id if datastore else None, params.source)
    counts = verification_counts([])
    if selected.datastore_id is None or selected.files.empty:
        get_run_logger().info("The ledger lists no imported file for this selection.")
        return VerifyResult(datastore_id=selected.datastore_id, files=0, counts=counts)
    results = verify(selected.datastore_id, quote(files_in(selected.files)), params.mode,
                     source_reader(params.dask_address, params.validation_workers))
    rows = with_verification(selected.files, results).rename(
        columns={"recorded_at": "imported_at"})
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{(flow_run.id or 'local')[:8]}"
    folder = params.output or f"{params.report_location.rstrip('/')}/verification/{stamp}"
    report = write_table(rows, folder, "verification")
    record_in_ledger(url, selected.datastore_id,
                     {r.source_uri: r.detail or r.verification.value for r in results
                      if r.verification in DISCREPANCIES})
    counts = verification_counts(results)
    record: dict[str, str] = {}
    if datastore is not None and params.source:
        signed = sign_off(datastore.datastore_id, datastore.name, params.source,
                          params.mode.value, counts, report, rows["imported_at"])
        record = write_record(signed, folder)
    _publish(counts, report["parquet"])
    return VerifyResult(datastore_id=selected.datastore_id, files=len(rows), counts=counts,
                        report_parquet=report["parquet"], report_csv=report["csv"],
                        record_json=record.get("json"), record_markdown=record.get("md"))


def _publish(counts: dict[str, int], report: str) -> None:
    """Counts and a path only: artifacts are visible to every UI user."""
    lines = ["| verification | files |", "|---|---:|",
             *(f"| {result} | {count} |" for result, count in counts.items())]
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT_KEY,
        markdown="## DICOM verify\n\n" + "\n".join(lines) + f"\n\nReport: `{report}`\n",
        description="Imported files by verification result.",
    )
