"""Incremental ingestion: the ledger makes each file imported once across runs,
and once across runs that start together."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from emulator.edge.server import LocalService
from emulator.samples import ct_slice, series_spec, write, write_ct_series
from flows.ingest import IngestResult, dicom_ingest
from tests.operations.conftest import import_jobs, imported_by_service, ingest_params

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
