"""Shared bench plumbing: a local service in its own process (so client load
and server work do not share one GIL), clients, and table printing."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
ROLE = "arn:aws:iam::123456789012:role/BenchImportRole"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def local_service(*flags: str) -> Iterator[str]:
    """``dicom-import local`` in a subprocess; yields its endpoint."""
    with local_service_process(*flags) as (endpoint, _):
        yield endpoint


@contextmanager
def local_service_process(*flags: str) -> Iterator[tuple[str, int]]:
    """``dicom-import local`` in a subprocess; yields its endpoint and process ID."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cli", "local", "--port", str(port), *flags]
    with _serving(command, f"{endpoint}/_emulator/health", "the local service", 300) as pid:
        yield endpoint, pid


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` in a subprocess with its state under ``home``;
    yields its API URL. Benches that time flow runs use one, as production
    does, rather than each process starting its own ephemeral API."""
    port = free_port()
    env = {**quiet_prefect_env(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_ENABLED": "false"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port)]
    api = f"http://127.0.0.1:{port}/api"
    with _serving(command, f"{api}/health", "the Prefect server", 300, env):
        yield api


@contextmanager
def _serving(
    command: list[str], health: str, what: str, timeout: float,
    env: dict[str, str] | None = None,
) -> Iterator[int]:
    """``command`` running until the block ends, once ``health`` answers;
    yields its process ID."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(health, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)
    try:
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def quiet_prefect_env(home: Path) -> dict[str, str]:
    """An offline Prefect (no telemetry) with its state under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def run_child(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a bench's child process; its last stdout line is a JSON result."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def service_env(endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


def clients(endpoint: str) -> tuple[Any, Any]:
    config = Config(
        inject_host_prefix=False,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=64,
    )
    mi = boto3.client(
        "medical-imaging",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=config,
        **CREDENTIALS,
    )
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **CREDENTIALS
    )
    return mi, s3


def active_datastore(mi: Any, name: str) -> str:
    datastore_id: str = mi.create_datastore(datastoreName=name)["datastoreId"]
    while (
        mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"]
        != "ACTIVE"
    ):
        time.sleep(0.05)
    return datastore_id


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)
