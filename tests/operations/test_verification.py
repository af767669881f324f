"""Verification through the flows and the CLI, against the local service:
an ingestion verifies what it imported, ``dicom-import verify`` checks a past
run or a whole source, and what differs is failed, retryable and named."""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import ct_slice, series_spec, write, write_ct_series
from flows.ingest import dicom_ingest
from flows.retry import retry_failed
from tasks.ledger import RunLedger, ledger_url
from tests.operations.conftest import DATASTORE, ingest_params, retry_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _ledger(tmp_path: Path, datastore_id: str) -> RunLedger:
    return RunLedger(ledger_url(None, str(tmp_path / "reports")), "test", datastore_id)


def _rows(path: str) -> pd.DataFrame:
    rows = pd.read_parquet(path)
    rows["name"] = rows["source_uri"].map(lambda uri: Path(uri).name)
    return rows.set_index("name")


def _alter_first_frame(service: LocalService, image_set_id: str) -> None:
    """The data store holds other pixels for the set's first frame: its
    stored metadata's checksum says so."""
    version = service.backend.image_sets.version(image_set_id)
    document = json.loads(gzip.decompress(service.store.get_blob(version["metadataKey"])))
    (series,) = document["Study"]["Series"].values()
    for instance in series["Instances"].values():
        checksums = instance["ImageFrames"][0]["PixelDataChecksumFromBaseToFullResolution"]
        checksums[-1]["Checksum"] = zlib.crc32(b"other pixels")
    service.store.put_blob(version["metadataKey"], gzip.compress(json.dumps(document).encode()))


def test_ingestion_verifies_what_it_imported_and_fails_what_differs(
    service: LocalService, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    spec = series_spec("verify-ingest")
    write_ct_series(source / "a", 1, spec, 16, 16)
    # A second slice of the series that disagrees on a study attribute the
    # image set keeps once: HealthImaging holds the first slice's value.
    other = ct_slice(spec, 1, 16, 16)
    other.StudyDescription = "Another description"
    write(other, source / "a" / "slice_0001.dcm")

    result = dicom_ingest(ingest_params(tmp_path, verify="pixels"))

    assert result.counts["imported"] == 1 and result.counts["verify_mismatch"] == 1
    assert result.verification == {"verified": 1, "mismatch": 1, "missing": 0,
                                   "not_checked": 0}
    rows = _rows(result.report_files_parquet)
    assert rows.loc["slice_0000.dcm", "verification"] == "verified"
    assert list(rows.loc["slice_0001.dcm", ["status", "verification", "verification_detail"]
                         ]) == ["verify_mismatch", "mismatch", "StudyDescription differs"]
    failed = _ledger(tmp_path, result.datastore_id or "").failed_files()
    assert [(Path(f.uri).name, f.status) for f in failed] == [
        ("slice_0001.dcm", "verify_mismatch")]


def test_verify_a_past_run_exits_non_zero_on_a_mismatch_until_retried(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ct_series(tmp_path / "source" / "a", 2, series_spec("verify-run"), 16, 16)
    first = dicom_ingest(ingest_params(tmp_path, verify="off"))
    assert first.counts["imported"] == 2
    # The run by the start of its ID, as its report folder's name ends.
    run = ["verify", "--run", str(first.flow_run_id)[:8], "--report-location",
           str(tmp_path / "reports"), "--mode", "pixels"]

    assert main(run) == 0
    # The verification is a flow run of its own, named after what it checks.
    assert f"(verify run {str(first.flow_run_id)[:8]} " in capsys.readouterr().err
    (image_set_id,) = set(_rows(first.report_files_parquet)["image_set_id"])
    _alter_first_frame(service, image_set_id)
    capsys.readouterr()

    assert main(run) == 1
    out = capsys.readouterr().out
    report = next(line.split(": ", 1)[1] for line in out.splitlines()
                  if line.startswith("Verification report: "))
    rows = pd.read_csv(report)
    assert set(rows["verification"]) == {"mismatch"}
    assert set(rows["verification_detail"]) == {"pixel checksum differs in frame 1"}
    assert {f.status for f in _ledger(tmp_path, first.datastore_id or "").failed_files()} == {
        "verify_mismatch"}

    retried = retry_failed(retry_params(tmp_path))
    assert retried.retried_files == 2 and retried.counts["imported"] == 2
    assert main(run) == 0


def test_verification_record_of_a_source_names_its_report_by_sha256(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    write_ct_series(source / "a", 2, series_spec("verify-record"), 16, 16)
    first = dicom_ingest(ingest_params(tmp_path))
    assert first.verification["verified"] == 2

    code = main(["verify", "--datastore", DATASTORE, "--source", str(source),
                 "--report-location", str(tmp_path / "reports")])

    out = capsys.readouterr().out
    assert code == 0
    record_path = next(line.split(": ", 1)[1] for line in out.splitlines()
                       if line.startswith("Verification record: "))
    record: dict[str, Any] = json.loads(Path(record_path).read_text())
    assert record["counts"] == {"verified": 2, "mismatch": 0, "missing": 0, "not_checked": 0}
    assert record["datastore_id"] == first.datastore_id and record["source"] == str(source)
    for item in record["report"].values():
        assert item["sha256"] == hashlib.sha256(Path(item["uri"]).read_bytes()).hexdigest()
    assert record["imports_from"] <= record["imports_to"] <= record["signed_off_at"]
    assert "@" in record["signed_off_by"] and record["tool_version"]
    written = Path(record_path).read_text() + Path(record_path).with_suffix(".md").read_text()
    assert "Doe^Jane" not in written and "PID-0001" not in written


def test_verify_without_a_ledger_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", "--run", "nope", "--report-location", str(tmp_path / "none")])

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("dicom-import verify: There is no ledger at")
