"""The AWS CLI, unmodified, against the local service: the commands the
README shows. The CLI lives in its own venv (``make install`` builds it)
because it pins its own botocore."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from emulator.samples import PYDICOM_TEST_FILES
from emulator.server import LocalService
from tests.emulator.conftest import ROLE, wait_for

AWS = Path(__file__).resolve().parents[2] / ".awscli" / "bin" / "aws"


@pytest.fixture
def aws(service: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if not AWS.exists():
        pytest.fail(f"{AWS} is missing: run `make install` to build the AWS CLI venv")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **service.env()}

    def run(*args: str) -> dict:
        done = subprocess.run(
            [str(AWS), *args, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        if args[0] == "s3" or not done.stdout.strip():
            return {}
        return json.loads(done.stdout)

    return run


def test_readme_commands(aws, tmp_path: Path) -> None:
    aws("s3", "mb", "s3://dicom-in")
    aws("s3", "cp", str(PYDICOM_TEST_FILES / "CT_small.dcm"), "s3://dicom-in/study1/")
    ds = aws("medical-imaging", "create-datastore", "--datastore-name", "demo")["datastoreId"]
    wait_for(
        lambda: (
            aws("medical-imaging", "get-datastore", "--datastore-id", ds)["datastoreProperties"][
                "datastoreStatus"
            ]
            == "ACTIVE"
        )
    )
    job = aws(
        "medical-imaging",
        "start-dicom-import-job",
        "--datastore-id",
        ds,
        "--data-access-role-arn",
        ROLE,
        "--input-s3-uri",
        "s3://dicom-in/study1/",
        "--output-s3-uri",
        "s3://dicom-in/out/",
    )["jobId"]

    def finished() -> dict | None:
        props = aws(
            "medical-imaging", "get-dicom-import-job", "--datastore-id", ds, "--job-id", job
        )["jobProperties"]
        return props if props["jobStatus"] in ("COMPLETED", "FAILED") else None

    props = wait_for(finished, timeout=60, interval=0.2)
    assert props["jobStatus"] == "COMPLETED"
    assert props["outputS3Uri"].endswith(f"{ds}-DicomImport-{job}/")

    found = aws("medical-imaging", "search-image-sets", "--datastore-id", ds)
    image_set = found["imageSetsMetadataSummaries"][0]["imageSetId"]
    got = aws("medical-imaging", "get-image-set", "--datastore-id", ds, "--image-set-id", image_set)
    assert got["imageSetState"] == "ACTIVE"
    assert got["imageSetArn"].endswith(f"datastore/{ds}/imageset/{image_set}")

    target = tmp_path / "meta.json.gz"
    aws(
        "medical-imaging",
        "get-image-set-metadata",
        "--datastore-id",
        ds,
        "--image-set-id",
        image_set,
        str(target),
    )
    doc = json.loads(gzip.decompress(target.read_bytes()))
    assert doc["ImageSetID"] == image_set
    assert doc["Patient"]["DICOM"]["PatientID"]
