"""Marking dead runs Crashed is a courtesy: Prefect out of reach fails nothing."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import tasks.crashed_runs
from tasks.crashed_runs import crash_dead_runs
from tasks.ledger import RunLedger, ledger_url


@dataclass(frozen=True)
class AnHourLater:
    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(hours=1)


def test_prefect_out_of_reach_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = ledger_url(None, str(tmp_path))
    dead = str(uuid.uuid4())
    RunLedger(url, dead, "store").start_run("dicom-ingest", str(tmp_path))
    finder = RunLedger(url, str(uuid.uuid4()), "store", presumed_dead_seconds=60,
                       clock=AnHourLater())

    def unreachable(**_: Any) -> Any:
        raise httpx.ConnectError("no Prefect API here")

    monkeypatch.setattr(tasks.crashed_runs, "get_client", unreachable)
    with caplog.at_level(logging.WARNING, logger="tasks.crashed_runs"):
        assert crash_dead_runs(finder, [dead, "not-a-flow-run"]) == []
    assert f"Could not mark dead runs {dead} Crashed" in caplog.text
