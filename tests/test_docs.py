"""The README and ``docs/`` work from a fresh clone: every link they make
points at a file in the repository, none outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_links_stay_in_the_repository(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO) and path.exists(), f"{target} in {page.name}"


SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
# The project's commands, and where `make install` puts each.
INSTALLED = {"dicom-import": ".venv/bin", "prefect": ".venv/bin", "dask": ".venv/bin",
             "python": ".venv/bin", "pytest": ".venv/bin", "aws": ".awscli/bin"}
# Where a new command starts within a line of shell.
COMMAND_STARTS = re.compile(r"\$\(|\|\||&&|[|;]")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


def programs(block: str) -> list[str]:
    """The program each command of a shell block runs, as typed: after any
    leading ``NAME=value`` and ``export``, ``while``, ``do``, ``!``."""
    found = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        for command in COMMAND_STARTS.split(line.split(" # ")[0]):
            words = command.split()
            while words and (words[0] in {"export", "while", "do", "if", "then", "!"}
                             or ASSIGNMENT.match(words[0])):
                words.pop(0)
            if words and not words[0].startswith("#"):
                found.append(words[0])
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_commands_use_what_make_install_installed(page: Path) -> None:
    """A command copied from the docs runs the project's own install, not
    whatever else the PATH has (or nothing)."""
    for block in SHELL_BLOCK.findall(page.read_text()):
        for program in programs(block):
            name = program.rsplit("/", 1)[-1]
            if name in INSTALLED:
                assert program == f"{INSTALLED[name]}/{name}", f"{program} in {page.name}"
