"""A flow run killed outright (SIGKILL) at a chosen moment, for the tests of
what the next run makes of what it left: its jobs, and its claims, which the
next run takes once the killed run is presumed dead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.objects import State
from pydantic import BaseModel

from emulator.edge.server import LocalService
from tasks.ledger import LedgerJob

PRESUMED_DEAD_SECONDS = 1.0


@contextmanager
def after_a_killed_run(
    flow: str, params: BaseModel, killed_when: Callable[[], bool], what: str,
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """Run ``flow`` (``module:function``) with ``params`` in a process of its
    own, kill it once ``killed_when()`` holds (``what`` names that moment),
    then, inside the block, with the clock ahead: the killed run has missed
    its beats (the claim lease stays at its 12 h default)."""
    from prefect.settings import PREFECT_API_URL

    from config.settings import get_settings
    from tasks.ledger import SystemClock
    from tests.operations.served import quiet_env

    monkeypatch.setenv("DICOM_IMPORT_RUN_PRESUMED_DEAD_SECONDS", str(PRESUMED_DEAD_SECONDS))
    get_settings.cache_clear()
    env = {**quiet_env(tmp_path / "prefect-home"), **service.env(),
           "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "DICOM_IMPORT_RUN_PRESUMED_DEAD_SECONDS": str(PRESUMED_DEAD_SECONDS)}
    module, function = flow.split(":")
    code = (f"import sys; from {module} import {function}; "
            f"from {type(params).__module__} import {type(params).__name__} as P; "
            f"{function}(P.model_validate_json(sys.argv[1]))")
    run = subprocess.Popen(
        [sys.executable, "-c", code, params.model_dump_json()], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not killed_when():
            assert run.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"the run never reached {what}"
            time.sleep(0.1)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    ahead = timedelta(seconds=PRESUMED_DEAD_SECONDS * 1.5)
    monkeypatch.setattr(SystemClock, "now", lambda _: datetime.now(UTC) + ahead)
    try:
        yield
    finally:
        get_settings.cache_clear()


def flow_run_state(flow_run_id: str) -> State:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    assert state is not None
    return state


@contextmanager
def after_an_ingest_killed_in_its_job(
    service: LocalService, tmp_path: Path, datastore_id: str, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LedgerJob]:
    """after_a_killed_run for an ingestion killed once its import job
    started; the block gets the job it left unfinished."""
    from tasks.ledger import RunLedger, ledger_url
    from tests.operations.conftest import ingest_params

    observer = RunLedger(ledger_url(None, str(tmp_path / "reports")), "observer", datastore_id)
    with after_a_killed_run("flows.ingest:dicom_ingest",
                            ingest_params(tmp_path, datastore=datastore_id),
                            lambda: bool(observer.unfinished_jobs()), "its job started",
                            service, tmp_path, monkeypatch):
        (job,) = observer.unfinished_jobs()
        yield job
