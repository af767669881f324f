"""The local service for tests, reached through the standard AWS variables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
