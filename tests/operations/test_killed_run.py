"""A run killed outright: the run that takes its files over tells Prefect,
which would otherwise show the killed flow run RUNNING for ever."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.ingest import dicom_ingest
from tests.operations.conftest import ingest_params, medical_imaging
from tests.operations.killed import after_an_ingest_killed_in_its_job, flow_run_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_the_run_taking_a_killed_runs_files_marks_it_crashed(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ct_series(tmp_path / "source" / "killed", 2, series_spec("crashed"), 16, 16)
    datastore_id = medical_imaging().create_datastore(
        datastoreName="crashed-store")["datastoreId"]
    # The killed run waits on its job, holding its files.
    service.faults.job_duration_seconds = 30.0
    with after_an_ingest_killed_in_its_job(service, tmp_path, datastore_id,
                                           monkeypatch) as job:
        killed = job.run_id
        assert flow_run_state(killed).is_running()
        service.faults.job_duration_seconds = 0.0
        rerun = dicom_ingest(ingest_params(tmp_path, datastore=datastore_id))

    state = flow_run_state(killed)
    assert state.is_crashed()
    assert state.message is not None and f"run {rerun.flow_run_id} took over" in state.message
    assert rerun.counts.get("imported") == 2
