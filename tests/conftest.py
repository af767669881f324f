"""Session-wide test setup: an isolated, offline Prefect and an S3 endpoint.

The environment is set at import time, before any test module imports
prefect: Prefect reads PREFECT_HOME and the telemetry switches once, and a
task cache under the real home would outlive the test run.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from cli import prefect_api
from tests.local_service import serve_locally

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dicom-import-prefect-")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# Prefect's temporary server took 150 s to start with two suites and other
# work on two cores: the session gives it longer than the command does. CLI
# runs started by tests inherit it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
prefect_api.set_defaults()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heavy tests first, the heaviest first, then slow ones, then the rest,
    otherwise in collection order: make test hands tests to its workers in this
    order (--dist loadgroup), and a test of minutes handed out last would keep
    the whole suite waiting on it alone."""
    def order(item: pytest.Item) -> tuple[int, float]:
        heavy = item.get_closest_marker("heavy")
        if heavy is not None:
            return 0, -float(heavy.kwargs["minutes"])
        return (1 if item.get_closest_marker("slow") else 2), 0.0

    items.sort(key=order)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API for flow tests; ~10 s to start (minutes on a busy
    machine), so once per session."""
    from prefect.testing.utilities import prefect_test_harness

    # None: the startup timeout set above, not the harness's own 30 s.
    with prefect_test_harness(server_startup_timeout=None):
        yield


@pytest.fixture(scope="session")
def moto_s3_endpoint() -> Iterator[str]:
    """moto's S3 over HTTP: s3fs (aiobotocore) bypasses the in-process mock,
    and validation worker processes could not see it anyway."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto endpoint, with the AWS environment pointing at it."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1"
    ).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def local_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The local HealthImaging + S3 service, reached the way the product reaches
    AWS: through the standard variables, with nothing else steering clients."""
    with serve_locally(monkeypatch) as svc:
        yield svc
