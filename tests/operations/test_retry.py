"""retry_failed against the local service: exactly the retryable files, to
imported, with attempts counted and limits kept."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import BROKEN_MAKERS, series_spec, write_ct_series
from flows.ingest import IngestResult, dicom_ingest
from flows.retry import retry_failed
from tests.operations.conftest import (
    BUCKET,
    DATASTORE,
    import_jobs,
    imported_by_service,
    ingest_params,
    retry_params,
)
from tests.operations.killed import after_an_ingest_killed_in_its_job, flow_run_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _rows(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


def _ingest_with_failed_jobs(
    service: LocalService, tmp_path: Path, failures: int
) -> tuple[IngestResult, pd.DataFrame]:
    source = tmp_path / "source"
    write_ct_series(source / "a", 3, series_spec("retry-a"), 16, 16)
    write_ct_series(source / "b", 3, series_spec("retry-b"), 16, 16)
    write_ct_series(source / "c", 2, series_spec("retry-c"), 16, 16)
    BROKEN_MAKERS["missing_uid"](source / "broken" / "no-series.dcm")
    service.faults.fail_jobs = failures
    # One job at a time, so the injected failures hit whole batches in order.
    result = dicom_ingest(ingest_params(tmp_path, max_concurrent_jobs=1))
    return result, _rows(result.report_files_parquet)


def test_retry_imports_exactly_the_failed_job_files(
    service: LocalService, tmp_path: Path
) -> None:
    first, report = _ingest_with_failed_jobs(service, tmp_path, failures=1)
    failed = sorted(report.loc[report["status"] == "job_failed", "source_uri"])
    assert len(failed) == 3 and first.counts["imported"] == 5

    result = retry_failed(retry_params(tmp_path))

    rows = _rows(result.report_files_parquet)
    assert sorted(rows["source_uri"]) == failed
    assert rows["status"].eq("imported").all()
    assert rows["attempts"].eq(2).all() and rows["change"].eq("unchanged").all()
    assert result.jobs == 1 and result.not_retried_unchanged == 1  # the invalid file
    imported = Counter(imported_by_service(result.datastore_id))
    assert len(imported) == 8 and set(imported.values()) == {1}

    # Nothing retryable is left: a second retry starts no job and reports nothing.
    again = retry_failed(retry_params(tmp_path))
    assert again.jobs == 0 and _rows(again.report_files_parquet).empty


def test_retry_selects_by_job_and_gives_up_past_the_limit(
    service: LocalService, tmp_path: Path
) -> None:
    first, report = _ingest_with_failed_jobs(service, tmp_path, failures=2)
    failed = report[report["status"] == "job_failed"]
    assert failed["job_id"].nunique() == 2
    chosen_job, other_job = sorted(failed["job_id"].unique())
    chosen = sorted(failed.loc[failed["job_id"] == chosen_job, "source_uri"])
    assert first.datastore_id is not None
    jobs_before = len(import_jobs(first.datastore_id))

    by_job = retry_failed(retry_params(tmp_path, job_id=chosen_job))
    rows = _rows(by_job.report_files_parquet)
    assert sorted(rows["source_uri"]) == chosen and rows["status"].eq("imported").all()

    given_up = retry_failed(retry_params(tmp_path, run_id=first.flow_run_id, max_attempts=1))
    rows = _rows(given_up.report_files_parquet)
    others = sorted(failed.loc[failed["job_id"] == other_job, "source_uri"])
    assert sorted(rows["source_uri"]) == others
    assert rows["status"].eq("given_up").all() and given_up.counts["given_up"] == len(others)
    assert len(import_jobs(first.datastore_id)) == jobs_before + 1

    forced = retry_failed(retry_params(tmp_path, max_attempts=1, force=True))
    rows = _rows(forced.report_files_parquet)
    assert set(rows["source_uri"]) == set(others) | {str(tmp_path / "source/broken/no-series.dcm")}
    assert dict(Counter(rows["status"])) == {"imported": len(others), "invalid": 1}


def test_changed_invalid_file_is_retried(service: LocalService, tmp_path: Path) -> None:
    _ingest_with_failed_jobs(service, tmp_path, failures=0)
    broken = tmp_path / "source" / "broken" / "no-series.dcm"
    write_ct_series(tmp_path / "fixed", 1, series_spec("fixed"), 16, 16)[0].replace(broken)

    result = retry_failed(retry_params(tmp_path))

    rows = _rows(result.report_files_parquet)
    assert list(rows["source_uri"]) == [str(broken)]
    assert (rows.loc[0, "status"], rows.loc[0, "change"]) == ("imported", "changed")


def test_timed_out_job_is_resumed_not_imported_again(
    service: LocalService, tmp_path: Path
) -> None:
    write_ct_series(tmp_path / "source" / "slow", 2, series_spec("slow"), 16, 16)
    service.faults.job_duration_seconds = 3.0
    first = dicom_ingest(ingest_params(tmp_path, poll_timeout_seconds=0.3))
    assert first.counts["timed_out"] == 2

    result = retry_failed(retry_params(tmp_path))

    rows = _rows(result.report_files_parquet)
    assert result.resumed_jobs == 1 and result.jobs == 0
    assert rows["status"].eq("imported").all() and len(rows) == 2
    assert first.datastore_id is not None
    assert len(import_jobs(first.datastore_id)) == 1


def test_job_of_a_killed_run_is_read_not_imported_again(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed outright stops beating; retry_failed takes its files once
    it is presumed dead."""
    from tests.operations.conftest import medical_imaging

    files = write_ct_series(tmp_path / "source" / "killed", 2, series_spec("killed"), 16, 16)
    client = medical_imaging()
    datastore_id = client.create_datastore(datastoreName="killed-store")["datastoreId"]
    service.faults.job_duration_seconds = 5.0
    with after_an_ingest_killed_in_its_job(service, tmp_path, datastore_id,
                                           monkeypatch) as job:
        assert {f.status for f in job.files} == {"submitted"}
        result = retry_failed(retry_params(tmp_path, datastore=datastore_id))

    # The retry told Prefect: the killed run is no longer shown running.
    state = flow_run_state(job.run_id)
    assert state.is_crashed()
    assert state.message is not None and "took over the files it held" in state.message

    rows = _rows(result.report_files_parquet)
    assert sorted(rows["source_uri"]) == sorted(map(str, files))
    assert rows["status"].eq("imported").all() and rows["job_id"].eq(job.job_id).all()
    assert result.resumed_jobs == 1 and result.jobs == 0
    assert len(import_jobs(datastore_id)) == 1


def _tamper(
    service: LocalService, image_set_id: str, change: Callable[[dict[str, Any]], None]
) -> None:
    """The data store's document of the set changed behind the import's back."""
    version = service.backend.image_sets.version(image_set_id)
    document = json.loads(gzip.decompress(service.store.get_blob(version["metadataKey"])))
    change(document)
    service.store.put_blob(version["metadataKey"], gzip.compress(json.dumps(document).encode()))


def _drop_frames(document: dict[str, Any]) -> None:
    for series in document["Study"]["Series"].values():
        for instance in series["Instances"].values():
            instance["ImageFrames"] = []


def _other_patient(document: dict[str, Any]) -> None:
    document["Patient"]["DICOM"]["PatientID"] = "PID-TAMPERED-0001"


def _other_description(document: dict[str, Any]) -> None:
    document["Study"]["DICOM"]["StudyDescription"] = "Tampered description"


@pytest.mark.usefixtures("ledger_backend")
def test_retry_verifies_what_it_imports_and_fails_what_a_reimport_cannot_replace(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three series changed in the data store: lost frames, which importing
    the file again replaces; another Patient ID on the primary set, which it
    cannot (the copy lands in a non-primary set); another study description,
    which the set keeps (the file still differs). The retry says so and
    exits 1; it never imports the one beside a non-primary copy again."""
    source = tmp_path / "source"
    changes = {"frames": _drop_frames, "patient": _other_patient,
               "study": _other_description}
    for folder in changes:
        write_ct_series(source / folder, 1, series_spec(f"retry-{folder}"), 16, 16)
    first = dicom_ingest(ingest_params(tmp_path))
    assert first.verification["verified"] == 3 and first.datastore_id is not None
    rows = _rows(first.report_files_parquet).set_index("source_uri")
    of = {Path(str(uri)).parent.name: str(image_set)
          for uri, image_set in rows["image_set_id"].items()}
    for folder, change in changes.items():
        _tamper(service, of[folder], change)
    reports = ["--report-location", str(tmp_path / "reports")]
    assert main(["verify", "--datastore", DATASTORE, "--source", str(source), *reports]) == 1
    capsys.readouterr()

    code = main(["retry", "--datastore", DATASTORE, "--staging-prefix", f"s3://{BUCKET}/staging",
                 "--output-prefix", f"s3://{BUCKET}/output", "--poll-interval-seconds", "0.1",
                 "--validation-workers", "1", *reports])

    out = capsys.readouterr().out
    assert code == 1
    report = next(line.split(": ", 1)[1] for line in out.splitlines()
                  if line.startswith("Per-file report: "))
    rows = _rows(report)
    rows.index = rows["source_uri"].map(lambda uri: Path(uri).parent.name)
    assert (rows.loc["frames", "status"], rows.loc["frames", "verification"]) == (
        "imported", "verified")
    assert rows.loc["frames", "image_set_id"] == of["frames"] and rows.loc["frames", "is_primary"]
    assert set(rows["verification"]) == {"verified", "mismatch"}
    beside, still = rows.loc["patient"], rows.loc["study"]
    assert beside["status"] == "verify_mismatch" and not beside["is_primary"]
    assert "imported again into non-primary image set" in beside["error_message"]
    assert (still["status"], still["image_set_id"]) == ("verify_mismatch", of["study"])
    assert "still not as the source has it after importing it again (StudyDescription " \
        "differs)" in still["error_message"]
    for row in (beside, still):
        assert row["error_message"].endswith("decide with dicom-import reconcile")
    assert "2 files are not in the data store as their source has them" in out

    retry_failed(retry_params(tmp_path))

    imports = Counter(imported_by_service(first.datastore_id))
    assert imports == {"frames/slice_0000.dcm": 2, "patient/slice_0000.dcm": 2,
                       "study/slice_0000.dcm": 3}
