"""The ``dicom-reconcile`` flow: carry out an operator's decisions about
non-primary image sets (tasks.reconcile), or, by default, only say what they
would do.

One decision at a time: two decisions may merge into the same primary image
set, and a set being written is LOCKED to every other write.
"""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from config.settings import get_settings
from flows.parameters import ReconcileParameters
from flows.run_identity import datastore_tags, reconcile_run_name, tag_current_run
from tasks.import_jobs import resolve
from tasks.interruption import stop_requested
from tasks.ledger import ledger_url, require_existing
from tasks.reconcile import DecisionResult, not_started, read_decisions, reconcile_image_set
from tasks.reconcile_record import ReconcileRecord
from tasks.statuses import DecisionOutcome


class ReconcileResult(BaseModel):
    datastore_id: str
    datastore_name: str | None = None
    applied: bool
    decisions: list[DecisionResult]

    def failed(self) -> list[DecisionResult]:
        return [d for d in self.decisions if d.outcome is DecisionOutcome.FAILED]


@flow(name="dicom-reconcile", flow_run_name=reconcile_run_name)
def dicom_reconcile(params: ReconcileParameters) -> ReconcileResult:
    """Promote or merge non-primary image sets as the decisions file says.

    Args:
        params: The decisions, the data store, and whether to apply them.
    """
    decisions = read_decisions(params.decisions)
    datastore = resolve(str(params.datastore), create=False)
    datastore_id = datastore.datastore_id
    tag_current_run(*datastore_tags(params.datastore, datastore_id), "reconcile")
    # The changes are recorded in the runs' ledger, never in a new one; a dry
    # run refuses what --apply would.
    url = ledger_url(get_settings().ledger_url, params.report_location)
    require_existing(url)
    record = None
    if params.apply:
        record = ReconcileRecord(url, flow_run.id or uuid.uuid4().hex, datastore_id)
    results = [
        not_started(image_set_id, decision) if stop_requested()
        else reconcile_image_set(datastore_id, image_set_id, decision, record,
                                 params.write_timeout_seconds)
        for image_set_id, decision in decisions.items()
    ]
    result = ReconcileResult(datastore_id=datastore_id, datastore_name=datastore.name,
                             applied=params.apply, decisions=results)
    get_run_logger().info("%d decisions %s, %d failed", len(results),
                          "carried out" if params.apply else "checked", len(result.failed()))
    return result
