"""Session-wide test setup: an isolated, offline Prefect and an S3 endpoint.

The environment is set at import time, before any test module imports
prefect: Prefect reads PREFECT_HOME and the telemetry switches once, and a
task cache under the real home would outlive the test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cli import prefect_api
from config.settings import get_settings
from tests.local_service import serve_locally
from tests.operations.served import free_port

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dicom-import-prefect-")
# The default report location and ledger are in the user's data folder
# (config.settings): never the real user's. Each test gets its own below;
# this one covers what runs before a test's fixtures.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="dicom-import-data-")
os.environ.pop("DICOM_IMPORT_REPORT_LOCATION", None)
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


@pytest.fixture(autouse=True)
def user_data_folder(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A data folder of the test's own: runs that take the default report
    location share a ledger within a test, never across tests."""
    folder = tmp_path_factory.mktemp("data-home")
    monkeypatch.setenv("XDG_DATA_HOME", str(folder))
    get_settings.cache_clear()  # settings are read once per process
    yield folder
    get_settings.cache_clear()


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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL on loopback, from the machine's own binaries (one
    server for the session: tests that need an empty ledger create a database)."""
    initdb = shutil.which("initdb") or next(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                                            None)
    if initdb is None:
        pytest.skip("PostgreSQL binaries are missing (apt-get install postgresql)")
    bin_dir = Path(initdb).parent
    folder = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(folder / "log"), "-o", f"-p {port} -k {folder} -h 127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str) -> str:
    """The URL of a new, empty database on the server at ``server_url``."""
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return str(sa.engine.make_url(server_url).set(database=name))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database no ledger has touched yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return new_database(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_backend(
    request: pytest.FixtureRequest, local_aws: object, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The test's runs keep their ledger on each backend the product supports:
    SQLite beside the reports (the default), and PostgreSQL through
    DICOM_IMPORT_LEDGER_URL (the ledger machines share). After local_aws,
    which clears that variable."""
    if request.param == "postgresql":
        url = new_database(request.getfixturevalue("postgres_url"))
        monkeypatch.setenv("DICOM_IMPORT_LEDGER_URL", url)
    get_settings.cache_clear()  # settings are read once per process
    yield request.param
    get_settings.cache_clear()
