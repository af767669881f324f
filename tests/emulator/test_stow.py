"""STOW-RS against the local service, as a DICOMweb client sends it: signed
HTTP requests, single-part and multipart bodies, and what lands read back
through boto3 exactly as after an import job."""

from __future__ import annotations

import http.client
import io
import json
import select
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psutil
import pydicom
import pytest
import requests
from botocore.config import Config
from pydicom.filewriter import dcmwrite

from emulator.config import Credentials, ServiceConfig
from emulator.edge import stow
from emulator.edge.server import LocalService
from emulator.samples import (
    ct_slice,
    series_spec,
    write_not_dicom,
    write_pixel_mismatch,
    write_with,
)
from emulator.state.imagesets import ImageSetRepository
from emulator.state.models import STOW_KIND
from emulator.state.store import Store
from import_rules.codes import FailureReason, WarningCode
from tests.emulator.conftest import make_clients, wait_datastore_active
from tests.emulator.signed_http import (
    dicom_json_value,
    multipart,
    signed_headers,
    signed_post,
)
from tests.emulator.test_import import metadata, run_import
from tests.local_service import empty_s3, endpoint_printed, local_service_process

DICOM = "application/dicom"
MULTIPART = 'multipart/related; type="application/dicom"; boundary=stow-boundary-7d3f'
REFERENCED, FAILED = "00081199", "00081198"


def instance_bytes(seed: str, index: int = 0, **changes: Any) -> bytes:
    ds = ct_slice(series_spec(seed), index, rows=16, columns=16)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def uids(data: bytes) -> tuple[str, str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID


def studies_url(svc: LocalService, datastore_id: str, study: str | None = None) -> str:
    url = f"{svc.endpoint}/datastore/{datastore_id}/studies"
    return f"{url}/{study}" if study else url


def items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(answer.get(tag, {}).get("Value", []))


def failure_reasons(answer: dict[str, Any]) -> dict[str | None, int]:
    return {dicom_json_value(i, "00081155"): dicom_json_value(i, "00081197")
            for i in items(answer, FAILED)}


def primary_image_sets(mi: Any, datastore_id: str) -> list[dict[str, Any]]:
    found = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
    return [s for s in found if s["isPrimary"]]


# -- bodies and answers ------------------------------------------------------------


def test_one_instance_as_application_dicom_is_stored_and_referenced(
    service: LocalService, mi: Any, datastore_id: str
) -> None:
    data = instance_bytes("single")
    sop_class, sop, study, series = uids(data)

    response = signed_post(studies_url(service, datastore_id), data, DICOM)

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    answer = response.json()
    base = f"{service.endpoint}/datastore/{datastore_id}/studies/{study}"
    assert dicom_json_value(answer, "00081190") == base
    assert FAILED not in answer
    (item,) = items(answer, REFERENCED)
    assert item == {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [sop]},
        "00081190": {"vr": "UR", "Value": [f"{base}/series/{series}/instances/{sop}"]},
    }
    (image_set,) = primary_image_sets(mi, datastore_id)
    assert image_set["DICOMTags"]["DICOMSeriesInstanceUID"] == series
    doc = metadata(mi, datastore_id, image_set["imageSetId"])
    assert list(doc["Study"]["Series"][series]["Instances"]) == [sop]


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/related; type="application/dicom"; boundary="stow-boundary-7d3f"',
        "multipart/related; type=application/dicom; boundary=stow-boundary-7d3f",
        "Multipart/Related; boundary=stow-boundary-7d3f",
    ],
    ids=["quoted", "unquoted", "no-type"],
)
def test_multipart_parameters_quoted_or_not(
    service: LocalService, mi: Any, datastore_id: str, content_type: str
) -> None:
    parts = [instance_bytes("multi", i) for i in range(3)]

    response = signed_post(studies_url(service, datastore_id), multipart(parts), content_type)

    assert response.status_code == 200, response.text
    stored = [dicom_json_value(i, "00081155") for i in items(response.json(), REFERENCED)]
    assert stored == [uids(p)[1] for p in parts]
    (image_set,) = primary_image_sets(mi, datastore_id)
    assert image_set["DICOMTags"]["DICOMNumberOfStudyRelatedInstances"] == 3


def test_chunked_body_with_parts_without_headers(
    service: LocalService, mi: Any, datastore_id: str
) -> None:
    """Transfer-Encoding: chunked, and parts that take the root type."""
    parts = [instance_bytes("chunked", i) for i in range(2)]

    response = signed_post(studies_url(service, datastore_id),
                           multipart(parts, part_type=None), MULTIPART, chunked=True)

    assert response.status_code == 200, response.text
    assert len(items(response.json(), REFERENCED)) == 2
    (image_set,) = primary_image_sets(mi, datastore_id)
    assert image_set["DICOMTags"]["DICOMNumberOfStudyRelatedInstances"] == 2


def test_multipart_read_a_few_bytes_at_a_time(
    service: LocalService, mi: Any, datastore_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delimiters split across reads, a preamble and an epilogue, padding
    after a delimiter: the parts are still told apart byte for byte."""
    monkeypatch.setattr(stow, "_READ_BYTES", 7)
    parts = [instance_bytes("few-bytes", i) for i in range(3)]
    body = (b"preamble to ignore\r\n" + multipart(parts).replace(
        b"--stow-boundary-7d3f\r\n", b"--stow-boundary-7d3f \t\r\n") + b"epilogue")

    response = signed_post(studies_url(service, datastore_id), body, MULTIPART)

    assert response.status_code == 200, response.text
    (image_set,) = primary_image_sets(mi, datastore_id)
    doc = metadata(mi, datastore_id, image_set["imageSetId"])
    (series,) = doc["Study"]["Series"].values()
    assert sorted(series["Instances"]) == sorted(uids(p)[1] for p in parts)


def test_instance_of_another_study_than_the_path_fails_alone(
    service: LocalService, mi: Any, datastore_id: str
) -> None:
    ours = instance_bytes("path-study")
    other = instance_bytes("other-study")
    study = uids(ours)[2]

    response = signed_post(studies_url(service, datastore_id, study),
                           multipart([ours, other]), MULTIPART)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert [dicom_json_value(i, "00081155") for i in items(answer, REFERENCED)] == [uids(ours)[1]]
    assert failure_reasons(answer) == {
        uids(other)[1]: FailureReason.STUDY_INSTANCE_UID_MISMATCH}
    (failed,) = items(answer, FAILED)
    assert dicom_json_value(failed, "00081150") == uids(other)[0]
    (image_set,) = primary_image_sets(mi, datastore_id)
    assert image_set["DICOMTags"]["DICOMStudyInstanceUID"] == study


def test_files_the_import_rules_refuse_fail_with_their_reason(
    service: LocalService, datastore_id: str, tmp_path: Path
) -> None:
    good = instance_bytes("rules-good")
    mismatch = write_pixel_mismatch(tmp_path / "mismatch.dcm").read_bytes()
    not_dicom = write_not_dicom(tmp_path / "text.dcm").read_bytes()

    response = signed_post(studies_url(service, datastore_id),
                           multipart([good, mismatch, not_dicom]), MULTIPART)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert [dicom_json_value(i, "00081155") for i in items(answer, REFERENCED)] == [uids(good)[1]]
    mismatch_sop = pydicom.dcmread(io.BytesIO(mismatch), stop_before_pixels=True).SOPInstanceUID
    assert failure_reasons(answer) == {
        mismatch_sop: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        None: FailureReason.CANNOT_UNDERSTAND,  # not DICOM: no UID to name it by
    }


def test_part_of_another_media_type_fails_unread(
    service: LocalService, mi: Any, datastore_id: str
) -> None:
    dicom = instance_bytes("mixed-types")
    body = multipart([dicom]).replace(
        b"--stow-boundary-7d3f--", b'--stow-boundary-7d3f\r\nContent-Type: application/json'
        b'\r\n\r\n{"00100010": {"vr": "PN"}}\r\n--stow-boundary-7d3f--')

    response = signed_post(studies_url(service, datastore_id), body, MULTIPART)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert [dicom_json_value(i, "00081155") for i in items(answer, REFERENCED)] == [uids(dicom)[1]]
    assert items(answer, FAILED) == [{
        "00081150": {"vr": "UI"}, "00081155": {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [FailureReason.CANNOT_UNDERSTAND]},
    }]


def test_instance_in_a_non_primary_image_set_is_retrieved_by_its_id(
    service: LocalService, mi: Any, datastore_id: str
) -> None:
    """Same series, another PatientID: the import's grouping puts it in a
    non-primary image set, which only ``?imageSetId=`` reaches."""
    url = studies_url(service, datastore_id)
    first = signed_post(url, instance_bytes("conflict", 0), DICOM)
    second = signed_post(url, instance_bytes("conflict", 1, PatientID="OTHER"), DICOM)

    assert first.status_code == second.status_code == 200
    sets = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
    (non_primary,) = [s["imageSetId"] for s in sets if not s["isPrimary"]]
    (item,) = items(second.json(), REFERENCED)
    assert dicom_json_value(item, "00081190").endswith(f"?imageSetId={non_primary}")
    (item,) = items(first.json(), REFERENCED)
    assert "?" not in dicom_json_value(item, "00081190")


def test_nothing_stored_is_409(service: LocalService, mi: Any, datastore_id: str,
                               tmp_path: Path) -> None:
    not_dicom = write_not_dicom(tmp_path / "text.dcm").read_bytes()
    other_study = instance_bytes("409-other")

    response = signed_post(studies_url(service, datastore_id, "1.2.3.4"),
                           multipart([not_dicom, other_study]), MULTIPART)

    assert response.status_code == 409, response.text
    answer = response.json()
    assert REFERENCED not in answer
    assert answer["00081190"] == {"vr": "UR"}
    assert sorted(failure_reasons(answer).values()) == [
        FailureReason.STUDY_INSTANCE_UID_MISMATCH, FailureReason.CANNOT_UNDERSTAND]
    assert primary_image_sets(mi, datastore_id) == []


def test_warned_instance_is_stored_with_its_warning_reason(
    service: LocalService, mi: Any, datastore_id: str, tmp_path: Path
) -> None:
    """A UID that breaks the UI rules imports with INVALID_UID_FORMAT (0xB201):
    202, WarningReason in the answer and in the stored instance."""
    data = write_with(tmp_path / "uid.dcm", SOPInstanceUID="1.2.3..4").read_bytes()

    response = signed_post(studies_url(service, datastore_id), data, DICOM)

    assert response.status_code == 202, response.text
    (item,) = items(response.json(), REFERENCED)
    assert dicom_json_value(item, "00081196") == WarningCode.INVALID_UID_FORMAT
    (image_set,) = primary_image_sets(mi, datastore_id)
    doc = metadata(mi, datastore_id, image_set["imageSetId"])
    (series,) = doc["Study"]["Series"].values()
    stored = series["Instances"]["1.2.3..4"]["DICOM"]
    assert stored["WarningReason"] == WarningCode.INVALID_UID_FORMAT


@pytest.mark.parametrize(
    "content_type",
    ["application/json", 'multipart/related; type="application/dicom+json"; boundary=b', ""],
)
def test_other_media_types_are_415(
    service: LocalService, datastore_id: str, content_type: str
) -> None:
    response = signed_post(studies_url(service, datastore_id), b"{}", content_type)

    assert response.status_code == 415, response.text
    assert response.headers["x-amzn-ErrorType"] == "UnsupportedMediaTypeException"


@pytest.mark.parametrize(
    "body",
    [b"no delimiter at all", b"--stow-boundary-7d3f\r\nContent-Type: application/dicom\r\n\r\nx"],
    ids=["no-part", "no-closing-delimiter"],
)
def test_body_that_is_not_the_multipart_it_says_is_400(
    service: LocalService, datastore_id: str, body: bytes
) -> None:
    response = signed_post(studies_url(service, datastore_id), body, MULTIPART)

    assert response.status_code == 400, response.text


def test_missing_or_inactive_data_store(service: LocalService, mi: Any) -> None:
    data = instance_bytes("stores")
    missing = signed_post(studies_url(service, "0" * 32), data, DICOM)
    creating = mi.create_datastore(datastoreName="not-yet")["datastoreId"]
    not_active = signed_post(studies_url(service, creating), data, DICOM)

    assert missing.status_code == 404
    assert missing.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
    assert not_active.status_code == 409
    assert not_active.headers["x-amzn-ErrorType"] == "ConflictException"


# -- the same path as an import job ------------------------------------------------


def _without_ids(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc.pop("DatastoreID")
    doc.pop("ImageSetID")
    for series in doc["Study"]["Series"].values():
        for instance in series["Instances"].values():
            for frame in instance["ImageFrames"]:
                frame.pop("ID")
    return doc


def _frames(mi: Any, datastore_id: str, image_set_id: str, doc: dict[str, Any]) -> list[bytes]:
    found = []
    for series in doc["Study"]["Series"].values():
        for instance in series["Instances"].values():
            for frame in instance["ImageFrames"]:
                blob = mi.get_image_frame(
                    datastoreId=datastore_id, imageSetId=image_set_id,
                    imageFrameInformation={"imageFrameId": frame["ID"]})
                found.append(blob["imageFrameBlob"].read())
    return found


def test_stow_lands_a_series_as_an_import_job_does(
    service: LocalService, mi: Any, s3: Any, datastore_id: str
) -> None:
    files = {f"slice-{i}.dcm": instance_bytes("same-path", i) for i in range(3)}
    other = mi.create_datastore(datastoreName="by-job")["datastoreId"]
    wait_datastore_active(mi, other)

    stow = signed_post(studies_url(service, datastore_id), multipart(files.values()), MULTIPART)
    job = run_import(mi, s3, other, files, "same-path/")

    assert stow.status_code == 200, stow.text
    assert job.job["jobStatus"] == "COMPLETED"
    (by_stow,) = primary_image_sets(mi, datastore_id)
    (by_job,) = primary_image_sets(mi, other)
    assert by_stow["version"] == by_job["version"] == 1
    assert by_stow["DICOMTags"] == by_job["DICOMTags"]
    stow_doc = metadata(mi, datastore_id, by_stow["imageSetId"])
    job_doc = metadata(mi, other, by_job["imageSetId"])
    assert _without_ids(stow_doc) == _without_ids(job_doc)
    assert (_frames(mi, datastore_id, by_stow["imageSetId"], stow_doc)
            == _frames(mi, other, by_job["imageSetId"], job_doc))
    image_set = mi.get_image_set(datastoreId=datastore_id, imageSetId=by_stow["imageSetId"])
    assert image_set["imageSetWorkflowStatus"] == "IMPORTED"


def test_storing_an_instance_again_adds_a_version(
    service: LocalService, mi: Any, datastore_id: str
) -> None:
    data = instance_bytes("again")
    url = studies_url(service, datastore_id)

    first = signed_post(url, data, DICOM)
    second = signed_post(url, data, DICOM)

    assert first.status_code == second.status_code == 200
    (image_set,) = primary_image_sets(mi, datastore_id)
    assert image_set["version"] == 2
    versions = mi.list_image_set_versions(datastoreId=datastore_id,
                                          imageSetId=image_set["imageSetId"])
    assert sorted(v["versionId"] for v in versions["imageSetPropertiesList"]) == ["1", "2"]


def test_spooled_bodies_leave_nothing_in_the_data_directory(tmp_path: Path) -> None:
    """A request's files go once it is answered; what a crash left goes at
    the next start."""
    spool = tmp_path / "data" / "stow-spool"
    (spool / "stow-left-by-a-crash").mkdir(parents=True)
    (spool / "stow-left-by-a-crash" / "part-000001.dcm").write_bytes(b"x" * 1000)
    empty_s3()
    config = ServiceConfig(datastore_transition_seconds=0.05, stop_grace_seconds=0)
    with LocalService(data_dir=tmp_path / "data", config=config) as svc:
        mi = make_clients(svc)[0]
        datastore_id = mi.create_datastore(datastoreName="spool")["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        assert list(spool.iterdir()) == []

        stored = signed_post(studies_url(svc, datastore_id),
                             multipart([instance_bytes("spool", i) for i in range(2)]), MULTIPART)
        refused = signed_post(studies_url(svc, datastore_id), b"--x\r\n\r\ncut",
                              "multipart/related; boundary=x")

        assert stored.status_code == 200
        assert refused.status_code == 400
        assert list(spool.iterdir()) == []


def test_a_request_cut_off_by_a_crash_is_rolled_back_on_restart(tmp_path: Path) -> None:
    """Its client saw no answer and sends it again: what the request wrote
    goes at the next start, or the resend would make a second version. The
    cut-off is made in the store, as a SIGKILL between the request's writes
    and its answer leaves it."""
    empty_s3()
    config = ServiceConfig(datastore_transition_seconds=0.05, stop_grace_seconds=0)
    with LocalService(data_dir=tmp_path, config=config) as svc:
        mi = make_clients(svc)[0]
        datastore_id = mi.create_datastore(datastoreName="cut-off")["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        assert signed_post(studies_url(svc, datastore_id), instance_bytes("cut"),
                           DICOM).status_code == 200
        (image_set,) = primary_image_sets(mi, datastore_id)
    store = Store(tmp_path)
    repository = ImageSetRepository(store)
    store.put(STOW_KIND, "stow-cut-off", {"datastoreId": datastore_id})
    repository.add_version(image_set["imageSetId"], {"Study": {}}, workflow_status="IMPORTED",
                           import_job_id="stow-cut-off")
    repository.put_frame("cut-off-frame", b"pixels", "1.2.840.10008.1.2.1",
                         import_job_id="stow-cut-off")
    store.close()
    with LocalService(data_dir=tmp_path, config=config) as svc:
        mi = make_clients(svc)[0]
        assert [s["version"] for s in primary_image_sets(mi, datastore_id)] == [1]
    assert not (tmp_path / "blobs" / "frames" / "cut-off-frame").exists()
    store = Store(tmp_path)
    assert dict(store.load(STOW_KIND)) == {}
    store.close()


# -- size bounds ---------------------------------------------------------------------


def test_declared_length_over_the_limit_is_refused_before_the_body(
    service: LocalService, datastore_id: str
) -> None:
    """Only the headers are sent: an answer at all shows that the service
    did not wait for the body it refused."""
    url = studies_url(service, datastore_id)
    length = ServiceConfig().max_stow_request_bytes + 1
    headers = signed_headers("POST", url, headers={
        "Content-Type": DICOM, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    connection = http.client.HTTPConnection(service.host, service.port, timeout=60)
    connection.putrequest("POST", url.removeprefix(service.endpoint), skip_host=True)
    for name, value in {**headers, "Content-Length": str(length)}.items():
        connection.putheader(name, value)
    connection.endheaders()

    response = connection.getresponse()

    assert response.status == 413
    assert response.getheader("x-amzn-ErrorType") == "ValidationException"
    connection.close()


@pytest.fixture
def small_limit_service() -> Iterator[LocalService]:
    empty_s3()
    with LocalService(config=ServiceConfig(datastore_transition_seconds=0.05,
                                           stop_grace_seconds=0,
                                           max_stow_request_bytes=1 << 20)) as svc:
        yield svc


def test_chunked_body_past_the_limit_stops_being_read(
    small_limit_service: LocalService,
) -> None:
    """A chunked body of unknown length is read up to the limit (1 MiB
    here), then answered 413 while the client is still sending: it never
    has to send the 1 GB it meant to."""
    svc = small_limit_service
    mi = make_clients(svc)[0]
    datastore_id = mi.create_datastore(datastoreName="small")["datastoreId"]
    wait_datastore_active(mi, datastore_id)
    url = studies_url(svc, datastore_id)
    headers = signed_headers("POST", url, headers={
        "Content-Type": DICOM, "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "Transfer-Encoding": "chunked"})
    meant = 1000**3
    chunk = b"\0" * (64 * 1024)
    sent = 0
    with socket.create_connection((svc.host, svc.port), timeout=60) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST {url.removeprefix(svc.endpoint)} HTTP/1.1\r\n{head}\r\n".encode())
        while sent < meant and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        answer = sock.recv(65536).decode("latin-1")

    assert answer.startswith("HTTP/1.1 413"), answer
    # What the socket buffers held besides the 1 MiB read: far from the 1 GB.
    assert sent < 64 << 20
    assert primary_image_sets(mi, datastore_id) == []


# -- signatures ----------------------------------------------------------------------

KEY = ("AKIDSTOWTEST", "stow-secret")


def test_signature_is_checked_with_either_payload_hash_form() -> None:
    """With --credentials: a body signed over its SHA-256 (botocore's way)
    and one declared STREAMING-AWS4-HMAC-SHA256-PAYLOAD (AWS's curl example)
    are stored; a wrong secret is refused before the body is read, and an
    unsigned request gets the service's JSON refusal."""
    empty_s3()
    config = ServiceConfig(datastore_transition_seconds=0.05, stop_grace_seconds=0,
                           credentials=Credentials(*KEY))
    with LocalService(config=config) as svc:
        mi = boto3.client("medical-imaging", endpoint_url=svc.endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY[0], aws_secret_access_key=KEY[1],
                          config=Config(inject_host_prefix=False))
        datastore_id = mi.create_datastore(datastoreName="signed")["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        url = studies_url(svc, datastore_id)
        first, second = instance_bytes("signed", 0), instance_bytes("signed", 1)

        hashed = signed_post(url, first, DICOM, key=KEY)
        streaming = signed_post(url, second, DICOM, key=KEY, headers={
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "x-amz-decoded-content-length": str(len(second))})
        unsigned = requests.post(url, data=first, headers={"Content-Type": DICOM}, timeout=60)
        wrong = _headers_only(svc, url, key=(KEY[0], "not-the-secret"))

        assert hashed.status_code == 200, hashed.text
        assert streaming.status_code == 200, streaming.text
        assert unsigned.status_code == 403
        assert unsigned.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert wrong == 403
        (image_set,) = primary_image_sets(mi, datastore_id)
        assert image_set["DICOMTags"]["DICOMNumberOfStudyRelatedInstances"] == 2


def _headers_only(svc: LocalService, url: str, key: tuple[str, str]) -> int:
    """The status of a request that declares a 100 MB body and sends none."""
    headers = signed_headers("POST", url, headers={
        "Content-Type": DICOM, "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"},
        key=key)
    connection = http.client.HTTPConnection(svc.host, svc.port, timeout=60)
    connection.putrequest("POST", url.removeprefix(svc.endpoint), skip_host=True)
    for name, value in {**headers, "Content-Length": str(100 << 20)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status



# -- memory --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
LARGE_PARTS = 400  # of 0.5 MB each: a 200 MB request


def _peak_rss(pid: int) -> int:
    """The process's peak resident size since it was last reset (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``dicom-import local`` in its own process, frames on disk (so that
    only the request's handling can raise its memory), HTJ2K off (the codec
    is not what is measured, and it would take most of the time)."""
    with local_service_process(tmp_path / "service.log", "--port", "0", "--data-dir",
                               str(tmp_path / "data"), "--no-htj2k") as (process, printed):
        yield process, endpoint_printed(printed)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_200_mb_request_does_not_sit_in_the_service_memory(
    service_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, endpoint = service_process
    mi = boto3.client("medical-imaging", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local",
                      config=Config(inject_host_prefix=False))
    datastore_id = mi.create_datastore(datastoreName="memory")["datastoreId"]
    wait_datastore_active(mi, datastore_id)
    url = f"{endpoint}/datastore/{datastore_id}/studies"
    spec = series_spec("memory")
    slices = [ct_slice(spec, i, rows=512, columns=512) for i in range(LARGE_PARTS)]

    def body() -> Iterator[bytes]:
        for ds in slices:
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            yield b"--stow-boundary-7d3f\r\nContent-Type: application/dicom\r\n\r\n"
            yield buffer.getvalue() + b"\r\n"
        yield b"--stow-boundary-7d3f--\r\n"

    size = sum(len(piece) for piece in body())
    headers = signed_headers("POST", url, headers={
        "Content-Type": MULTIPART, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    # Everything a request first loads (codecs, pydicom's handlers) is loaded.
    warm_up = signed_post(url, instance_bytes("memory-warm-up"), DICOM)
    assert warm_up.status_code == 200, warm_up.text
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # resets the peak
    before = psutil.Process(process.pid).memory_info().rss

    response = requests.post(url, data=body(), headers=headers, timeout=600)

    assert response.status_code == 200, response.text
    assert len(items(response.json(), REFERENCED)) == LARGE_PARTS
    assert size > 200 * 1000**2
    grew = _peak_rss(process.pid) - before
    assert grew < size / 4, f"peak memory grew by {grew >> 20} MiB for a {size >> 20} MiB request"
