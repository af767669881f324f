"""An ingest run killed outright, as a test sets one up: started in its own
process, SIGKILLed (with its process group) once its import job started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from config.settings import get_settings
from emulator.edge.server import LocalService
from tasks.ledger import LedgerJob, RunLedger, ledger_url
from tests.operations.conftest import ingest_params
from tests.operations.served import quiet_env


def kill_ingest_once_its_job_started(
    service: LocalService, tmp_path: Path, datastore_id: str, presumed_dead: float,
    monkeypatch: pytest.MonkeyPatch,
) -> LedgerJob:
    """The job the killed run left unfinished. Runs, this test's included,
    are presumed dead after ``presumed_dead`` seconds (the settings cache is
    cleared: the caller clears it again when done)."""
    monkeypatch.setenv("DICOM_IMPORT_RUN_PRESUMED_DEAD_SECONDS", str(presumed_dead))
    get_settings.cache_clear()
    env = {**quiet_env(tmp_path / "prefect-home"), **service.env(),
           "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "DICOM_IMPORT_RUN_PRESUMED_DEAD_SECONDS": str(presumed_dead)}
    params = ingest_params(tmp_path, datastore=datastore_id).model_dump_json()
    run = subprocess.Popen(
        [sys.executable, "-c", "import sys; from flows.ingest import dicom_ingest; "
         "from flows.parameters import IngestParameters; "
         "dicom_ingest(IngestParameters.model_validate_json(sys.argv[1]))", params],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    observer = RunLedger(ledger_url(None, str(tmp_path / "reports")), "observer", datastore_id)
    try:
        deadline = time.monotonic() + 120
        while not observer.unfinished_jobs() and run.poll() is None:
            assert time.monotonic() < deadline, "the run never started its job"
            time.sleep(0.1)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    (job,) = observer.unfinished_jobs()
    return job
