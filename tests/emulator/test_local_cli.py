"""``dicom-import local`` as an operator starts it: every option explained, and
a port already taken said in one line."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import build_parser, main
from emulator.edge.server import LocalService


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def local_parser() -> argparse.ArgumentParser:
    [subcommands] = [
        action for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return subcommands.choices["local"]


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    options = [action for action in local_parser()._actions if action.option_strings]
    unexplained = [action.option_strings[-1] for action in options if not action.help]
    assert unexplained == []
    with pytest.raises(SystemExit):
        main(["local", "--help"])
    shown = capsys.readouterr().out
    assert all(action.option_strings[-1] in shown for action in options)


def test_port_in_use_is_one_line(busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["local", "--port", str(busy_port)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith(f"dicom-import local: port {busy_port} is in use")
    assert err.count("\n") == 1


def test_a_data_directory_in_use_is_one_line(
    tmp_path: Path, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second service on the first one's directory would undo its imports
    on restart; it is refused before it listens."""
    with LocalService(data_dir=tmp_path):
        # The busy port ends the command should the directory not be refused.
        code = main(["local", "--data-dir", str(tmp_path), "--port", str(busy_port)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == (f"dicom-import local: {tmp_path} is in use by another local service: "
                   "stop it, or give another --data-dir\n")
    # A port refused does not leave the directory held.
    assert main(["local", "--data-dir", str(tmp_path), "--port", str(busy_port)]) == 2
    with LocalService(data_dir=tmp_path):
        pass
