"""Setup mistakes end a run before any file is read or anything is created: one
line on stderr, exit 2, no data store, no object, no report folder, and no
retry of a call that cannot succeed (counted from the AWS calls the run made,
not timed)."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from cli.main import main
from config.settings import get_settings
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from flows.parameters import RetryParameters
from flows.retry import retry_failed
from tasks.preflight import SetupError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BUCKET = "preflight-bucket"
DATASTORE_ID = "0" * 32


class AwsCalls:
    """What the run asked AWS: API calls (one per call: a Prefect task retry
    calls again) and HTTP attempts (botocore's own retries send again)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()

    def call(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def send(self, event_name: str, **_: Any) -> None:
        self.sent[event_name.rsplit(".", 1)[-1]] += 1

    def assert_not_retried(self) -> None:
        assert all(self.sent[name] <= count for name, count in self.calls.items()), (
            self.calls, self.sent)

    def assert_once(self, operation: str) -> None:
        """``operation`` was called and sent exactly once, and nothing was retried."""
        assert self.calls[operation] == 1 and self.sent[operation] == 1, (self.calls, self.sent)
        self.assert_not_retried()


@pytest.fixture
def service(local_aws: LocalService) -> Iterator[LocalService]:
    admin(local_aws, "s3").create_bucket(Bucket=BUCKET)
    # Settings are cached per process: a test that sets DICOM_IMPORT_* clears them.
    get_settings.cache_clear()
    yield local_aws
    get_settings.cache_clear()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> AwsCalls:
    """Count through the default boto3 session, which every client of the run comes from."""
    recorder = AwsCalls()
    session = boto3.session.Session()
    session.events.register("before-call", recorder.call)
    session.events.register("before-send", recorder.send)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    return recorder


def admin(svc: LocalService, service_name: str) -> Any:
    """A client of the local service that does not depend on the run's environment."""
    return boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    ).client(service_name, endpoint_url=svc.endpoint, config=Config(inject_host_prefix=False))


def argv(source: Path, tmp_path: Path, *flags: str, **options: str) -> list[str]:
    given = {
        "datastore": "preflight-store",
        "staging-prefix": f"s3://{BUCKET}/staging",
        "output-prefix": f"s3://{BUCKET}/output",
        "report-location": str(tmp_path / "reports"),
        "validation-workers": "1",
        **options,
    }
    return ["ingest", str(source), *flags,
            *(part for name, value in given.items() for part in (f"--{name}", value))]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    write_ct_series(tmp_path / "in", 2, series_spec("preflight"), rows=16, columns=16)
    return tmp_path / "in"


def fails_in_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The run's exit status is 2 and it ends with one error line, no traceback."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in out + err
    (line,) = [line for line in err.splitlines() if line.startswith("dicom-import ingest:")]
    assert err.rstrip().endswith(line)
    return line


def datastore_names(svc: LocalService) -> list[str]:
    summaries = admin(svc, "medical-imaging").list_datastores()["datastoreSummaries"]
    return sorted(summary["datastoreName"] for summary in summaries)


def assert_nothing_created(svc: LocalService, tmp_path: Path) -> None:
    assert admin(svc, "medical-imaging").list_datastores()["datastoreSummaries"] == []
    assert admin(svc, "s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("option", ["staging-prefix", "output-prefix"])
def test_missing_bucket(service: LocalService, aws: AwsCalls, source: Path, tmp_path: Path,
                        capsys: Any, option: str) -> None:
    line = fails_in_one_line(
        argv(source, tmp_path, **{option: "s3://no-such-bucket/prefix"}), capsys)

    assert f"--{option} s3://no-such-bucket/prefix: bucket no-such-bucket does not exist" in line
    aws.assert_not_retried()
    assert not aws.calls["PutObject"]  # every bucket is looked at before any is written to
    assert_nothing_created(service, tmp_path)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("staging-prefix", "s3://My_Bucket/staging", "'My_Bucket' is not a valid bucket name"),
    ("output-prefix", "s3://ab/output", "'ab' is not a valid bucket name"),
    ("output-prefix", "s3://192.168.5.4/output", "not IP addresses"),
    ("report-location", "S3://preflight-bucket/reports", "is not an s3:// URI"),
])
def test_invalid_location(service: LocalService, aws: AwsCalls, source: Path, tmp_path: Path,
                          capsys: Any, monkeypatch: pytest.MonkeyPatch, option: str,
                          value: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)  # where a mistyped S3 location would become a folder

    line = fails_in_one_line(argv(source, tmp_path, **{option: value}), capsys)

    assert f"--{option}" in line and expected in line
    assert not aws.calls  # found before any request
    assert_nothing_created(service, tmp_path)
    assert list(tmp_path.iterdir()) == [source]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(("variable", "operation"), [
    ("AWS_ENDPOINT_URL", "HeadBucket"),
    ("AWS_ENDPOINT_URL_MEDICAL_IMAGING", "ListDatastores"),
])
def test_unreachable_endpoint(service: LocalService, aws: AwsCalls, source: Path,
                              tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch,
                              variable: str, operation: str) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv(variable, endpoint)

    line = fails_in_one_line(argv(source, tmp_path), capsys)

    assert f"cannot reach {'S3' if operation == 'HeadBucket' else 'HealthImaging'} " \
           f"at {endpoint}" in line
    aws.assert_once(operation)
    assert_nothing_created(service, tmp_path)


@pytest.mark.parametrize(("address", "expected"), [
    ("tcp://127.0.0.1:{closed}", "no Dask scheduler answers there"),
    ("tcp://127.0.0.1:8786x", "not a Dask scheduler address"),
    ("scheduler.internal", "not a Dask scheduler address"),
    ("http://127.0.0.1:{closed}", "not a Dask scheduler address"),
])
def test_dask_address_that_cannot_serve(service: LocalService, aws: AwsCalls, source: Path,
                                        tmp_path: Path, capsys: Any, address: str,
                                        expected: str) -> None:
    address = address.format(closed=closed_port())

    line = fails_in_one_line(argv(source, tmp_path, **{"dask-address": address}), capsys)

    assert line.startswith(f"dicom-import ingest: --dask-address {address}: {expected}")
    assert not aws.calls  # found before any request
    assert_nothing_created(service, tmp_path)


def test_no_credentials(service: LocalService, aws: AwsCalls, source: Path, tmp_path: Path,
                        capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    line = fails_in_one_line(argv(source, tmp_path), capsys)

    assert "no AWS credentials: set AWS_ACCESS_KEY_ID" in line
    assert not aws.calls
    assert_nothing_created(service, tmp_path)


@pytest.mark.parametrize(("url", "says"), [
    ("sqlite:///{tmp_path}/a-file/ledger.sqlite", "is a file, not a folder"),
    ("postgresql+psycopg://nobody@127.0.0.1:{port}/ledger", "cannot open the ledger"),
], ids=["sqlite-under-a-file", "postgresql-not-answering"])
def test_unusable_ledger_url(service: LocalService, aws: AwsCalls, source: Path,
                             tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch,
                             url: str, says: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("DICOM_IMPORT_LEDGER_URL", url.format(tmp_path=tmp_path, port=port))

    line = fails_in_one_line(argv(source, tmp_path), capsys)

    assert "DICOM_IMPORT_LEDGER_URL" in line and says in line
    assert_nothing_created(service, tmp_path)


def test_a_mistyped_datastore_name_creates_nothing_unless_asked(
    service: LocalService, source: Path, tmp_path: Path, capsys: Any
) -> None:
    admin(service, "medical-imaging").create_datastore(datastoreName="preflight-store")

    line = fails_in_one_line(argv(source, tmp_path, datastore="preflight-stor"), capsys)

    assert line == ("dicom-import ingest: --datastore preflight-stor: no data store has this "
                    "name; the closest: preflight-store. To create it, give "
                    "--create-datastore.")
    assert datastore_names(service) == ["preflight-store"]
    assert admin(service, "s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    assert not (tmp_path / "reports").exists()

    code = main(argv(source, tmp_path, "--create-datastore", datastore="preflight-stor"))

    assert code == 0, capsys.readouterr()
    assert datastore_names(service) == ["preflight-stor", "preflight-store"]


def test_unknown_datastore_id(service: LocalService, aws: AwsCalls, source: Path,
                              tmp_path: Path, capsys: Any) -> None:
    line = fails_in_one_line(argv(source, tmp_path, datastore=DATASTORE_ID), capsys)

    assert line == f"dicom-import ingest: Data store {DATASTORE_ID} does not exist."
    aws.assert_once("GetDatastore")  # ResourceNotFoundException: not retried
    assert_nothing_created(service, tmp_path)


def test_report_location_is_a_file_even_in_a_dry_run(
    service: LocalService, source: Path, tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "reports").write_text("not a folder")

    line = fails_in_one_line(
        argv(source, tmp_path, "--dry-run",
             **{"report-location": str(tmp_path / "reports" / "run")}), capsys)

    assert f"--report-location {tmp_path / 'reports' / 'run'}: " \
           f"{tmp_path / 'reports'} is a file, not a folder" in line


def test_a_dry_run_needs_no_bucket(service: LocalService, aws: AwsCalls, source: Path,
                                   tmp_path: Path, capsys: Any) -> None:
    code = main(argv(source, tmp_path, "--dry-run",
                     **{"staging-prefix": "s3://no-such-bucket/staging"}))

    assert code == 0, capsys.readouterr()
    assert not aws.calls


def test_retry_checks_before_resolving(service: LocalService, aws: AwsCalls,
                                       tmp_path: Path) -> None:
    state = retry_failed(RetryParameters(
        datastore="preflight-store", staging_prefix="s3://no-such-bucket/staging",
        output_prefix=f"s3://{BUCKET}/output", report_location=str(tmp_path / "reports"),
    ), return_state=True)

    error = state.result(raise_on_failure=False)
    assert isinstance(error, SetupError)
    assert "--staging-prefix s3://no-such-bucket/staging: bucket no-such-bucket" in str(error)
    assert not aws.calls["ListDatastores"] and not aws.calls["GetDatastore"]
    assert not (tmp_path / "reports").exists()
