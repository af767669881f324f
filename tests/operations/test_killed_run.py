"""A run killed outright: the run that takes its files over tells Prefect,
which would otherwise show the killed flow run RUNNING for ever."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.objects import State

from config.settings import get_settings
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.ingest import dicom_ingest
from tasks.ledger import SystemClock
from tests.operations.conftest import ingest_params, medical_imaging
from tests.operations.killed_runs import kill_ingest_once_its_job_started

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def flow_run_state(flow_run_id: str) -> State:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    assert state is not None
    return state


def test_the_run_taking_a_killed_runs_files_marks_it_crashed(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ct_series(tmp_path / "source" / "killed", 2, series_spec("crashed"), 16, 16)
    datastore_id = medical_imaging().create_datastore(
        datastoreName="crashed-store")["datastoreId"]
    # The killed run waits on its job, holding its files.
    service.faults.job_duration_seconds = 30.0
    presumed_dead = 1.0
    job = kill_ingest_once_its_job_started(service, tmp_path, datastore_id, presumed_dead,
                                           monkeypatch)
    killed = job.run_id
    assert flow_run_state(killed).is_running()
    service.faults.job_duration_seconds = 0.0
    # The rerun's clock runs ahead: the killed run has missed its beats.
    ahead = timedelta(seconds=presumed_dead * 1.5)
    monkeypatch.setattr(SystemClock, "now", lambda _: datetime.now(UTC) + ahead)

    try:
        rerun = dicom_ingest(ingest_params(tmp_path, datastore=datastore_id))
    finally:
        get_settings.cache_clear()

    state = flow_run_state(killed)
    assert state.is_crashed()
    assert state.message is not None and f"run {rerun.flow_run_id} took over" in state.message
    assert rerun.counts.get("imported") == 2
