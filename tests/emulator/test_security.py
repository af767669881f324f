"""The local service is safe by default on a developer's machine: a web page
open in the same machine's browser cannot read or change what it holds.

Refusals are checked with raw HTTP, as a page (or an attacker) would send
them; what must keep working is checked with boto3, s3fs and the AWS CLI.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import s3fs
from botocore import UNSIGNED
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.exceptions import ClientError

from emulator.config import Credentials, ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import PYDICOM_TEST_FILES
from tests.emulator.conftest import (
    BUCKET,
    ROLE,
    make_clients,
    wait_datastore_active,
    wait_job_done,
)
from tests.local_service import local_service_process

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / ".awscli" / "bin" / "aws"
KEY, SECRET = "AKIDLOCALTEST", "s3cr3t/with+symbols"
PAGE = "http://localhost:3000"
EVIL = "http://evil.example"


def raw(
    svc: LocalService, method: str, target: str, headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request as a browser or curl sends it: no signature unless given."""
    connection = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def path_of(url: str) -> str:
    split = urlsplit(url)
    return f"{split.path}?{split.query}"


def s3_error(body: bytes) -> str:
    found = re.search(rb"<Code>([^<]+)</Code>", body)
    assert found, body
    return found.group(1).decode()


def client(svc: LocalService, service: str, key: str = KEY, secret: str = SECRET,
           endpoint: str | None = None, **config: Any) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint or svc.endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}, **config),
    )


def code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return error.value.response["Error"]["Code"]


@pytest.fixture
def staged(service: LocalService) -> Any:
    """A bucket holding one object, as staging leaves it."""
    _, s3 = make_clients(service)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="staged/patient.dcm", Body=b"PHI")
    return s3


@pytest.fixture
def verifying() -> Iterator[LocalService]:
    config = ServiceConfig(datastore_transition_seconds=0.05, credentials=Credentials(KEY, SECRET))
    with LocalService(config=config) as svc:
        client(svc, "s3").create_bucket(Bucket=BUCKET)
        client(svc, "s3").put_object(Bucket=BUCKET, Key="staged/patient.dcm", Body=b"PHI")
        yield svc


@pytest.fixture
def with_cors() -> Iterator[LocalService]:
    with LocalService(config=ServiceConfig(cors_origins=(PAGE,))) as svc:
        make_clients(svc)[1].create_bucket(Bucket=BUCKET)
        yield svc


class TestUnsignedRequestsAreRefused:
    def test_s3_list_objects_is_access_denied_in_s3_xml(
        self, service: LocalService, staged: Any
    ) -> None:
        status, headers, body = raw(service, "GET", f"/{BUCKET}?list-type=2")

        assert status == 403
        assert headers["content-type"] == "application/xml"
        assert s3_error(body) == "AccessDenied"
        assert b"patient" not in body

    def test_s3_get_object_is_access_denied(self, service: LocalService, staged: Any) -> None:
        status, _, body = raw(service, "GET", f"/{BUCKET}/staged/patient.dcm")
        assert (status, s3_error(body)) == (403, "AccessDenied")

    def test_boto3_without_signature_gets_access_denied(
        self, service: LocalService, staged: Any
    ) -> None:
        anonymous = client(service, "s3", signature_version=UNSIGNED)
        with pytest.raises(ClientError) as error:
            anonymous.list_objects_v2(Bucket=BUCKET)
        assert code(error) == "AccessDenied"

    def test_medical_imaging_is_missing_authentication_token_in_json(
        self, service: LocalService
    ) -> None:
        status, headers, body = raw(service, "GET", "/datastore")

        assert status == 403
        assert headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"message": "Missing Authentication Token"}

    def test_a_header_that_is_not_a_signature_is_refused(
        self, service: LocalService, staged: Any
    ) -> None:
        status, _, body = raw(service, "GET", f"/{BUCKET}", {"Authorization": "Bearer x"})
        assert (status, s3_error(body)) == (400, "AuthorizationHeaderMalformed")

    def test_any_access_key_is_accepted_by_default(
        self, service: LocalService, staged: Any
    ) -> None:
        s3 = client(service, "s3", key="whatever", secret="anything")
        assert s3.get_object(Bucket=BUCKET, Key="staged/patient.dcm")["Body"].read() == b"PHI"
        assert client(service, "medical-imaging", "x", "y").list_datastores()[
            "datastoreSummaries"] == []


class TestCrossOrigin:
    def test_no_cors_headers_by_default(self, service: LocalService, staged: Any) -> None:
        url = make_clients(service)[1].generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "staged/patient.dcm"})
        status, headers, _ = raw(service, "GET", path_of(url), {"Origin": EVIL})

        assert status == 200
        assert not [name for name in headers if name.startswith("access-control-")]

    def test_preflight_is_refused_by_default(self, service: LocalService, staged: Any) -> None:
        status, headers, _ = raw(service, "OPTIONS", f"/{BUCKET}/staged/patient.dcm", {
            "Origin": EVIL, "Access-Control-Request-Method": "GET"})

        assert status == 403
        assert "access-control-allow-origin" not in headers

    def test_only_the_given_origin_is_allowed(self, with_cors: LocalService) -> None:
        s3 = make_clients(with_cors)[1]
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"x")
        target = path_of(s3.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "k"}))

        _, allowed, _ = raw(with_cors, "GET", target, {"Origin": PAGE})
        _, other, _ = raw(with_cors, "GET", target, {"Origin": EVIL})

        assert allowed["access-control-allow-origin"] == PAGE
        assert "access-control-allow-origin" not in other

    def test_preflight_of_the_given_origin_is_answered(self, with_cors: LocalService) -> None:
        preflight = {"Access-Control-Request-Method": "PUT",
                     "Access-Control-Request-Headers": "authorization,x-amz-date"}
        status, headers, _ = raw(with_cors, "OPTIONS", f"/{BUCKET}/k",
                                 {"Origin": PAGE, **preflight})
        refused, other, _ = raw(with_cors, "OPTIONS", f"/{BUCKET}/k", {"Origin": EVIL, **preflight})

        assert status == 200
        assert headers["access-control-allow-origin"] == PAGE
        assert "PUT" in headers["access-control-allow-methods"]
        assert headers["access-control-allow-headers"] == "authorization,x-amz-date"
        assert refused == 403
        assert "access-control-allow-origin" not in other

    def test_admin_route_is_never_open_to_pages(self, with_cors: LocalService) -> None:
        status, headers, _ = raw(with_cors, "OPTIONS", "/_emulator/faults", {
            "Origin": PAGE, "Access-Control-Request-Method": "POST"})
        assert status != 200
        assert "access-control-allow-origin" not in headers


class TestHost:
    """A page that rebinds its own name to 127.0.0.1 sends its name as Host."""

    def test_s3_with_a_foreign_host_is_refused(self, service: LocalService, staged: Any) -> None:
        url = make_clients(service)[1].generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "staged/patient.dcm"})
        status, _, body = raw(service, "GET", path_of(url),
                              {"Host": f"rebind.evil.example:{service.port}"})
        assert (status, s3_error(body)) == (403, "AccessDenied")
        assert b"PHI" not in body

    def test_medical_imaging_with_a_foreign_host_is_refused(self, service: LocalService) -> None:
        status, headers, _ = raw(service, "GET", "/datastore",
                                 {"Host": f"rebind.evil.example:{service.port}"})
        assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException")

    def test_another_port_is_refused(self, service: LocalService) -> None:
        status, _, _ = raw(service, "GET", "/_emulator/health",
                           {"Host": f"127.0.0.1:{service.port + 1}"})
        assert status == 403

    @pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
    def test_loopback_names_work(self, service: LocalService, staged: Any, name: str) -> None:
        endpoint = f"http://{name}:{service.port}"
        s3 = client(service, "s3", endpoint=endpoint)
        mi = client(service, "medical-imaging", endpoint=endpoint)

        assert s3.get_object(Bucket=BUCKET, Key="staged/patient.dcm")["Body"].read() == b"PHI"
        assert mi.list_datastores()["datastoreSummaries"] == []


class TestCredentials:
    """--credentials: signatures are verified, over headers, query and body."""

    def test_boto3_with_the_right_pair(self, verifying: LocalService) -> None:
        s3 = client(verifying, "s3")
        s3.put_object(Bucket=BUCKET, Key="a key with spaces+plus", Body=b"x" * 100)
        s3.upload_fileobj(io.BytesIO(b"y" * 100), BUCKET, "streamed")
        assert {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]} >= {
            "a key with spaces+plus", "streamed"}
        mi = client(verifying, "medical-imaging")
        assert mi.list_datastores()["datastoreSummaries"] == []
        arn = f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{'1' * 32}"
        with pytest.raises(ClientError) as error:  # a percent-encoded path, signed
            mi.tag_resource(resourceArn=arn, tags={"a": "b"})
        assert code(error) == "ResourceNotFoundException"

    def test_wrong_secret(self, verifying: LocalService) -> None:
        with pytest.raises(ClientError) as s3_error_:
            client(verifying, "s3", secret="wrong").list_objects_v2(Bucket=BUCKET)
        with pytest.raises(ClientError) as mi_error:
            client(verifying, "medical-imaging", secret="wrong").list_datastores()
        assert code(s3_error_) == "SignatureDoesNotMatch"
        assert code(mi_error) == "InvalidSignatureException"

    def test_unknown_access_key(self, verifying: LocalService) -> None:
        with pytest.raises(ClientError) as s3_error_:
            client(verifying, "s3", key="OTHER").list_objects_v2(Bucket=BUCKET)
        with pytest.raises(ClientError) as mi_error:
            client(verifying, "medical-imaging", key="OTHER").list_datastores()
        assert code(s3_error_) == "InvalidAccessKeyId"
        assert code(mi_error) == "UnrecognizedClientException"

    @pytest.mark.parametrize("version", ["s3", "s3v4"])  # boto3 presigns SigV2 by default
    def test_presigned_urls(self, verifying: LocalService, version: str) -> None:
        s3 = client(verifying, "s3", signature_version=version)
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "staged/patient.dcm"})
        assert raw(verifying, "GET", path_of(url))[2] == b"PHI"

        forged = re.sub(r"(Signature=)[^&]+", lambda m: m.group(1) + "0" * 64, path_of(url))
        status, _, body = raw(verifying, "GET", forged)
        assert (status, s3_error(body)) == (403, "SignatureDoesNotMatch")

        wrong = client(verifying, "s3", secret="wrong", signature_version=version)
        url = wrong.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "staged/patient.dcm"})
        assert raw(verifying, "GET", path_of(url))[0] == 403

    def test_expired_presigned_url(self, verifying: LocalService) -> None:
        s3 = client(verifying, "s3", signature_version="s3v4")
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "staged/patient.dcm"}, ExpiresIn=1)
        time.sleep(2)
        status, _, body = raw(verifying, "GET", path_of(url))
        assert (status, s3_error(body)) == (403, "AccessDenied")
        assert b"expired" in body

    def test_body_must_match_its_declared_hash(self, verifying: LocalService) -> None:
        request = AWSRequest("PUT", f"{verifying.endpoint}/{BUCKET}/k", data=b"signed body")
        S3SigV4Auth(BotocoreCredentials(KEY, SECRET), "s3", "us-east-1").add_auth(request)
        headers = dict(request.headers.items())
        assert headers["X-Amz-Content-SHA256"] == hashlib.sha256(b"signed body").hexdigest()

        status, _, body = raw(verifying, "PUT", f"/{BUCKET}/k", headers, b"other body!")
        assert (status, s3_error(body)) == (400, "XAmzContentSHA256Mismatch")
        assert raw(verifying, "PUT", f"/{BUCKET}/k", headers, b"signed body")[0] == 200

    def test_s3fs(self, verifying: LocalService) -> None:
        def filesystem(secret: str) -> s3fs.S3FileSystem:
            return s3fs.S3FileSystem(
                key=KEY, secret=secret, skip_instance_cache=True,
                client_kwargs={"endpoint_url": verifying.endpoint, "region_name": "us-east-1"})

        fs = filesystem(SECRET)
        fs.pipe(f"{BUCKET}/s3fs/a file", b"w" * 50)
        with fs.open(f"{BUCKET}/s3fs/multipart", "wb", block_size=5 * 2**20) as out:
            out.write(b"q" * (6 * 2**20))
        assert fs.cat(f"{BUCKET}/s3fs/a file") == b"w" * 50
        assert fs.size(f"{BUCKET}/s3fs/multipart") == 6 * 2**20
        with pytest.raises(PermissionError):
            filesystem("wrong").cat(f"{BUCKET}/s3fs/a file")

    def test_aws_cli(self, verifying: LocalService, tmp_path: Path) -> None:
        if not AWS.exists():
            pytest.fail(f"{AWS} is missing: run `make install` to build the AWS CLI venv")
        (tmp_path / "f").write_bytes(b"p" * 30)

        def aws(secret: str, *args: str) -> subprocess.CompletedProcess[str]:
            env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **verifying.env(),
                   "AWS_SECRET_ACCESS_KEY": secret}
            return subprocess.run([str(AWS), *args], env=env, capture_output=True, text=True,
                                  timeout=120, check=False)

        assert verifying.env()["AWS_ACCESS_KEY_ID"] == KEY
        copied = aws(SECRET, "s3", "cp", str(tmp_path / "f"), f"s3://{BUCKET}/cli/f")
        listed = aws(SECRET, "medical-imaging", "list-datastores")
        assert copied.returncode == 0, copied.stderr
        assert listed.returncode == 0, listed.stderr
        refused = aws("wrong", "s3", "cp", str(tmp_path / "f"), f"s3://{BUCKET}/cli/g")
        assert "SignatureDoesNotMatch" in refused.stderr
        assert "InvalidSignatureException" in aws("wrong", "medical-imaging",
                                                  "list-datastores").stderr

    def test_an_import_reads_its_input_with_the_credentials(
        self, verifying: LocalService
    ) -> None:
        s3, mi = client(verifying, "s3"), client(verifying, "medical-imaging")
        s3.put_object(Bucket=BUCKET, Key="in/ct.dcm",
                      Body=(PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
        datastore = mi.create_datastore(datastoreName="creds")["datastoreId"]
        wait_datastore_active(mi, datastore)
        job = mi.start_dicom_import_job(
            datastoreId=datastore, dataAccessRoleArn=ROLE, clientToken="t",
            inputS3Uri=f"s3://{BUCKET}/in/", outputS3Uri=f"s3://{BUCKET}/out/")
        assert wait_job_done(mi, datastore, job["jobId"])["jobStatus"] == "COMPLETED"


class TestAdminRoute:
    def post(self, svc: LocalService, body: Any, token: str | None = None,
             content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": content_type,
                   "Authorization": f"Bearer {token or svc.admin_token}"}
        status, _, answer = raw(svc, "POST", "/_emulator/faults", headers,
                                json.dumps(body).encode())
        return status, json.loads(answer)

    def test_needs_the_token(self, service: LocalService) -> None:
        assert self.post(service, {"fail_jobs": 1}, token="guessed")[0] == 401
        status, _, _ = raw(service, "POST", "/_emulator/faults",
                           {"Content-Type": "application/json"}, b'{"fail_jobs": 1}')
        assert status == 401
        assert raw(service, "GET", "/_emulator/faults")[0] == 401
        assert service.faults.fail_jobs == 0

    def test_takes_json_only(self, service: LocalService) -> None:
        """A page can POST text/plain cross-origin without a preflight."""
        status, _ = self.post(service, {"fail_jobs": 1}, content_type="text/plain")
        assert status == 415
        assert service.faults.fail_jobs == 0

    @pytest.mark.parametrize(("change", "field"), [
        ({"error_rate": 5}, "error_rate"),
        ({"error_rate": {"ListDatastores": 1.5}}, "error_rate.ListDatastores"),
        ({"error_rate": {"NoSuchOperation": 0.5}}, "error_rate.NoSuchOperation"),
        ({"job_duration_seconds": "slow"}, "job_duration_seconds"),
        ({"job_duration_seconds": -1}, "job_duration_seconds"),
        ({"fail_jobs": 1.5}, "fail_jobs"),
        ({"fail_jobs_with_key": 5}, "fail_jobs_with_key"),
        ({"fail_jobs_with_key": "(poison"}, "fail_jobs_with_key"),
        ({"throttle": "yes"}, "throttle"),
        ({"rates": {"GetDatastore": [1]}}, "rates.GetDatastore"),
        # Each of these was taken, and some broke the service until restart.
        ({"rates": {"GetDatastore": [1, 10**400]}}, "rates.GetDatastore"),
        ({"rates": {"GetDatastore": [float("inf"), 1]}}, "rates.GetDatastore"),
        ({"job_duration_seconds": float("inf")}, "job_duration_seconds"),
        ({"job_duration_seconds": 1e12}, "job_duration_seconds"),
        ({"fail_jobs": 10**30}, "fail_jobs"),
        ({"fail_job_message": "x" * 5000}, "fail_job_message"),
        ({"fail_jobs_with_key": "a" * 5000}, "fail_jobs_with_key"),
        ({"seed": 2**80}, "seed"),
        ({"seed": "7"}, "seed"),
    ])
    def test_checks_every_value(self, service: LocalService, change: dict[str, Any],
                                field: str) -> None:
        before = service.faults.as_dict()
        status, answer = self.post(service, {"fail_jobs": 3, **change})
        assert (status, answer["field"]) == (400, field)
        assert service.faults.as_dict() == before  # all or nothing

    def test_a_valid_change_applies(self, service: LocalService) -> None:
        status, answer = self.post(service, {"error_rate": {"*": 0.5}, "fail_jobs": 2})
        assert status == 200
        assert answer["error_rate"] == {"*": 0.5}
        assert service.faults.fail_jobs == 2

    def test_a_body_over_its_bound_is_not_read(self, service: LocalService) -> None:
        status, _ = self.post(service, {"fail_job_message": "x" * (100 * 1024)})
        assert status == 413
        assert service.faults.fail_job_message != "x" * (100 * 1024)


class TestAdminClock:
    """The clock once took {"advanceSeconds": -1e12}: a 500, then every
    import failed until the service restarted."""

    def clock(self, svc: LocalService, body: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {svc.admin_token}",
                   "Content-Type": "application/json"}
        status, _, answer = raw(svc, "POST" if body else "GET", "/_emulator/clock", headers,
                                body.encode() if body else None)
        return status, json.loads(answer)

    @pytest.mark.parametrize("body", [
        '{"advanceSeconds": -1e12}', '{"advanceSeconds": 1e12}', '{"advanceSeconds": 1e400}',
        '{"advanceSeconds": NaN}', '{"advanceSeconds": -Infinity}',
        '{"advanceSeconds": "60"}', '{"advanceSeconds": true}', '{"advanceSeconds": null}',
        '{"advanceSeconds": [1]}', '{"advanceSeconds": 10, "extra": 1}', '[1]',
    ])
    def test_a_bad_value_is_400_and_changes_nothing(
        self, service: LocalService, mi: Any, body: str
    ) -> None:
        status, answer = self.clock(service, body)

        assert status == 400
        assert answer["message"]
        assert self.clock(service)[1]["offsetSeconds"] == 0
        datastore = mi.create_datastore(datastoreName="after")["datastoreId"]
        wait_datastore_active(mi, datastore)

    def test_the_clock_is_bounded_in_all_not_per_move(self, service: LocalService) -> None:
        step = json.dumps({"advanceSeconds": 40 * 366 * 86400})
        assert [self.clock(service, step)[0] for _ in range(3)] == [200, 200, 400]
        assert self.clock(service, json.dumps({"advanceSeconds": -80 * 366 * 86400}))[0] == 200
        assert self.clock(service)[1]["offsetSeconds"] == 0

    def test_many_moves(self, service: LocalService, mi: Any) -> None:
        """Each move wrapped the clock in one more function: past about a
        thousand, reading it exceeded Python's recursion limit."""
        for _ in range(1100):
            assert self.clock(service, '{"advanceSeconds": 1}')[0] == 200
        status, answer = self.clock(service)
        assert (status, answer["offsetSeconds"]) == (200, 1100)
        mi.create_datastore(datastoreName="moved")


class TestMotoPassThrough:
    """moto serves many more services than S3, and an admin API that resets
    them: a signed request (any key passes by default) reset every bucket."""

    def signed(self, svc: LocalService, method: str, path: str, service: str,
               headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, bytes]:
        request = AWSRequest(method, f"{svc.endpoint}{path}", data=body, headers=headers or {})
        SigV4Auth(BotocoreCredentials("any", "key"), service, "us-east-1").add_auth(request)
        status, _, answer = raw(svc, method, path, dict(request.headers.items()), body)
        return status, answer

    @pytest.mark.parametrize("signing_name", ["sts", "s3", "iam"])
    def test_moto_reset_needs_the_admin_token(
        self, service: LocalService, staged: Any, signing_name: str
    ) -> None:
        status, _ = self.signed(service, "POST", "/moto-api/reset", signing_name)
        assert status == 401
        unsigned, _, _ = raw(service, "POST", "/moto-api/reset")
        assert unsigned == 401
        assert staged.get_object(Bucket=BUCKET, Key="staged/patient.dcm")["Body"].read() == b"PHI"

        status, _, _ = raw(service, "POST", "/moto-api/reset",
                           {"Authorization": f"Bearer {service.admin_token}"})
        assert status == 200
        with pytest.raises(ClientError):
            staged.head_bucket(Bucket=BUCKET)

    @pytest.mark.parametrize(("name", "call"), [
        ("sts", lambda c: c.get_caller_identity()),
        ("iam", lambda c: c.create_user(UserName="intruder")),
    ])
    def test_other_services_need_the_admin_token(
        self, service: LocalService, name: str, call: Any
    ) -> None:
        plain = client(service, name)
        with pytest.raises(ClientError) as refused:
            call(plain)
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

        trusted = client(service, name)

        def add_token(request: AWSRequest, **_: Any) -> None:
            request.headers["x-emulator-admin-token"] = service.admin_token

        trusted.meta.events.register("before-sign", add_token)
        call(trusted)


def test_error_rate_option_refuses_unknown_operations_and_bad_probabilities(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import main

    for value in ("NoSuchOperation=0.5", "ListDatastores=2", "*=-0.1"):
        assert main(["local", "--port", "0", "--error-rate", value]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("dicom-import local: --error-rate: ")
        assert err.count("\n") == 1


@pytest.fixture
def started_on_all_interfaces(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with local_service_process(tmp_path / "service.log", "--host", "0.0.0.0",
                               "--port", "0") as started:
        yield started


def test_start_prints_the_admin_token_and_warns_beyond_loopback(
    started_on_all_interfaces: tuple[subprocess.Popen[str], str], tmp_path: Path,
) -> None:
    process, printed = started_on_all_interfaces
    port = int(re.search(r"AWS_ENDPOINT_URL=http://0\.0\.0\.0:(\d+)", printed)[1])  # type: ignore[index]
    token = re.search(r"Authorization: Bearer (\S+)", printed)[1]  # type: ignore[index]

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/_emulator/faults", headers={"Authorization": f"Bearer {token}"})
    assert connection.getresponse().status == 200
    connection.close()

    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert "WARNING: listening on 0.0.0.0" in (tmp_path / "service.log").read_text()
