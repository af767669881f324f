"""A migration's ingest runs on the work pool: started, watched, replaced.

Prefect alone cannot tell that a child is dead: a worker killed with its flow
run leaves the run RUNNING for ever. The ledger can: every ingest run records
its host, PID and process start time and beats while it holds files, so the
ledger judges a child, by the rule and the clock it judges a claim holder by
(tasks.ledger.runs): on this host, its process is gone; anywhere, it has not
beaten for the presumed-dead period. Its windows then go back to the queue for
the others, and the migration starts a replacement when no child is left alive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from tasks.crashed_runs import mark_crashed, read_flow_runs
from tasks.interruption import sleep_unless_stopped
from tasks.ledger import LedgerRun, RunLedger
from tasks.statuses import Liveness


@dataclass(frozen=True)
class ChildRun:
    flow_run_id: str
    name: str
    state: str
    liveness: Liveness
    report_folder: str | None = None

    @property
    def holds_work(self) -> bool:
        """Alive, or about to be: the migration waits for it."""
        return self.liveness in (Liveness.LIVE, Liveness.WAITING)


class NoWorkerError(Exception):
    """No ingest run of the migration ever started: nothing polls the work pool."""


def start_child(
    deployment: str, parameters: dict[str, Any], migration_run_id: str, number: int
) -> str:
    """A flow run of the ingest deployment, returned at once (not waited for).

    The idempotency key makes a retried migration get its children back
    instead of starting more.
    """
    # Called from sync code, run_deployment returns the flow run itself.
    run = cast(FlowRun, run_deployment(
        deployment, parameters={"params": parameters}, timeout=0,
        idempotency_key=f"dicom-migrate-{migration_run_id}-ingest-{number}",
        tags=[f"migration:{migration_run_id}"],
    ))
    return str(run.id)


def watch(flow_run_ids: Sequence[str], ledger: RunLedger) -> list[ChildRun]:
    """Each child as Prefect and the ledger (the migration's handle) see it. A
    child the ledger finds dead while Prefect still has it running is marked
    Crashed in Prefect (tasks.crashed_runs)."""
    with get_client(sync_client=True) as client:
        runs = read_flow_runs(client, flow_run_ids)
        recorded = ledger.recorded_runs(flow_run_ids)
        children = []
        for run_id in flow_run_ids:
            run = runs[run_id]
            state = (run.state.name if run.state else None) or "Unknown"
            liveness = liveness_of(recorded.get(run_id))
            if liveness is Liveness.DEAD and mark_crashed(
                    client, run, "Its process is gone or stopped beating in the ledger; "
                    "its files went back to the migration's queue."):
                state = "Crashed"
            if liveness is Liveness.WAITING and run.state and run.state.is_final():
                # Ended without ever recording itself: nothing of it to wait for.
                liveness = Liveness.FINISHED
            recorded_run = recorded.get(run_id)
            children.append(ChildRun(run_id, run.name or run_id, state, liveness,
                                     recorded_run.report_folder if recorded_run else None))
    return children


def liveness_of(run: LedgerRun | None) -> Liveness:
    """A child as the ledger judged its run; None: the ledger has no row of
    it (the run has not started on a worker yet)."""
    if run is None:
        return Liveness.WAITING
    if run.finished:
        return Liveness.FINISHED
    if run.presumed_dead:
        return Liveness.DEAD
    return Liveness.LIVE


def supervise(
    deployment: str,
    parameters: dict[str, Any],
    migration_run_id: str,
    ledger: RunLedger,
    workers: int,
    replacements: int,
    start_timeout_seconds: float,
    check_interval_seconds: float,
    unfinished: Callable[[], int],
    logger: logging.Logger | logging.LoggerAdapter[Any],
    sleep: Callable[[float], bool] = sleep_unless_stopped,
) -> list[ChildRun]:
    """Start ``workers`` children and wait until none is alive; while files are
    left and none is, start a replacement (at most ``replacements``).

    A child asked for but neither recorded in the ledger nor ended after
    ``start_timeout_seconds`` no longer counts: a worker took it and died
    before it began, or no worker took it. A stop (Ctrl-C) ends the watch
    at once; the children go on on their workers.

    Raises:
        NoWorkerError: no child ever began.
    """
    asked: dict[str, float] = {}

    def ask() -> None:
        run_id = start_child(deployment, parameters, migration_run_id, len(asked))
        asked[run_id] = time.monotonic()

    for _ in range(workers):
        ask()
    replaced = 0
    while True:
        stopped = sleep(check_interval_seconds)
        children = watch(list(asked), ledger)
        if stopped:
            return children
        now = time.monotonic()
        overdue = {c.flow_run_id for c in children if c.liveness is Liveness.WAITING
                   and now - asked[c.flow_run_id] > start_timeout_seconds}
        if any(c.holds_work and c.flow_run_id not in overdue for c in children):
            continue
        left = unfinished()
        if left == 0:
            return children
        if len(overdue) == len(children):
            raise NoWorkerError(
                f"No ingest run of {deployment} started within {start_timeout_seconds:g} s: "
                "start a worker on its work pool (prefect worker start --pool ...), or check "
                "that the deployment exists there.")
        if replaced == replacements:
            logger.warning("%d files left and no ingest run alive, after %d replacements: "
                           "run the migration again to finish them.", left, replaced)
            return children
        replaced += 1
        logger.warning("%d files left and no ingest run alive: starting replacement %d of %d.",
                       left, replaced, replacements)
        ask()
