"""The deployments as an operator uses them: a real Prefect server on loopback,
`dicom-import serve`, runs started through the API and from the UI, flow runs
in subprocesses importing into the local HealthImaging service."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import boto3
import httpx
import pandas as pd
import pytest
from botocore.config import Config

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import series_spec, write_ct_series
from tests.operations.served import (
    PrefectServer,
    dicom_import_serve,
    prefect_server,
    quiet_env,
    wait_until,
)

# One worker for the module: its tests share one Prefect server and `dicom-import serve`.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("served")]

BUCKET = "served"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stack:
    server: PrefectServer
    service: LocalService
    root: Path


def _deployments(server: PrefectServer) -> dict[str, dict[str, Any]]:
    # Deployments first: a flow is registered before its deployments.
    found = httpx.post(f"{server.api_url}/deployments/filter", json={}, timeout=10).json()
    flows = {f["id"]: f["name"] for f in
             httpx.post(f"{server.api_url}/flows/filter", json={}, timeout=10).json()}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in found}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("served")
    with LocalService(config=ServiceConfig(datastore_transition_seconds=0.05)) as service:
        boto3.client("s3", endpoint_url=service.endpoint, region_name="us-east-1",
                     aws_access_key_id="local", aws_secret_access_key="local",
                     ).create_bucket(Bucket=BUCKET)
        settings = {
            "DICOM_IMPORT_SCHEDULE_SOURCE": str(root / "landing"),
            "DICOM_IMPORT_DATASTORE": "served-store",
            "DICOM_IMPORT_STAGING_PREFIX": f"s3://{BUCKET}/staging",
            "DICOM_IMPORT_OUTPUT_PREFIX": f"s3://{BUCKET}/output",
            "DICOM_IMPORT_REPORT_LOCATION": str(root / "reports"),
            "DICOM_IMPORT_POLL_INTERVAL_SECONDS": "0.2",
            "DICOM_IMPORT_VALIDATION_WORKERS": "1",
        }
        with (
            prefect_server(root / "server-home", root / "server.log") as server,
            dicom_import_serve(server, root / "serve-home", root,
                               {**service.env(), **settings}, root / "serve.log") as serve,
        ):
            wait_until(lambda: len(_deployments(server)) == 4,
                       f"dicom-import serve (log: {root / 'serve.log'})", 60, serve)
            yield Stack(server, service, root)


def _custom_params(source: Path, reports: Path) -> dict[str, Any]:
    """Differs from the served defaults in the source, the data store, the
    report location and the batch size, so the run shows they were used."""
    return {"params": {
        "source": str(source),
        "datastore": "custom-store",
        "create_datastore": True,
        "staging_prefix": f"s3://{BUCKET}/staging",
        "output_prefix": f"s3://{BUCKET}/output",
        "report_location": str(reports),
        "max_files_per_job": 2,
        "poll_interval_seconds": 0.2,
        "validation_workers": 1,
    }}


def _medical_imaging(stack: Stack) -> Any:
    return boto3.client("medical-imaging", endpoint_url=stack.service.endpoint,
                        region_name="us-east-1", aws_access_key_id="local",
                        aws_secret_access_key="local",
                        config=Config(inject_host_prefix=False))


def _only_parquet(folder: Path) -> pd.DataFrame:
    """The one run's per-file report: its parquet dataset, files/part-*.parquet."""
    (found,) = {part.parent for part in folder.rglob("files/part-*.parquet")}
    return pd.read_parquet(found)


def test_served_deployments(stack: Stack) -> None:
    deployments = _deployments(stack.server)
    scheduled = deployments["dicom-ingest/scheduled"]
    assert [s["schedule"]["cron"] for s in scheduled["schedules"]] == ["0 2 * * *"]
    assert scheduled["global_concurrency_limit"]["limit"] == 1
    assert scheduled["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert scheduled["parameters"]["params"]["reimport"] is False
    assert scheduled["parameters"]["params"]["create_datastore"] is True
    manual = deployments["dicom-ingest/manual"]
    assert manual["schedules"] == [] and manual["global_concurrency_limit"] is None
    properties = manual["parameter_openapi_schema"]["definitions"]["IngestParameters"][
        "properties"]
    assert all(field.get("description") for field in properties.values())
    assert manual["parameters"]["params"]["datastore"] == "served-store"
    assert manual["parameters"]["params"]["create_datastore"] is False
    assert "dicom-retry-failed/retry" in deployments
    migrate = deployments["dicom-migrate/migrate"]
    fields = migrate["parameter_openapi_schema"]["definitions"]["MigrateParameters"]["properties"]
    assert all(field.get("description") for field in fields.values())
    assert migrate["parameters"]["params"]["datastore"] == "served-store"


def test_manual_deployment_through_the_api(stack: Stack, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    source = tmp_path / "incoming" / "ct"
    write_ct_series(source, 3, series_spec("served-api"), 16, 16)

    with temporary_settings({PREFECT_API_URL: stack.server.api_url}):
        # Called from sync code, run_deployment returns the flow run itself.
        run = cast(FlowRun, run_deployment("dicom-ingest/manual",
                                           parameters=_custom_params(source, tmp_path / "reports"),
                                           timeout=120))
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run.id)
            artifacts = client.read_artifacts()

    assert run.state is not None and run.state.is_completed(), run.state
    assert run.name.startswith("incoming/ct ")
    datastores = {t for t in run.tags if t.startswith("datastore:")}
    assert "datastore:custom-store" in datastores and len(datastores) == 2
    report = _only_parquet(tmp_path / "reports")
    assert report["status"].eq("imported").all() and len(report) == 3
    assert report["job_id"].nunique() == 2  # max_files_per_job=2 was used
    mine = {a.key for a in artifacts if a.flow_run_id == run.id}
    assert mine == {"dicom-ingest-summary", "dicom-ingest-jobs", "dicom-ingest-conflicts",
                    "dicom-ingest-image-sets"}


def test_a_mistyped_datastore_fails_the_run_and_creates_none(
    stack: Stack, tmp_path: Path
) -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _medical_imaging(stack).create_datastore(datastoreName="served-typo-target")
    (tmp_path / "incoming").mkdir()
    params = _custom_params(tmp_path / "incoming", tmp_path / "reports")
    params["params"].update(datastore="served-typo-targt", create_datastore=False)

    with temporary_settings({PREFECT_API_URL: stack.server.api_url}):
        run = cast(FlowRun, run_deployment("dicom-ingest/manual", parameters=params,
                                           timeout=120))

    assert run.state is not None and run.state.is_failed(), run.state
    assert ("--datastore served-typo-targt: no data store has this name; the closest: "
            "served-typo-target. To create it, give --create-datastore.") in str(
                run.state.message)
    names = {d["datastoreName"] for d in
             _medical_imaging(stack).list_datastores()["datastoreSummaries"]}
    assert "served-typo-targt" not in names
    assert not (tmp_path / "reports").exists()


def test_prefect_yaml_deploys_to_a_work_pool(stack: Stack) -> None:
    env = {**quiet_env(stack.root / "deploy-home"), "PREFECT_API_URL": stack.server.api_url,
           "DICOM_IMPORT_SCHEDULE_SOURCE": "s3://landing/ct/", "PWD": str(REPO)}
    prefect = [sys.executable, "-m", "prefect"]
    for command in (
        ["work-pool", "create", "dicom-import", "--type", "process"],
        ["deploy", "--all", "--prefect-file", "deployments/prefect.yaml", "--no-prompt"],
    ):
        done = subprocess.run([*prefect, *command], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    pooled = {name: d for name, d in _deployments(stack.server).items()
              if d["work_pool_name"] == "dicom-import"}
    assert set(pooled) == {"dicom-ingest/scheduled", "dicom-ingest/manual",
                           "dicom-retry-failed/retry", "dicom-migrate/migrate"}
    scheduled = pooled["dicom-ingest/scheduled"]
    assert scheduled["parameters"]["params"]["source"] == "s3://landing/ct/"
    assert scheduled["parameters"]["params"]["create_datastore"] is True
    assert scheduled["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert pooled["dicom-ingest/manual"]["schedules"] == []


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.browser
def test_custom_run_from_the_ui(stack: Stack, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing: `apt-get install chromium chromium-driver` "
                    "enables this test")
    sync_api = pytest.importorskip("playwright.sync_api")
    source = tmp_path / "from-ui" / "ct"
    write_ct_series(source, 3, series_spec("served-ui"), 16, 16)
    manual = _deployments(stack.server)["dicom-ingest/manual"]
    run_name = f"ui-run-{uuid.uuid4().hex[:8]}"
    # The form's data store exists: a name that matches none would be refused.
    _medical_imaging(stack).create_datastore(datastoreName="ui-store")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # The V1 UI's route; the server also mounts the V2 bundle elsewhere.
            page.goto(f"{stack.server.url}/deployments/deployment/{manual['id']}/run")
            page.locator(".p-label", has=page.get_by_text("Run Name", exact=True)).locator(
                "input").fill(run_name)
            _form_field(page, "Source").fill(str(source))
            _form_field(page, "Datastore (Optional)").fill("ui-store")
            _form_field(page, "Report Location (Optional)").fill(str(tmp_path / "reports"))
            _form_field(page, "Max Files Per Job (Optional)").fill("2")
            page.get_by_role("button", name="Submit").click()

            # The deployment's runs list shows the new run under the name typed
            # in the form, or under the one the flow gives it (source and start
            # time) if it already started.
            # Generous waits: the UI lists a new run slowly on a loaded machine.
            page.wait_for_url(re.compile(r".*tab=Runs"), timeout=120_000)
            renamed = re.compile(rf"^({run_name}|from-ui/ct \d{{4}}-\d\d-\d\d)")
            page.locator('a[href*="/runs/flow-run/"]', has_text=renamed).first.click(
                timeout=120_000)
            page.wait_for_url(re.compile(r".*/runs/flow-run/.*"), timeout=120_000)
            header = page.locator(".p-layout-default__header")
            sync_api.expect(header.get_by_text("Completed", exact=True)).to_be_visible(
                timeout=90_000)
            sync_api.expect(header.get_by_text(re.compile(r"^from-ui/ct \d{4}-\d\d-\d\d"))
                            ).to_be_visible()
            sync_api.expect(header.get_by_text("datastore:ui-store", exact=True)).to_be_visible()

            page.get_by_text("Artifacts", exact=True).click()
            page.get_by_text("dicom-ingest-summary", exact=True).click()
            sync_api.expect(page.get_by_role("heading", name="DICOM ingest")).to_be_visible()
            sync_api.expect(page.get_by_role("cell", name="imported", exact=True)).to_be_visible()
        finally:
            browser.close()

    report = _only_parquet(tmp_path / "reports")
    assert report["status"].eq("imported").all() and report["job_id"].nunique() == 2


def _form_field(page: Any, title: str) -> Any:
    """The input of one property of the run form, found by its visible title."""
    label = page.locator(".schema-form-property__label",
                         has_text=re.compile(f"^{re.escape(title)}$"))
    # Properties nest (params > source): the last match is the innermost.
    return page.locator(".p-label", has=label).last.locator("textarea, input").first
