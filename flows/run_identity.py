"""What makes a run findable in the Prefect UI, and its handle on the ledger.

Runs are named after their source and start time (the UI's default names are
random adjectives), tagged with the data store (so the runs list filters by
store), and own their ledger claims under the Prefect flow run ID, which,
unlike the staging run ID, differs between two runs over the same source.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from prefect import get_client
from prefect.runtime import flow_run

from config.settings import get_settings
from tasks.ledger import (
    LEDGER_FILE_NAME,
    RunLedger,
    dispose_engine,
    ledger_url,
    require_existing,
)
from tasks.locations import S3Uri, is_s3


def _parameter(name: str) -> Any:
    """A field of the run's ``params`` model: a model in-process, a dict when
    the run came from a deployment and was not validated yet."""
    params = flow_run.parameters.get("params")
    if isinstance(params, dict):
        return params.get(name)
    return getattr(params, name, None)


def _start_stamp() -> str:
    started = flow_run.scheduled_start_time or datetime.now(UTC)
    return f"{started.astimezone(UTC):%Y-%m-%d %H:%MZ}"


def source_label(source: str) -> str:
    """The last two path components: enough to tell landing prefixes apart."""
    path = S3Uri.parse(source).path if is_s3(source) else source
    parts = [p for p in path.rstrip("/").split("/") if p]
    return "/".join(parts[-2:]) or source


def ingest_run_name() -> str:
    return f"{source_label(str(_parameter('source') or 'unknown'))} {_start_stamp()}"


def migrate_run_name() -> str:
    return f"migrate {source_label(str(_parameter('source') or 'unknown'))} {_start_stamp()}"


def retry_run_name() -> str:
    scope = (
        (f"job {_parameter('job_id')}" if _parameter("job_id") else None)
        or (f"run {str(_parameter('run_id'))[:8]}" if _parameter("run_id") else None)
        or str(_parameter("datastore") or "all")
    )
    return f"retry {scope} {_start_stamp()}"


def verify_run_name() -> str:
    scope = (
        (f"run {str(_parameter('run'))[:8]}" if _parameter("run") else None)
        or (f"job {_parameter('job')}" if _parameter("job") else None)
        or f"{source_label(str(_parameter('source') or 'unknown'))} in {_parameter('datastore')}"
    )
    return f"verify {scope} {_start_stamp()}"


def reconcile_run_name() -> str:
    decisions = str(_parameter("decisions") or "decisions").rstrip("/").rsplit("/", 1)[-1]
    what = "apply" if _parameter("apply") else "dry run"
    return f"reconcile {decisions} in {_parameter('datastore')} ({what}) {_start_stamp()}"


def tag_current_run(*tags: str) -> None:
    """Add tags to the running flow run (deployment tags are fixed before the
    data store is known)."""
    run_id = flow_run.id
    if not run_id:
        return
    wanted = sorted(set(flow_run.tags) | set(tags))
    with get_client(sync_client=True) as client:
        client.update_flow_run(uuid.UUID(run_id), tags=wanted)


def datastore_tags(requested: str | None, datastore_id: str) -> list[str]:
    return sorted({f"datastore:{datastore_id}", f"datastore:{requested or datastore_id}"})


@contextmanager
def scratch_ledger(datastore_id: str) -> Iterator[RunLedger]:
    """A ledger of one run's own, deleted with it: a dry run lists and counts
    like a real run without leaving state behind."""
    with tempfile.TemporaryDirectory(prefix="dicom-import-dry-run-") as folder:
        url = f"sqlite:///{folder}/{LEDGER_FILE_NAME}"
        try:
            yield RunLedger(url=url, run_id=flow_run.id or uuid.uuid4().hex,
                            datastore_id=datastore_id)
        finally:
            dispose_engine(url)


def run_ledger(report_location: str, datastore_id: str, begin: bool = False) -> RunLedger:
    """The run's handle on the ledger. Only a run that starts from a source
    may ``begin`` a ledger; the others fail when there is none (LedgerError).
    """
    settings = get_settings()
    url = ledger_url(settings.ledger_url, report_location)
    if not begin:
        require_existing(url)
    return RunLedger(
        url=url,
        run_id=flow_run.id or uuid.uuid4().hex,
        datastore_id=datastore_id,
        lease_seconds=settings.claim_lease_seconds,
        presumed_dead_seconds=settings.run_presumed_dead_seconds,
    )
