"""Shared bench plumbing: a local service in its own process (so client load
and server work do not share one GIL), clients, and table printing."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config

CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
ROLE = "arn:aws:iam::123456789012:role/BenchImportRole"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_service(*flags: str) -> Iterator[str]:
    """``dicom-import local`` in a subprocess; yields its endpoint."""
    port = free_port()
    command = [sys.executable, "-m", "flows.cli", "local", "--port", str(port), *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/_emulator/health", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the local service did not start") from None
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


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
    datastore_id = mi.create_datastore(datastoreName=name)["datastoreId"]
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
