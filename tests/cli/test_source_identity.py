"""A source has one identity however the operator spells it: a relative path,
a trailing slash or a symlink never starts a second import job for unchanged
files."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BUCKET = "spelling"


def test_every_spelling_of_a_folder_is_one_source(
    local_aws: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    write_ct_series(tmp_path / "data" / "in1", 3, series_spec("spelled"), rows=16, columns=16)
    (tmp_path / "link").symlink_to(tmp_path / "data" / "in1")
    monkeypatch.chdir(tmp_path / "data")
    spellings = [str(tmp_path / "data" / "in1"), "in1", "./in1/", str(tmp_path / "link") + "/"]
    for source in spellings:
        code = main([
            "ingest", source, "--datastore", "spelling-store", "--create-datastore",
            "--staging-prefix", f"s3://{BUCKET}/staging/",
            "--output-prefix", f"s3://{BUCKET}/output",
            "--report-location", str(tmp_path / "reports"),
            "--poll-interval-seconds", "0.2", "--validation-workers", "1",
            # Each run stages again: a spelling taken for another source
            # would stage to another folder.
            "--reimport",
        ])
        assert code == 0, capsys.readouterr().err

    mi = boto3.client("medical-imaging", config=Config(inject_host_prefix=False))
    (store,) = [d["datastoreId"] for d in mi.list_datastores()["datastoreSummaries"]
                if d["datastoreName"] == "spelling-store"]
    jobs = mi.list_dicom_import_jobs(datastoreId=store)["jobSummaries"]
    assert len(jobs) == 1
    staged = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="staging/")
    assert len({item["Key"].split("/")[1] for item in staged["Contents"]}) == 1


def test_an_s3_prefix_with_or_without_its_slash_is_one_source(
    local_aws: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for path in write_ct_series(tmp_path / "in", 2, series_spec("s3-spelled"), rows=16,
                                columns=16):
        s3.upload_file(str(path), BUCKET, f"landing/{path.name}")
    for source in (f"s3://{BUCKET}/landing", f"s3://{BUCKET}/landing/"):
        code = main([
            "ingest", source, "--datastore", "s3-spelling-store", "--create-datastore",
            "--staging-prefix", f"s3://{BUCKET}/staging",
            "--output-prefix", f"s3://{BUCKET}/output",
            "--report-location", str(tmp_path / "reports"),
            "--poll-interval-seconds", "0.2", "--validation-workers", "1", "--reimport",
        ])
        assert code == 0, capsys.readouterr().err
    mi = boto3.client("medical-imaging", config=Config(inject_host_prefix=False))
    (store,) = [d["datastoreId"] for d in mi.list_datastores()["datastoreSummaries"]
                if d["datastoreName"] == "s3-spelling-store"]
    assert len(mi.list_dicom_import_jobs(datastoreId=store)["jobSummaries"]) == 1
