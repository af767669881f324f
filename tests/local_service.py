"""The local service for tests, reached through the standard AWS variables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def empty_s3() -> None:
    """No bucket left from an earlier test. moto keeps S3 in module-level
    state that every local service in this process shares: a test reusing a
    bucket name would see the objects an earlier test left there, and which
    earlier tests share its worker process changes from run to run."""
    from moto.s3.models import s3_backends

    for account in s3_backends.values():
        account.reset()


@contextmanager
def serve_locally(monkeypatch: pytest.MonkeyPatch, **config: Any) -> Iterator[Any]:
    """The local service, with a test's own ServiceConfig fields, and the AWS
    variables pointing at it (see the ``local_aws`` fixture)."""
    from emulator.config import ServiceConfig
    from emulator.edge.server import LocalService

    # No stop grace: a test is over when the service stops, and a job it left
    # running would hold the teardown for the default 3 s.
    empty_s3()
    settings = ServiceConfig(**{"datastore_transition_seconds": 0.05, "stop_grace_seconds": 0,
                                **config})
    with LocalService(config=settings) as svc:
        for name, value in svc.env().items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_MEDICAL_IMAGING", "AWS_PROFILE",
                     "DICOM_IMPORT_LEDGER_URL"):
            monkeypatch.delenv(name, raising=False)
        yield svc


@contextmanager
def local_service_process(log: Path, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``dicom-import local`` in a process of its own (whose memory a test
    can read, or which listens beyond loopback), once it serves: the
    process and what it printed (endpoint, admin token). Its log goes to
    ``log``: a pipe nobody read would fill and stop the service. Stopped
    with Ctrl-C at the end."""
    repo = Path(__file__).resolve().parents[1]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())",
             "local", *options],
            cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
        try:
            assert process.stdout is not None
            printed = ""
            while "Ctrl-C" not in printed:
                line = process.stdout.readline()
                assert line, log.read_text()
                printed += line
            yield process, printed
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)


def endpoint_printed(printed: str) -> str:
    found = re.search(r"AWS_ENDPOINT_URL=(\S+)", printed)
    assert found is not None, printed
    return found[1]
