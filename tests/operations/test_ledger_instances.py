"""Which copies the ledger knows the data store already holds: only an
instance every import of which put these very bytes there, on both backends."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from tasks.discover import SourceFile
from tasks.ledger import Inventory, RunLedger
from tasks.ledger.instances import mark_imported_elsewhere
from tasks.report_row import file_rows
from tasks.statuses import FileStatus, FileValidity
from tasks.validate import ValidationRecord

DATASTORE = "0123456789abcdef0123456789abcdef"


def _file(path: Path, content: bytes) -> SourceFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return SourceFile(str(path), len(content), "v1", path.name)


def _record_earlier(url: str, outcomes: list[tuple[SourceFile, str, str, bytes]]) -> None:
    """Earlier runs' outcomes: (file, SOP Instance UID, status, bytes imported)."""
    for number, (item, sop, status, content) in enumerate(outcomes):
        ledger = RunLedger(url, f"earlier-{number}", DATASTORE)
        source = str(Path(item.uri).parent)
        ledger.start_run("dicom-ingest", source)
        inventory = Inventory(ledger, ledger.run_id)
        inventory.fill(source, [item], skip_unchanged=True, max_attempts=3)
        inventory.claim_window(1)
        ledger.record_outcomes(file_rows(pd.DataFrame({
            "source_uri": [item.uri], "size": pd.array([item.size], dtype="Int64"),
            "sop_instance_uid": [sop], "status": [status],
            "sha256": [hashlib.sha256(content).hexdigest()],
        })))


def _valid(item: SourceFile, sop: str) -> ValidationRecord:
    return ValidationRecord(uri=item.uri, relative_path=item.relative_path, size=item.size,
                            status=FileValidity.VALID, sop_instance_uid=sop,
                            version=item.version)


def test_only_an_instance_held_with_these_bytes_is_imported_elsewhere(
    empty_ledger_url: str, tmp_path: Path
) -> None:
    same, other = b"DICM same bytes", b"DICM other byte"
    _record_earlier(empty_ledger_url, [
        (_file(tmp_path / "folder" / "held.dcm", same), "1.1", FileStatus.IMPORTED, same),
        # Imported twice with different bytes: which the data store holds is not known.
        (_file(tmp_path / "folder" / "twice.dcm", same), "1.2", FileStatus.IMPORTED, same),
        (_file(tmp_path / "older" / "twice.dcm", other), "1.2", FileStatus.IMPORTED, other),
        # Verification found the data store does not hold these bytes.
        (_file(tmp_path / "folder" / "differs.dcm", same), "1.3", FileStatus.VERIFY_MISMATCH,
         same),
        # Refused: its bytes never reached the data store.
        (_file(tmp_path / "folder" / "refused.dcm", same), "1.4", FileStatus.INVALID, same),
    ])
    copies = {name: _file(tmp_path / "copy" / f"{name}.dcm", content) for name, content in
              {"held": same, "edited": other, "twice": same, "differs": same,
               "refused": same}.items()}
    sops = {"held": "1.1", "edited": "1.1", "twice": "1.2", "differs": "1.3", "refused": "1.4"}
    ledger = RunLedger(empty_ledger_url, "copy-run", DATASTORE)

    marked, sources = mark_imported_elsewhere(
        ledger, [_valid(copies[name], sops[name]) for name in copies])

    by_name = {Path(record.uri).stem: record for record in marked}
    assert {name: record.status for name, record in by_name.items()} == {
        "held": FileValidity.ALREADY_IMPORTED, "edited": FileValidity.VALID,
        "twice": FileValidity.VALID, "differs": FileValidity.VALID, "refused": FileValidity.VALID,
    }
    held = by_name["held"]
    assert held.sha256 == hashlib.sha256(same).hexdigest()
    assert f"imported from {tmp_path / 'folder' / 'held.dcm'} (source " in str(
        held.reason_message)
    assert sources == {str(tmp_path / "folder"): 1}
