"""What verification needs of the ledger: the files it says were imported
(of a run, a job, or a source in a data store), and the files verification
found the data store does not hold as their source has them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.ledger.files import IMPORTED
from tasks.ledger.location import require_existing
from tasks.ledger.schema import (
    LedgerError,
    chunks,
    engine_for,
    files_table,
    outcomes_table,
    runs_table,
)
from tasks.ledger.schema import (
    reconcile_placements_table as placements_table,
)
from tasks.statuses import FileStatus

# Outcomes that say the file is in the data store: what verification checks.
LANDED = frozenset({*IMPORTED, FileStatus.VERIFY_MISMATCH.value})
IMPORTED_COLUMNS = ["source_uri", "sop_instance_uid", "study_instance_uid",
                    "series_instance_uid", "image_set_id", "job_id", "warning_codes",
                    "status", "recorded_at", "reconciled_attributes"]


@dataclass(frozen=True)
class ImportedFiles:
    """Files the ledger says were imported, one row each (IMPORTED_COLUMNS)."""

    datastore_id: str | None
    files: pd.DataFrame


def imported_files(
    url: str,
    *,
    run_id: str | None = None,
    job_id: str | None = None,
    datastore_id: str | None = None,
    source: str | None = None,
) -> ImportedFiles:
    """The imported files of a run, of a job, or of a data store (optionally
    under a source): a run's and a job's as their outcomes recorded them, a
    data store's as each file's latest outcome stands; either way in the
    image set that holds the instance now, where a reconciliation moved it
    (with the keywords it left other than imported: ``reconciled_attributes``).

    Raises:
        LedgerError: no such run.
    """
    outcomes, placed = outcomes_table.c, placements_table.c
    columns = [outcomes.uri.label("source_uri"), outcomes.sop_instance_uid,
               sa.func.coalesce(placed.study_instance_uid, outcomes.study_instance_uid)
               .label("study_instance_uid"),
               sa.func.coalesce(placed.series_instance_uid, outcomes.series_instance_uid)
               .label("series_instance_uid"),
               sa.func.coalesce(placed.image_set_id, outcomes.image_set_id)
               .label("image_set_id"),
               outcomes.job_id, outcomes.warning_codes, outcomes.status, outcomes.recorded_at,
               placed.attributes.label("reconciled_attributes"), outcomes.datastore_id]
    query = sa.select(*columns).select_from(outcomes_table.outerjoin(
        placements_table, sa.and_(placed.datastore_id == outcomes.datastore_id,
                                  placed.uri == outcomes.uri,
                                  placed.from_image_set_id == outcomes.image_set_id)),
    ).where(outcomes.status.in_(LANDED))
    with engine_for(url).begin() as conn:
        if run_id:
            run = conn.execute(sa.select(runs_table.c.datastore_id)
                               .where(runs_table.c.run_id == run_id)).first()
            if run is None:
                raise LedgerError(f"The ledger has no run {run_id}: give the flow run ID "
                                  "shown in the Prefect UI, and the report location (or "
                                  "ledger URL) of that run.")
            datastore_id = run.datastore_id
            query = query.where(outcomes.run_id == run_id)
        elif job_id:
            query = query.where(outcomes.job_id == job_id)
        else:
            files = files_table.c
            query = query.join(files_table, sa.and_(
                files.datastore_id == outcomes.datastore_id, files.uri == outcomes.uri,
                files.run_id == outcomes.run_id, files.status.in_(LANDED)))
        if datastore_id:
            query = query.where(outcomes.datastore_id == datastore_id)
        if source:
            query = query.where(sa.or_(outcomes.uri == source,
                                       outcomes.uri.startswith(source.rstrip("/") + "/",
                                                               autoescape=True)))
        rows = pd.DataFrame([row._asdict() for row in conn.execute(
            query.order_by(outcomes.uri, outcomes.recorded_at))],
            columns=[*IMPORTED_COLUMNS, "datastore_id"])
    # A job read by more than one run: its latest outcome for each file.
    rows = rows.drop_duplicates("source_uri", keep="last")
    stores = set(rows["datastore_id"].dropna())
    if datastore_id is None and len(stores) == 1:
        datastore_id = stores.pop()
    return ImportedFiles(datastore_id, rows[IMPORTED_COLUMNS].reset_index(drop=True))


@task(name="select-imported-files", cache_policy=NO_CACHE)
def select_imported(
    url: str, run_id: str | None, job_id: str | None, datastore_id: str | None,
    source: str | None,
) -> ImportedFiles:
    require_existing(url)
    return imported_files(url, run_id=run_id, job_id=job_id, datastore_id=datastore_id,
                          source=source)


def record_verification(url: str, datastore_id: str, failed: Mapping[str, str]) -> None:
    """Mark imported files verification found the data store does not hold as
    their source has them (URI -> what differed): ``verify_mismatch``, which
    retry_failed imports again."""
    now = datetime.now(UTC)
    with engine_for(url).begin() as conn:
        for chunk in chunks(failed.items()):
            conn.execute(
                sa.update(files_table)
                .where(files_table.c.datastore_id == datastore_id,
                       files_table.c.uri == sa.bindparam("file_uri"),
                       # Not IN: an expanding parameter cannot go in executemany.
                       sa.or_(*(files_table.c.status == status for status in LANDED)))
                .values(status=FileStatus.VERIFY_MISMATCH.value,
                        reason=sa.bindparam("file_reason"), updated_at=now),
                [{"file_uri": uri, "file_reason": reason} for uri, reason in chunk],
            )
