"""The AWS CLI, unmodified, against the local service: the README's commands,
read from the README and run as a reader would paste them (only the port
changes), so the two cannot drift apart. The CLI lives in its own venv
(``make install`` builds it) because it pins its own botocore."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from emulator.edge.server import LocalService
from tests.emulator.conftest import make_clients

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / ".awscli" / "bin" / "aws"
README_PORT = ":4566"
# What tells the README's two blocks apart from its other sh blocks.
EXPORTS = "AWS_DISABLE_HOST_PREFIX_INJECTION"
COMMANDS = "create-datastore"


def readme_block(containing: str) -> str:
    """The one ``sh`` block of the README that holds ``containing``."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    [block] = [block for block in blocks if containing in block]
    return block


def run_readme_commands(service: LocalService, workdir: Path) -> dict[str, str]:
    """The export block and the AWS CLI block, in one shell started in a folder
    that looks like the repository root; the variables they set, after."""
    for venv in (".venv", ".awscli"):
        (workdir / venv).symlink_to(REPO / venv)
    script = "\n".join([
        "set -e",
        readme_block(EXPORTS).replace(README_PORT, f":{service.port}"),
        readme_block(COMMANDS),
        'echo "DS=$DS JOB=$JOB IMAGE_SET=$IMAGE_SET"',
    ])
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin", "HOME": str(workdir)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(item.split("=", 1) for item in done.stdout.splitlines()[-1].split())


def test_readme_commands(service: LocalService, tmp_path: Path) -> None:
    if not AWS.exists():
        pytest.fail(f"{AWS} is missing: run `make install` to build the AWS CLI venv")
    assert f"AWS_ENDPOINT_URL=http://127.0.0.1{README_PORT}" in readme_block(EXPORTS)

    ids = run_readme_commands(service, tmp_path)

    mi: Any = make_clients(service)[0]
    job = mi.get_dicom_import_job(datastoreId=ids["DS"], jobId=ids["JOB"])["jobProperties"]
    assert job["jobStatus"] == "COMPLETED"
    assert job["outputS3Uri"].endswith(f"{ids['DS']}-DicomImport-{ids['JOB']}/")
    image_set = mi.get_image_set(datastoreId=ids["DS"], imageSetId=ids["IMAGE_SET"])
    assert image_set["imageSetState"] == "ACTIVE"
    doc = json.loads(gzip.decompress((tmp_path / "meta.json.gz").read_bytes()))
    assert doc["ImageSetID"] == ids["IMAGE_SET"]
    assert doc["Patient"]["DICOM"]["PatientID"]
