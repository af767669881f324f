"""`--help` and a mistyped option answer without importing what only a run
needs: Prefect alone takes seconds to import, which an operator would wait
through before every usage line. Checked by what a fresh interpreter has
imported, not by a clock (timings on a shared machine prove nothing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What a run needs and a parser does not: each takes from a second to several.
RUN_ONLY = ("prefect", "pandas", "moto", "pyarrow", "sqlalchemy", "pydicom")

_PROBE = """
import contextlib, io, json, sys
from cli.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit as end:
        code = end.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _imported_by(*argv: str) -> tuple[int, set[str]]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True,
                          text=True, check=True, timeout=120)
    answer = json.loads(done.stdout)
    return answer["code"], {name.split(".")[0] for name in answer["modules"]}


@pytest.mark.parametrize("argv", [
    ("--help",),
    ("local", "--help"),
    ("ingest", "--help"),
    ("retry", "--help"),
    ("reconcile", "--help"),
    ("migrate", "--help"),
    ("verify", "--help"),
    ("report", "--help"),
    ("demo", "--help"),
    ("serve", "--help"),
    ("view", "--help"),
    ("ingest", "--no-such-option", "x"),
])
def test_usage_answers_without_importing_a_run(argv: tuple[str, ...]) -> None:
    code, modules = _imported_by(*argv)
    assert code in (0, 2)
    assert not modules & set(RUN_ONLY), f"{' '.join(argv)} imported {modules & set(RUN_ONLY)}"
