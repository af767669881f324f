"""A real Prefect server and `dicom-import serve` as subprocesses on loopback,
for the tests that go through the Prefect API and the UI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

# A server that dies fails the wait at once (its exit is seen); this bound
# only catches a hang. Prefect's start (imports, database migrations) takes
# 15-20 s on a quiet 2-core machine and passed 90 s on a busy one.
SERVER_START_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quiet_env(home: Path) -> dict[str, str]:
    """An offline Prefect: no telemetry, and state under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


@dataclass(frozen=True)
class PrefectServer:
    url: str  # http://127.0.0.1:PORT

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def wait_until(check: object, what: str, timeout: float, process: subprocess.Popen) -> None:
    """Poll ``check`` (a callable returning truthy) until it succeeds; fail with
    the process's output if the process died or the deadline passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what}: process exited with {process.returncode}")
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what}: not ready within {timeout:.0f} s")


@contextmanager
def prefect_server(home: Path, log: Path) -> Iterator[PrefectServer]:
    port = free_port()
    env = quiet_env(home)
    # The UI learns the API address from these, not from --port.
    env.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{url}/api/health", timeout=2).status_code == 200,
                       f"prefect server (log: {log})", SERVER_START_TIMEOUT, process)
            yield PrefectServer(url)
        finally:
            _stop(process)


@contextmanager
def dicom_import_serve(
    server: PrefectServer, home: Path, workdir: Path, extra_env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen]:
    env = quiet_env(home)
    env.update(PREFECT_API_URL=server.api_url, **extra_env)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dicom-import")), "serve"],
            env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
