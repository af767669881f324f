"""Incremental ingestion: the ledger makes each file imported once across runs,
and once across runs that start together."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import ct_slice, series_spec, write, write_ct_series
from flows.ingest import IngestResult, dicom_ingest
from tests.operations.conftest import (
    BUCKET,
    DATASTORE,
    import_jobs,
    imported_by_service,
    ingest_params,
    medical_imaging,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _rows(result: IngestResult) -> pd.DataFrame:
    return pd.read_parquet(result.report_files_parquet)


def _relative(tmp_path: Path, uris: Any) -> list[str]:
    return sorted(str(Path(u).relative_to(tmp_path / "source")) for u in uris)


def test_growing_folder_imports_each_file_once(service: LocalService, tmp_path: Path) -> None:
    source = tmp_path / "source"
    first_files = write_ct_series(source / "day1", 4, series_spec("grow-1"), 16, 16)

    first = dicom_ingest(ingest_params(tmp_path))
    second_files = write_ct_series(source / "day2", 3, series_spec("grow-2"), 16, 16)
    second = dicom_ingest(ingest_params(tmp_path))
    third = dicom_ingest(ingest_params(tmp_path))

    assert first.counts["imported"] == 4
    rows = _rows(second)
    assert sorted(rows["source_uri"]) == sorted(map(str, second_files))
    assert set(rows["status"]) == {"imported"} and set(rows["change"]) == {"new"}
    assert second.skipped_unchanged == 4
    assert third.files == 0 and third.skipped_unchanged == 7 and third.jobs == 0
    assert _rows(third).empty
    # The service itself saw every file imported exactly once.
    assert second.datastore_id is not None
    imported = Counter(imported_by_service(second.datastore_id))
    expected = _relative(tmp_path, map(str, first_files + second_files))
    assert sorted(imported) == expected and set(imported.values()) == {1}
    assert len(import_jobs(second.datastore_id)) == first.jobs + second.jobs


def test_modified_file_is_imported_again(service: LocalService, tmp_path: Path) -> None:
    source = tmp_path / "source"
    spec = series_spec("modify")
    files = write_ct_series(source / "s", 3, spec, 16, 16)
    dicom_ingest(ingest_params(tmp_path))

    modified = ct_slice(spec, 1, 16, 16)
    modified.SeriesDescription = "reprocessed"
    write(modified, files[1])
    touched = files[2]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    again = dicom_ingest(ingest_params(tmp_path))

    rows = _rows(again)
    assert list(rows["source_uri"]) == [str(files[1])]
    row = rows.iloc[0]
    assert (row["status"], row["change"], row["attempts"]) == ("imported", "changed", 1)
    # Same bytes under a new mtime: checked by SHA-256, not imported again.
    assert again.skipped_unchanged == 2
    assert again.datastore_id is not None
    imported = Counter(imported_by_service(again.datastore_id))
    assert imported == {"s/slice_0000.dcm": 1, "s/slice_0001.dcm": 2, "s/slice_0002.dcm": 1}


def test_runs_started_together_never_import_a_file_twice(
    service: LocalService, tmp_path: Path
) -> None:
    files = write_ct_series(tmp_path / "source" / "s", 12, series_spec("race"), 16, 16)
    results: list[IngestResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            results.append(dicom_ingest(ingest_params(tmp_path)))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    reported = [uri for result in results for uri in _rows(result)["source_uri"]]
    # Each file in exactly one run's report; the other run skipped it.
    assert sorted(reported) == sorted(map(str, files))
    assert all(_rows(r)["status"].eq("imported").all() for r in results)
    assert sum(r.claimed_by_other_runs + r.skipped_unchanged for r in results) == len(files)
    assert results[0].datastore_id is not None
    imported = Counter(imported_by_service(results[0].datastore_id))
    assert sorted(imported) == _relative(tmp_path, map(str, files))
    assert set(imported.values()) == {1}


def _ingest_from_shell(
    tmp_path: Path, source: Path | str, capsys: pytest.CaptureFixture[str], *extra: str
) -> str:
    """``dicom-import ingest`` with every option left to its default but
    where things go; what it printed."""
    code = main(["ingest", str(source), "--datastore", DATASTORE,
                 "--staging-prefix", f"s3://{BUCKET}/staging",
                 "--output-prefix", f"s3://{BUCKET}/output",
                 "--report-location", str(tmp_path / "reports"),
                 "--poll-interval-seconds", "0.1", "--validation-workers", "1", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _datastore_id() -> str:
    (found,) = [d["datastoreId"] for d in medical_imaging().list_datastores()["datastoreSummaries"]
                if d["datastoreName"] == DATASTORE]
    return str(found)


def _versions(datastore_id: str) -> dict[str, int]:
    """Series Instance UID -> version of its image set."""
    found = medical_imaging().search_image_sets(datastoreId=datastore_id)
    return {item["DICOMTags"]["DICOMSeriesInstanceUID"]: item["version"]
            for item in found["imageSetsMetadataSummaries"]}


def _console_count(out: str, name: str) -> int | None:
    found = re.search(rf"^  {re.escape(name)} +(\d+)$", out, re.MULTILINE)
    return int(found.group(1)) if found else None


def _latest_report(tmp_path: Path) -> pd.DataFrame:
    parts = (tmp_path / "reports").rglob("files/part-*.parquet")
    return pd.read_parquet(max(parts, key=lambda p: p.stat().st_mtime).parent)


@pytest.mark.usefixtures("ledger_backend")
def test_a_rerun_imports_only_new_files_unless_told_to_reimport(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: 5 files added to an imported folder of 10, the same command
    again. One job of 5, the 10 counted skipped; ``--reimport`` takes all 15."""
    source = tmp_path / "source"
    old, new = series_spec("rerun-old"), series_spec("rerun-new")
    write_ct_series(source / "day1", 10, old, 16, 16)
    _ingest_from_shell(tmp_path, source, capsys)
    write_ct_series(source / "day2", 5, new, 16, 16)

    out = _ingest_from_shell(tmp_path, source, capsys)

    datastore_id = _datastore_id()
    assert ": 5 files processed, 1 import jobs" in out
    assert _console_count(out, "imported") == 5
    assert _console_count(out, "skipped (unchanged)") == 10
    imported = Counter(imported_by_service(datastore_id))
    assert len(imported) == 15 and set(imported.values()) == {1}
    assert _versions(datastore_id) == {old.series_instance_uid: 1, new.series_instance_uid: 1}

    out = _ingest_from_shell(tmp_path, source, capsys, "--reimport")

    assert ": 15 files processed, 1 import jobs" in out
    assert _console_count(out, "imported") == 15
    assert _console_count(out, "skipped (unchanged)") is None
    assert set(Counter(imported_by_service(datastore_id)).values()) == {2}
    assert _versions(datastore_id) == {old.series_instance_uid: 2, new.series_instance_uid: 2}


@pytest.mark.usefixtures("ledger_backend")
def test_a_copy_in_another_source_is_skipped_as_unchanged_naming_the_first(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder imported, then an S3 prefix holding its copies: the same SOP
    instances with the same SHA-256 are not imported again, each naming the
    file it was imported from; a copy with other bytes under the same SOP
    Instance UID is imported."""
    folder = tmp_path / "source"
    spec = series_spec("copied")
    files = write_ct_series(folder / "s", 4, spec, 16, 16)
    _ingest_from_shell(tmp_path, folder, capsys)
    s3 = boto3.client("s3")
    for path in files:
        s3.upload_file(str(path), BUCKET, f"copy/{path.name}")
    edited = ct_slice(spec, 1, 16, 16)
    edited.SeriesDescription = "reprocessed"
    write(edited, tmp_path / "edited.dcm")
    s3.upload_file(str(tmp_path / "edited.dcm"), BUCKET, f"copy/{files[1].name}")
    copy = f"s3://{BUCKET}/copy"

    out = _ingest_from_shell(tmp_path, copy, capsys)

    rows = _latest_report(tmp_path).set_index("source_uri")
    assert rows.loc[f"{copy}/{files[1].name}", "status"] == "imported"
    skipped = rows.drop(f"{copy}/{files[1].name}")
    assert sorted(skipped.index) == sorted(f"{copy}/{path.name}" for path in files
                                           if path != files[1])
    assert set(skipped["status"]) == {"already_imported"}
    for uri, message in skipped["error_message"].items():
        name = str(uri).rsplit("/", 1)[1]
        assert f"imported from {folder / 's' / name} (source {folder}" in message
    assert skipped["sha256"].str.fullmatch("[0-9a-f]{64}").all()
    assert _console_count(out, "already_imported") == 3
    assert "3 files skipped as unchanged (already_imported)" in out and f"from {folder};" in out
    imported = Counter(imported_by_service(_datastore_id()))
    assert imported == Counter([f"s/{path.name}" for path in files] + [files[1].name])

    again = _ingest_from_shell(tmp_path, copy, capsys)
    assert "Nothing new: 4 files unchanged since earlier runs" in again
    assert len(import_jobs(_datastore_id())) == 2
