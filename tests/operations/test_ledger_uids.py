"""UIDs as long as the import takes them (256 characters; HealthImaging warns
past DICOM's 64) fit every ledger, PostgreSQL's included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from config.settings import get_settings
from emulator.samples import write_with
from flows.ingest import dicom_ingest
from import_rules.rules import MAX_UID_LENGTH
from tasks.ledger import Inventory, RunLedger, engine_for, files_table, outcomes_table
from tasks.ledger.schema import inventory_instances_table
from tests.operations.conftest import ingest_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _uid(index: int, length: int) -> str:
    prefix = f"1.2.{index}."
    return prefix + "9" * (length - len(prefix))


@pytest.fixture
def ledger(service: Any, empty_ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs keep their ledger at ``empty_ledger_url``."""
    monkeypatch.setenv("DICOM_IMPORT_LEDGER_URL", empty_ledger_url)
    get_settings.cache_clear()
    yield empty_ledger_url
    get_settings.cache_clear()


def test_a_run_records_uids_of_every_length_the_import_takes(ledger: str, tmp_path: Path) -> None:
    lengths = (100, 118, MAX_UID_LENGTH)
    for index, length in enumerate(lengths):
        write_with(tmp_path / "source" / f"{index}.dcm", StudyInstanceUID=_uid(index, length),
                   SeriesInstanceUID=_uid(index + 3, length),
                   SOPInstanceUID=_uid(index + 6, length))

    result = dicom_ingest(ingest_params(tmp_path))

    counts = {status: count for status, count in result.counts.items() if count}
    assert counts == {"imported_with_warnings": len(lengths)}
    expected = {(_uid(i, n), _uid(i + 3, n), _uid(i + 6, n)) for i, n in enumerate(lengths)}
    with engine_for(ledger).connect() as conn:
        for table in (files_table, outcomes_table):
            rows = conn.execute(sa.select(table.c.study_instance_uid,
                                          table.c.series_instance_uid,
                                          table.c.sop_instance_uid))
            assert {tuple(row) for row in rows} == expected, table.name
    # Each instance's first file, as a migration's windows keep them.
    sops = {sop: f"/landing/{index}.dcm" for index, (_, _, sop) in enumerate(expected)}
    inventory = Inventory(RunLedger(ledger, "migration", "0123456789abcdef0123456789abcdef"),
                          "migration")
    assert inventory.keep_instances(sops) == {}
    with engine_for(ledger).connect() as conn:
        kept = conn.execute(sa.select(inventory_instances_table.c.sop_instance_uid))
        assert {sop for (sop,) in kept} == set(sops)
