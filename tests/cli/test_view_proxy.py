"""The viewer's DICOMweb proxy against the local service in ``--credentials``
mode: what it forwards is signed so the service verifies it, and only
DICOMweb reads of the one data store chosen are forwarded."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
from botocore.config import Config

from cli.viewer.proxy import Upstream
from cli.viewer.server import ViewerServer
from emulator.config import Credentials, ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import ct_slice, series_spec, uid
from tests.cli.viewer import let_in, nowhere, stand_in_ohif, viewer
from tests.emulator.conftest import BUCKET, wait_datastore_active
from tests.emulator.test_import import dicom_bytes, run_import
from tests.local_service import empty_s3

KEY = ("viewer-key", "viewer-secret")
HTJ2K = "multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202"


@dataclass(frozen=True)
class Landed:
    service: LocalService
    files: Path
    datastore_id: str
    j2k_datastore_id: str
    slices: dict[str, pydicom.Dataset]
    non_primary_set: str

    def upstream(self, datastore_id: str | None = None) -> Upstream:
        return Upstream(self.service.endpoint, datastore_id or self.datastore_id, "us-east-1")

    def instance(self, name: str) -> str:
        ds = self.slices[name]
        return (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")


def _slices() -> dict[str, pydicom.Dataset]:
    spec = series_spec("viewer-a")
    slices = {f"a{i}": ct_slice(spec, i, rows=16, columns=16) for i in range(2)}
    for ds in slices.values():
        ds.PatientName = "Holmes^Sherlock"
    conflict = ct_slice(spec, 2, rows=16, columns=16)
    conflict.PatientID = "SOMEONE-ELSE"
    slices["conflict"] = conflict
    other = dataclasses.replace(series_spec("viewer-j2k"), series_instance_uid=uid("j2k-series"))
    slices["j2k"] = ct_slice(other, 0, rows=16, columns=16)
    return slices


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landed]:
    """A local service that verifies signatures, holding a primary and a
    non-primary image set in one data store and a slice in another
    (JPEG 2000 lossless) one."""
    empty_s3()
    config = ServiceConfig(credentials=Credentials(*KEY), datastore_transition_seconds=0.05,
                           stop_grace_seconds=0)
    with LocalService(config=config) as service:
        keys = {"aws_access_key_id": KEY[0], "aws_secret_access_key": KEY[1],
                "region_name": "us-east-1", "endpoint_url": service.endpoint}
        mi = boto3.client("medical-imaging", config=Config(inject_host_prefix=False), **keys)
        s3 = boto3.client("s3", **keys)
        s3.create_bucket(Bucket=BUCKET)
        main = mi.create_datastore(datastoreName="viewed")["datastoreId"]
        j2k = mi.create_datastore(datastoreName="viewed-j2k",
                                  losslessStorageFormat="JPEG_2000_LOSSLESS")["datastoreId"]
        wait_datastore_active(mi, main)
        wait_datastore_active(mi, j2k)
        slices = _slices()
        run = run_import(mi, s3, main, {f"{n}.dcm": dicom_bytes(slices[n])
                                        for n in ("a0", "a1", "conflict")}, "viewer-1/")
        assert not run.failure, run.failure
        conflict = run.succeeded("viewer-1/conflict.dcm")
        assert conflict["isPrimary"] is False
        other = run_import(mi, s3, j2k, {"j2k.dcm": dicom_bytes(slices["j2k"])}, "viewer-2/")
        assert not other.failure, other.failure
        yield Landed(service, stand_in_ohif(tmp_path_factory.mktemp("ohif")), main, j2k,
                     slices, conflict["imageSetId"])


@pytest.fixture(scope="module")
def server(landed: Landed) -> Iterator[ViewerServer]:
    with viewer(landed.files, landed.upstream(), KEY) as running:
        yield running


def _as_written(server: ViewerServer, target: str) -> tuple[int, bytes]:
    """GET ``target`` byte for byte (httpx would percent-encode it), with the cookie."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("GET", target, headers={
            "Cookie": f"dicom-import-viewer-{server.port}={server.token}"})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def _json(answer: Any) -> Any:
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    return json.loads(answer.content)


def test_reads_are_signed_so_the_service_verifies_them(landed: Landed,
                                                       server: ViewerServer) -> None:
    a0 = landed.slices["a0"]
    with let_in(server) as browser:
        # As a browser writes it: ^, * and , not percent-encoded.
        status, body = _as_written(server, "/dicomweb/studies?PatientName=Holmes^*&StudyDate="
                                   "20000101-20301231&includefield=00081030,00080060&limit=101")
        assert status == 200, body
        assert [s["0020000D"]["Value"] for s in json.loads(body)] == [[a0.StudyInstanceUID]]
        series = _json(browser.get(f"/dicomweb/studies/{a0.StudyInstanceUID}/series"))
        assert [s["0020000E"]["Value"] for s in series] == [[a0.SeriesInstanceUID]]
        metadata = _json(browser.get(
            f"/dicomweb/studies/{a0.StudyInstanceUID}/series/{a0.SeriesInstanceUID}/metadata"))
        assert {m["00080018"]["Value"][0] for m in metadata} == {
            landed.slices[n].SOPInstanceUID for n in ("a0", "a1")}
        frames = browser.get(landed.instance("a0") + "/frames/1", headers={"Accept": HTJ2K})
        assert frames.status_code == 200
        assert "transfer-syntax=1.2.840.10008.1.2.4.202" in frames.headers["Content-Type"]
        instance = browser.get(landed.instance("a0"), headers={"Accept": "application/dicom"})
        assert instance.status_code == 200
        assert instance.headers["Content-Type"].startswith("application/dicom")
        assert instance.headers["Cache-Control"] == "no-store"


def test_a_wrong_secret_is_refused_by_the_service(landed: Landed) -> None:
    """The other side of the test above: the service does check signatures."""
    with viewer(landed.files, landed.upstream(), (KEY[0], "not-the-secret")) as wrong, \
            let_in(wrong) as browser:
        assert browser.get("/dicomweb/studies").status_code == 403


@pytest.mark.parametrize("path", [
    "/dicomweb",
    "/dicomweb/",
    "/dicomweb/datastore",
    "/dicomweb/studies/",
    "/dicomweb/studies/1.2.3/metadata",
    "/dicomweb/studies/1.2.3/series/1.2.4/rendered",
    "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/thumbnail",
    "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/0",
    "/dicomweb/studies/not-a-uid/series",
    "/dicomweb/studies/" + "1." * 40 + "1/series",
    "/dicomweb/imagesets/not-an-id/studies",
    "/dicomweb/imagesets//studies",
    "/dicomweb/imageSet/0123/getImageSetMetadata",
    "/dicomweb/studies/1.2.3/../../../datastore/other/studies",
    "/dicomweb/studies/1.2.3/%2E%2E/%2E%2E/datastore",
    "/dicomweb/studies?imageSetId=../../other",
])
def test_paths_that_are_no_dicomweb_read_are_refused(tmp_path: Path, path: str) -> None:
    """Refused before anything is sent: the upstream is a closed port, where
    a forwarded request would be a 502."""
    with viewer(stand_in_ohif(tmp_path), nowhere()) as refusing, let_in(refusing) as browser:
        status, body = _as_written(refusing, path)
        assert status == 403, (path, status, body)
        assert browser.get("/dicomweb/studies/1.2.3/series").status_code == 502


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_only_get_is_forwarded(tmp_path: Path, method: str) -> None:
    with viewer(stand_in_ohif(tmp_path), nowhere()) as refusing, let_in(refusing) as browser:
        answer = browser.request(method, "/dicomweb/studies", content=b"{}")
        assert answer.status_code == 405
        assert answer.headers["Allow"] == "GET"


def test_another_data_store_is_out_of_reach(landed: Landed, server: ViewerServer) -> None:
    """The viewer of one data store: another's study is not found through it,
    whatever the query says."""
    j2k = landed.slices["j2k"]
    with let_in(server) as browser:
        assert browser.get("/dicomweb/studies", params={
            "StudyInstanceUID": j2k.StudyInstanceUID}).status_code == 204
        assert browser.get(landed.instance("j2k") + "/metadata").status_code == 404


def test_a_non_primary_image_set_opens_by_its_id(landed: Landed, server: ViewerServer) -> None:
    conflict = landed.instance("conflict")
    with let_in(server) as browser:
        assert browser.get(conflict + "/metadata").status_code == 404
        metadata = _json(browser.get(
            f"/dicomweb/imagesets/{landed.non_primary_set}" + conflict.removeprefix(
                "/dicomweb") + "/metadata"))
        assert metadata["00100020"]["Value"] == ["SOMEONE-ELSE"]


def test_frames_not_stored_as_htj2k_come_uncompressed(landed: Landed) -> None:
    """HTJ2K is asked for; a data store keeping JPEG 2000 answers 406, and the
    proxy asks again for the frame uncompressed."""
    with viewer(landed.files, landed.upstream(landed.j2k_datastore_id), KEY) as j2k, \
            let_in(j2k) as browser:
        frames = browser.get(landed.instance("j2k") + "/frames/1", headers={"Accept": HTJ2K})
    assert frames.status_code == 200, frames.text[:300]
    assert b"transfer-syntax=1.2.840.10008.1.2.1" in frames.content[:300]
    assert len(frames.content) > 16 * 16 * 2


def test_its_log_names_no_patient_and_no_token(
    landed: Landed, server: ViewerServer, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="dicom_import.viewer"), \
            let_in(server) as browser:
        browser.get("/dicomweb/studies", params={"PatientName": "Holmes^Sherlock"})
        browser.get("/dicomweb/studies", params={"PatientID": "SOMEONE-ELSE"})
        browser.get("/dicomweb/nothing", params={"PatientName": "Holmes"})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SearchDICOMStudies /dicomweb/studies: 200" in logged
    assert "Refused GET /dicomweb/nothing" in logged
    for secret in ("Holmes", "SOMEONE-ELSE", server.token):
        assert secret not in logged


def test_answers_that_say_try_again_are_tried_again(tmp_path: Path) -> None:
    """A search answered 503 then 429 is asked a third time (signed again), and
    the browser gets that answer; one that keeps failing gets the failure."""
    answers = {"/datastore/store/studies": [503, 429, 200],
               "/datastore/store/series": [500] * 10}
    asked: list[tuple[str, str]] = []

    class Flaky(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append((self.path, self.headers.get("Authorization", "")))
            status = answers[self.path].pop(0)
            body = b"[]" if status == 200 else b"{}"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        target = Upstream(f"http://127.0.0.1:{upstream.server_port}", "store", "us-east-1")
        with viewer(stand_in_ohif(tmp_path), target) as retrying, let_in(retrying) as browser:
            assert browser.get("/dicomweb/studies").status_code == 200
            assert browser.get("/dicomweb/series").status_code == 500
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert [path for path, _ in asked] == ["/datastore/store/studies"] * 3 + [
        "/datastore/store/series"] * 4
    assert all(auth.startswith("AWS4-HMAC-SHA256 Credential=") for _, auth in asked)
