"""make test's distribution of the suite over workers does what the suite
counts on: tests of one xdist_group run on one worker, so a fixture they share
is set up once. pytest-xdist's loadgroup stopped grouping, silently, with
pytest 9.2 (pytest-xdist#1386): a shared Prefect server was then started once
per test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

GROUPED = """
import os

import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with open(os.environ["SETUPS"], "a") as setups:
        setups.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("n", range(6))
def test_grouped(shared, n):
    pass
"""

UNGROUPED = """
import pytest


@pytest.mark.parametrize("n", range(12))
def test_alone(n):
    pass
"""


def test_a_group_runs_on_one_worker_with_its_fixture_set_up_once(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(textwrap.dedent(GROUPED))
    (tmp_path / "test_alone.py").write_text(textwrap.dedent(UNGROUPED))
    setups = tmp_path / "setups"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "--dist", "loadgroup", "-p",
         "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "SETUPS": str(setups)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # One line per setup, naming its worker.
    assert len(setups.read_text().split()) == 1, setups.read_text()
