"""The ``dicom-migrate`` flow: one source, many ingest flow runs.

Orchestration only. The source is streamed into the ledger once (an
inventory); ingest runs of the ingest deployment, on its work pool, claim
windows of that inventory until none are left (tasks.child_runs watches them
and replaces the dead); the import jobs of all of them share the data store's
job slots (tasks.job_slots). The summary counts the inventory's files from
the ledger, never from the children's results.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.parameters import ImportOptions, MigrateParameters
from flows.run_identity import datastore_tags, migrate_run_name, run_ledger, tag_current_run
from tasks.child_runs import ChildRun, supervise
from tasks.import_jobs import resolve
from tasks.job_slots import ensure_job_slots
from tasks.ledger import Inventory, list_source
from tasks.migration_summary import publish_summary, summary_markdown
from tasks.preflight import preflight
from tasks.statuses import ListingState, Skip

UNFINISHED = ListingState.UNFINISHED.value


class MigrateResult(BaseModel):
    inventory_id: str
    datastore_id: str
    datastore_name: str | None = None
    files: int
    # Latest outcome of each file of the inventory it took (not those skipped
    # as unchanged), and "unfinished".
    counts: dict[str, int]
    skipped_unchanged: int = 0
    given_up: int = 0
    # flow run ID -> report folder (None when it wrote none).
    reports: dict[str, str | None] = {}
    child_states: dict[str, str] = {}
    jobs_in_flight_limit: int | None = None


@flow(name="dicom-migrate", flow_run_name=migrate_run_name)
def dicom_migrate(params: MigrateParameters) -> MigrateResult:
    """Migrate a whole source: inventory it once, then fan out ingest runs on the
    work pool until every file has a final status.

    Args:
        params: What to migrate, where to, with how many ingest runs and how many
            import jobs in flight.
    """
    logger = get_run_logger()
    preflight(params.report_location, params.source, params.staging_prefix,
              params.output_prefix, dask_address=params.dask_address)
    assert params.datastore, "the parameter model requires a data store"
    datastore = resolve(params.datastore, create=params.create_datastore, creatable=True)
    datastore_id = datastore.datastore_id
    tag_current_run(*datastore_tags(params.datastore, datastore_id), "migration")
    ledger = run_ledger(params.report_location, datastore_id, begin=True)
    ledger.start_run("dicom-migrate", params.source)
    inventory = Inventory(ledger, ledger.run_id)
    listing = list_source(inventory, params.source, not params.reimport, params.max_attempts)
    logger.info("%d files in the inventory: %d to process, %d unchanged since an earlier run, "
                "%d given up", listing.files, listing.to_process, listing.skipped_unchanged,
                listing.given_up)
    limit = ensure_job_slots(datastore_id, params.max_jobs_in_flight)

    def unfinished() -> int:
        return inventory.file_statuses().get(UNFINISHED, 0)

    children: list[ChildRun] = []
    if listing.to_process:
        children = supervise(
            params.ingest_deployment, child_parameters(params, datastore_id, inventory),
            inventory.inventory_id, ledger, params.workers, params.replacements,
            params.start_timeout_seconds, params.check_interval_seconds, unfinished, logger)
    counts = inventory.file_statuses()
    skipped = {"skipped_unchanged": listing.skipped_unchanged,
               Skip.GIVEN_UP.value: listing.given_up}
    publish_summary(summary_markdown(params.source, counts, skipped, children))
    ledger.finish_run({**counts, **skipped})
    if not any(child.holds_work for child in children):
        # Stopped (Ctrl-C), its children go on with the listing: kept for them.
        inventory.forget()
    return MigrateResult(
        inventory_id=inventory.inventory_id, datastore_id=datastore_id,
        datastore_name=datastore.name, files=listing.files, counts=counts,
        jobs_in_flight_limit=limit,
        reports={c.flow_run_id: c.report_folder for c in children},
        child_states={c.flow_run_id: c.state for c in children}, **skipped,
    )


def child_parameters(
    params: MigrateParameters, datastore_id: str, inventory: Inventory
) -> dict[str, object]:
    """The ingest runs' parameters: the migration's own import options, the
    data store by ID (resolved once), and the inventory instead of discovery."""
    shared = params.model_dump(mode="json", include=set(ImportOptions.model_fields))
    return {**shared, "datastore": datastore_id, "reimport": params.reimport,
            "inventory": inventory.inventory_id}
