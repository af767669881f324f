"""STOW-RS as a landing path (``--landing stow|auto``), through the flows and
the CLI against the local service: the same statuses as import jobs, and
nothing stored twice whatever happens to a request or its answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import pandas as pd
import pydicom
import pytest
import requests
import sqlalchemy as sa
from requests.adapters import HTTPAdapter

from cli.main import main
from config.settings import get_settings
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series, write_demo_corpus
from flows.ingest import dicom_ingest
from flows.parameters import IngestParameters
from flows.retry import retry_failed
from tasks.ledger import LEDGER_FILE_NAME, RunLedger, ledger_url, runs_table
from tests.operations.conftest import BUCKET, ingest_params, medical_imaging, retry_params
from tests.operations.killed import after_a_killed_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def image_set_versions(datastore_id: str) -> dict[str, int]:
    """Every image set of the data store with its version: a version above 1
    means an instance was stored again (or a series came in two requests)."""
    pages = medical_imaging().get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id)
    return {s["imageSetId"]: int(s["version"]) for page in pages
            for s in page["imageSetsMetadataSummaries"]}


def new_datastore(name: str) -> str:
    client = medical_imaging()
    datastore_id: str = client.create_datastore(datastoreName=name)["datastoreId"]
    return datastore_id


def write_studies(source: Path, studies: int, slices: int, size: int = 16) -> list[Path]:
    """One series per study: each study is one request, each image set made
    by one request (version 1). Instances of their own per folder."""
    files: list[Path] = []
    for number in range(studies):
        files += write_ct_series(source / f"study-{number}", slices,
                                 series_spec(f"stow-{source.name}-{number}"), size, size)
    return files


@dataclass
class Wire:
    """The DICOMweb requests the pipeline sends, and a fault per STOW-RS
    request to answer it with, in order: "503" or "429" (answered without
    the service seeing the request), "lost" (the service stores the body,
    then the connection drops before the answer reaches the client), or a
    FailureReason code such as "0x0110" (the service stores the body, and
    the answer says its first instance failed with that reason)."""

    faults: list[str] = field(default_factory=list)
    stores: int = 0
    searches: int = 0
    # Instances in each STOW-RS request body, in order.
    parts: list[int] = field(default_factory=list)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    seen = Wire()
    real: Callable[..., requests.Response] = HTTPAdapter.send

    def send(adapter: HTTPAdapter, request: requests.PreparedRequest,
             **kwargs: Any) -> requests.Response:
        url = request.url or ""
        if request.method == "GET" and url.split("?")[0].endswith("/instances"):
            seen.searches += 1
        if request.method != "POST" or "/studies/" not in url:
            return real(adapter, request, **kwargs)
        seen.stores += 1
        body = cast(IO[bytes], request.body)  # the request body's file (tasks.stow_body)
        seen.parts.append(body.read().count(b"Content-Type: application/dicom\r\n"))
        body.seek(0)
        fault = seen.faults.pop(0) if seen.faults else None
        if fault in ("503", "429"):
            answer = requests.Response()
            answer.status_code, answer.reason = int(fault), "Injected"
            answer._content = b'{"message": "injected"}'
            answer.request, answer.url = request, url
            return answer
        response = real(adapter, request, **kwargs)
        if fault == "lost":
            raise requests.ConnectionError("connection reset after the request was stored")
        if fault is not None and fault.startswith("0x"):
            answer = response.json()
            first, *rest = answer["00081199"]["Value"]
            answer["00081199"]["Value"] = rest
            answer["00081198"] = {"vr": "SQ", "Value": [{
                "00081150": first["00081150"], "00081155": first["00081155"],
                "00081197": {"vr": "US", "Value": [int(fault, 16)]}}]}
            response._content = json.dumps(answer).encode()
        return response

    monkeypatch.setattr(HTTPAdapter, "send", send)
    yield seen


def report_of(result: Any) -> pd.DataFrame:
    return pd.read_parquet(result.report_files_parquet)


def cli_report(folder: Path) -> pd.DataFrame:
    parts = folder.rglob("files/part-*.parquet")
    return pd.read_parquet(max(parts, key=lambda p: p.stat().st_mtime).parent)


def test_the_demo_sample_lands_by_stow_with_the_statuses_jobs_give(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No staging or output prefix: STOW-RS reads the files where they are.
    Requests of at most 1 MB make several per study. What landed verifies,
    and the report is written again from the ledger with how each landed."""
    source = tmp_path / "incoming"
    expected = write_demo_corpus(source, slices_per_series=3)
    monkeypatch.setenv("DICOM_IMPORT_STOW_REQUEST_MB", "1")
    get_settings.cache_clear()
    common = ["--validation-workers", "1", "--poll-interval-seconds", "0.2"]
    by_job = main(["ingest", str(source), "--datastore", new_datastore("demo-jobs"),
                   "--landing", "job",
                   "--staging-prefix", f"s3://{BUCKET}/staging", "--output-prefix",
                   f"s3://{BUCKET}/output", "--report-location", str(tmp_path / "jobs"),
                   *common])
    by_stow = main(["ingest", str(source), "--datastore", new_datastore("demo-stow"),
                    "--landing", "stow",
                    "--report-location", str(tmp_path / "stow"), *common])
    out = capsys.readouterr().out
    assert (by_job, by_stow) == (0, 0), out

    jobs, stow = cli_report(tmp_path / "jobs"), cli_report(tmp_path / "stow")
    statuses = dict(zip(stow["source_uri"], stow["status"], strict=True))
    assert statuses == dict(zip(jobs["source_uri"], jobs["status"], strict=True)) == expected
    sent = stow[stow["batch_id"].notna()]
    assert sent["landing"].eq("stow").all() and sent["staged_key"].isna().all()
    assert jobs.loc[jobs["batch_id"].notna(), "landing"].eq("job").all()
    imported = stow[stow["status"].str.startswith("imported")]
    assert imported["job_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert imported["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert imported["verification"].eq("verified").all()
    warned = stow["status"] == "imported_with_warnings"
    assert (stow.loc[warned, "warning_codes"].tolist()
            == jobs.set_index("source_uri").loc[stow.loc[warned, "source_uri"],
                                                "warning_codes"].tolist())

    requests_table = pd.read_parquet(next((tmp_path / "stow").rglob("jobs.parquet")))
    assert requests_table["landing"].eq("stow").all()
    assert (requests_table["bytes"] <= 1_000_000).all()
    assert f"0 import jobs, {requests_table['job_id'].nunique()} STOW-RS requests" in out
    ct_study = stow.loc[stow["source_uri"].str.contains("/ct-study/"), "job_id"]
    assert ct_study.nunique() > 1  # one study, more than 1 MB: more than one request

    # The run again from the ledger alone, and verified again by request.
    [run_id] = ledger_runs(tmp_path / "stow")
    assert main(["report", "--run", run_id, "--report-location", str(tmp_path / "stow"),
                 "--output", str(tmp_path / "rebuilt")]) == 0
    rebuilt = pd.read_parquet(tmp_path / "rebuilt" / "files")
    assert rebuilt["landing"].tolist() == stow["landing"].tolist()
    assert rebuilt["job_id"].tolist() == stow["job_id"].tolist()
    request = imported["job_id"].iloc[0]
    assert main(["verify", "--job", request, "--report-location", str(tmp_path / "stow")]) == 0
    assert f"{(imported['job_id'] == request).sum()} imported files checked" in \
        capsys.readouterr().out


def ledger_runs(report_location: Path) -> list[str]:
    """The runs the ledger beside these reports recorded."""
    engine = sa.create_engine(f"sqlite:///{report_location / LEDGER_FILE_NAME}")
    with engine.connect() as conn:
        return [row.run_id for row in conn.execute(sa.select(runs_table.c.run_id))]


@pytest.mark.usefixtures("ledger_backend")
def test_a_lost_answer_is_looked_up_not_sent_again(
    service: LocalService, tmp_path: Path, wire: Wire,
) -> None:
    """The service stored the first request, and its answer never came: what
    landed is asked before anything is sent again."""
    files = write_studies(tmp_path / "source", 2, 3)
    wire.faults = ["lost"]
    result = dicom_ingest(ingest_params(tmp_path, landing="stow"))

    report = report_of(result)
    assert report["status"].eq("imported").all() and len(report) == len(files)
    assert report["verification"].eq("verified").all()
    assert result.datastore_id is not None
    assert set(image_set_versions(result.datastore_id).values()) == {1}
    assert wire.stores == 2 and wire.searches >= 1
    assert report["job_id"].nunique() == 2


def test_a_changed_file_whose_answer_is_lost_is_sent_again(
    service: LocalService, tmp_path: Path, wire: Wire,
) -> None:
    """Its instance in the data store is the old bytes' (same UIDs): finding
    it says nothing of the new bytes, which are sent again rather than
    reported imported unseen."""
    [first, *_] = write_studies(tmp_path / "source", 1, 2)
    dicom_ingest(ingest_params(tmp_path, landing="stow"))
    changed = pydicom.dcmread(first)
    changed.PixelData = bytes(len(changed.PixelData))
    changed.save_as(first)
    wire.faults = ["lost"]
    rerun = dicom_ingest(ingest_params(tmp_path, landing="stow"))

    rows = report_of(rerun)
    assert rows["source_uri"].tolist() == [str(first)] and rows["change"].eq("changed").all()
    assert rows["status"].eq("imported").all()
    assert wire.stores == 3  # the first run's request, the lost send, the send again
    assert rerun.datastore_id is not None
    assert list(image_set_versions(rerun.datastore_id).values()) == [3]


@pytest.mark.parametrize(("reason", "parts", "status"), [
    ("0x0110", [3, 1], "imported"),  # a processing failure: the instance alone again
    ("0xA900", [3], "import_failed"),  # refused for what it is: not sent again
])
def test_only_the_failed_instance_is_sent_again_and_only_if_it_may_pass(
    service: LocalService, tmp_path: Path, wire: Wire, reason: str, parts: list[int],
    status: str,
) -> None:
    files = write_studies(tmp_path / "source", 1, 3)
    wire.faults = [reason]
    result = dicom_ingest(ingest_params(tmp_path, landing="stow"))

    report = report_of(result).set_index("source_uri")
    assert wire.parts == parts
    failed = report["status"] != "imported"
    assert report.loc[failed, "status"].tolist() == ([status] if status != "imported" else [])
    if status == "import_failed":
        assert report.loc[failed, "error_type"].tolist() == ["ValidationException"]
        assert "0xA900" in report.loc[failed, "error_message"].iloc[0]
    assert len(report) == len(files)


def test_503_and_429_are_sent_again(service: LocalService, tmp_path: Path, wire: Wire) -> None:
    files = write_studies(tmp_path / "source", 1, 3)
    wire.faults = ["503", "429"]
    result = dicom_ingest(ingest_params(tmp_path, landing="stow"))

    assert report_of(result)["status"].eq("imported").all()
    assert result.counts["imported"] == len(files)
    assert result.datastore_id is not None
    assert set(image_set_versions(result.datastore_id).values()) == {1}
    assert wire.stores == 3


def test_auto_sends_small_deliveries_by_stow_and_large_ones_by_jobs(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DICOM_IMPORT_STOW_AUTO_MAX_FILES", "3")
    get_settings.cache_clear()
    small = write_studies(tmp_path / "small", 1, 3)
    large = write_studies(tmp_path / "large", 2, 2)
    landed = {}
    for name in ("small", "large"):
        result = dicom_ingest(ingest_params(tmp_path, source=str(tmp_path / name),
                                            landing="auto"))
        report = report_of(result)
        assert report["status"].eq("imported").all()
        landed[name] = set(report["landing"])
    assert landed == {"small": {"stow"}, "large": {"job"}}
    assert len(small) == 3 and len(large) == 4


def kill_during_requests(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datastore_id: str,
) -> AbstractContextManager[None]:
    """An ingestion of six studies (a request each, one at a time) killed
    once the first request stored its study: the others sent or not."""
    write_studies(tmp_path / "source", 6, 8, size=256)
    monkeypatch.setenv("DICOM_IMPORT_STOW_CONCURRENCY", "1")
    return after_a_killed_run("flows.ingest:dicom_ingest", stow_params(tmp_path, datastore_id),
                              lambda: bool(image_set_versions(datastore_id)),
                              "its first request stored", service, tmp_path, monkeypatch)


def stow_params(tmp_path: Path, datastore_id: str) -> IngestParameters:
    return ingest_params(tmp_path, datastore=datastore_id, landing="stow", max_files_per_job=50)


@pytest.mark.usefixtures("ledger_backend")
def test_a_rerun_after_a_kill_during_requests_stores_nothing_twice(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rerun looks up what the requests the ledger has without an answer
    stored, sends only the rest, and reports every file imported."""
    datastore_id = new_datastore("stow-killed")
    with kill_during_requests(service, tmp_path, monkeypatch, datastore_id):
        observer = RunLedger(ledger_url(get_settings().ledger_url,
                                        str(tmp_path / "reports")), "observer", datastore_id)
        assert observer.unfinished_jobs()
        rerun = dicom_ingest(stow_params(tmp_path, datastore_id))

    versions = image_set_versions(datastore_id)
    assert len(versions) == 6 and set(versions.values()) == {1}
    rows = report_of(rerun)
    assert len(rows) == 48 and rows["status"].eq("imported").all()
    assert rows["verification"].eq("verified").all()
    assert rerun.jobs_from_earlier_runs


def test_a_retry_after_a_kill_during_requests_stores_nothing_twice(
    service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retry_failed takes a request without an answer as a job that FAILED:
    its files are looked up, and only those not stored are sent again; an
    ingestion then sends the files the killed run never sent."""
    datastore_id = new_datastore("stow-retried")
    with kill_during_requests(service, tmp_path, monkeypatch, datastore_id):
        observer = RunLedger(ledger_url(None, str(tmp_path / "reports")), "observer",
                             datastore_id)
        unanswered = observer.unfinished_jobs()
        retried = retry_failed(retry_params(tmp_path, datastore=datastore_id, landing="stow"))
        rerun = dicom_ingest(stow_params(tmp_path, datastore_id))

    versions = image_set_versions(datastore_id)
    assert len(versions) == 6 and set(versions.values()) == {1}
    assert unanswered and retried.resumed_jobs == len(unanswered)
    assert retried.counts["imported"] == sum(len(job.files) for job in unanswered)
    assert len(report_of(rerun)) + retried.counts["imported"] == 48
    assert report_of(rerun)["status"].eq("imported").all()
