"""``dicom-import`` and the Prefect API it reports to: a temporary server that
starts slowly on a busy machine is waited for, and an API that cannot be reached
is one line and exit status 2, never a traceback.

Each test runs the command in a fresh process, as an operator does: Prefect
reads its settings once per process, and starts its temporary server from there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def dicom_import(
    tmp_path: Path, *args: str, server_start_delay: float = 0, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run the command with none of this session's Prefect or AWS settings; with
    ``server_start_delay``, Prefect's temporary server starts that much later
    (a sitecustomize that sleeps in the server process only)."""
    path = [str(REPO)]
    if server_start_delay:
        site = tmp_path / "slow-server"
        site.mkdir()
        (site / "sitecustomize.py").write_text(textwrap.dedent(f"""\
            import os, time
            if os.environ.get("PREFECT__SERVER_EPHEMERAL") == "1":
                time.sleep({server_start_delay})
            """))
        path.insert(0, str(site))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=os.pathsep.join(path),
               **variables)
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def ingest_empty_folder(tmp_path: Path) -> list[str]:
    """An ingest that needs no AWS (a dry run: the pre-flight checks no bucket
    and no credentials): the flow runs (so the API must answer) and stops at
    once on the empty source, exit status 2."""
    (tmp_path / "empty").mkdir()
    return ["ingest", str(tmp_path / "empty"), "--dry-run",
            "--report-location", str(tmp_path / "reports")]


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.startswith("dicom-import")]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.heavy(minutes=1)
def test_slow_temporary_server_is_waited_for(tmp_path: Path) -> None:
    # Prefect's own default gives its temporary server 20 s.
    done = dicom_import(tmp_path, *ingest_empty_folder(tmp_path), server_start_delay=30)
    [line] = error_lines(done)
    assert done.returncode == 2
    assert "empty" in line and str(tmp_path / "empty") in line
    # Prefect stops that server as the command exits, and says so in its own
    # log line, which stays off the console without --verbose.
    assert "Stopping temporary server" not in done.stderr, done.stderr


def test_api_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"
    done = dicom_import(tmp_path, *ingest_empty_folder(tmp_path), PREFECT_API_URL=url)
    assert done.returncode == 2
    [line] = error_lines(done)
    assert line.startswith("dicom-import ingest: cannot reach the Prefect API at " + url)


def test_temporary_server_that_does_not_start_in_time_is_one_line(tmp_path: Path) -> None:
    """The operator's own startup timeout wins over the command's default."""
    # Longer than the 1 s given, short of what the command itself would wait.
    done = dicom_import(tmp_path, *ingest_empty_folder(tmp_path), server_start_delay=5,
                        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    assert done.returncode == 2
    [line] = error_lines(done)
    assert line.startswith("dicom-import ingest: Prefect's temporary API server did not start "
                           "within 1 s")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in line
