"""Flow runs the ledger finds dead, marked Crashed in Prefect.

Prefect alone cannot tell that a flow run is dead: a process killed outright
leaves its run RUNNING for ever. The ledger can (tasks.ledger.runs), so the
run that finds another dead tells Prefect, and the UI says what happened to
it: a migration watching its ingest runs (tasks.child_runs), and a run that
takes over a dead run's claims (flows.ingest, flows.retry).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.states import Crashed

from tasks.ledger import RunLedger

log = logging.getLogger(__name__)


def read_flow_runs(client: SyncPrefectClient, flow_run_ids: Sequence[str]) -> dict[str, FlowRun]:
    """The flow runs of ``flow_run_ids`` Prefect has, by ID."""
    return {str(run.id): run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
        id=FlowRunFilterId(any_=[uuid.UUID(i) for i in flow_run_ids])))}


def mark_crashed(client: SyncPrefectClient, run: FlowRun, message: str) -> bool:
    """Crashed, with ``message``, if Prefect still has ``run`` running: not
    one that ended, nor one waiting for a retry another process will run.
    True when marked."""
    if run.state is None or not run.state.is_running():
        return False
    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return True


def crash_dead_runs(ledger: RunLedger, run_ids: Sequence[str]) -> list[str]:
    """Mark Crashed the flow runs of ``run_ids`` that the ledger presumes
    dead, naming ``ledger``'s run as the one that took their files over;
    returns those marked. Only a courtesy to whoever reads Prefect: when
    Prefect cannot be reached, or a run ID is not a flow run's (a run
    outside Prefect), the run goes on with a warning."""
    if not run_ids:
        return []
    dead = sorted(run.run_id for run in ledger.recorded_runs(run_ids).values()
                  if run.presumed_dead and _is_flow_run_id(run.run_id))
    if not dead:
        return []
    message = (f"Presumed dead by the ledger (its process is gone or it stopped beating); "
               f"run {ledger.run_id} took over the files it held.")
    try:
        with get_client(sync_client=True) as client:
            marked = [run_id for run_id, run in read_flow_runs(client, dead).items()
                      if mark_crashed(client, run, message)]
    except Exception as error:  # whatever the client raises, the run must not fail of it
        log.warning("Could not mark dead runs %s Crashed in Prefect: %s", ", ".join(dead), error)
        return []
    for run_id in marked:
        log.info("Run %s was presumed dead: marked Crashed in Prefect.", run_id)
    return marked


def _is_flow_run_id(run_id: str) -> bool:
    try:
        uuid.UUID(run_id)
    except ValueError:
        return False
    return True
