"""``curl --aws-sigv4 "aws:amz:us-east-1:medical-imaging"``, as AWS's own
DICOMweb examples call HealthImaging, against the local service with
``--credentials`` (every signature checked): one request of each kind,
STOW-RS, QIDO-RS and WADO-RS. curl signs the body's hash without sending it
in a header, which the service must then hash as the body streams in."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pydicom
import pytest
from botocore.config import Config

from emulator.config import Credentials, ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import ct_slice, series_spec, write
from tests.emulator.conftest import wait_datastore_active
from tests.local_service import empty_s3

KEY = ("curl-key", "curl-secret")
SIGV4 = "aws:amz:us-east-1:medical-imaging"
CURL = shutil.which("curl")

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")


@pytest.fixture
def signed_service() -> Iterator[tuple[LocalService, str]]:
    """The local service checking signatures against KEY, with one ACTIVE data store."""
    empty_s3()
    config = ServiceConfig(datastore_transition_seconds=0.05, stop_grace_seconds=0,
                           credentials=Credentials(*KEY))
    with LocalService(config=config) as service:
        client = boto3.client("medical-imaging", endpoint_url=service.endpoint,
                              region_name="us-east-1", aws_access_key_id=KEY[0],
                              aws_secret_access_key=KEY[1],
                              config=Config(inject_host_prefix=False))
        datastore_id = client.create_datastore(datastoreName="curl")["datastoreId"]
        wait_datastore_active(client, datastore_id)
        yield service, f"{service.endpoint}/datastore/{datastore_id}"


def curl(url: str, *options: str, key: tuple[str, str] = KEY) -> tuple[int, bytes]:
    """(HTTP status, body) of one signed curl request."""
    assert CURL is not None
    done = subprocess.run(
        [CURL, "--silent", "--show-error", "--aws-sigv4", SIGV4, "--user", ":".join(key),
         "--write-out", "\n%{http_code}", *options, url],
        capture_output=True, timeout=60, check=True)
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status), body


def test_curl_stores_searches_and_retrieves(
    signed_service: tuple[LocalService, str], tmp_path: Path
) -> None:
    _, base = signed_service
    ds = ct_slice(series_spec("curl"), 0, rows=16, columns=16)
    path = write(ds, tmp_path / "slice.dcm")
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID

    status, body = curl(f"{base}/studies", "--header", "Content-Type: application/dicom",
                        "--data-binary", f"@{path}")
    assert status == 200, body
    stored = json.loads(body)["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in stored] == [sop]

    status, body = curl(f"{base}/studies/{study}/instances?SOPInstanceUID={sop}")
    assert status == 200, body
    assert [item["00080018"]["Value"][0] for item in json.loads(body)] == [sop]

    status, body = curl(f"{base}/studies/{study}/series/{series}/instances/{sop}",
                        "--header", "Accept: application/dicom; transfer-syntax=*")
    assert status == 200, body[:300]
    assert pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == sop


def test_curl_with_a_wrong_secret_is_refused(signed_service: tuple[LocalService, str]) -> None:
    _, base = signed_service
    status, _ = curl(f"{base}/studies", key=(KEY[0], "not-the-secret"))
    assert status == 403
