"""The local service for tests, reached through the standard AWS variables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def serve_locally(monkeypatch: pytest.MonkeyPatch, **config: Any) -> Iterator[Any]:
    """The local service, with a test's own ServiceConfig fields, and the AWS
    variables pointing at it (see the ``local_aws`` fixture)."""
    from emulator.config import ServiceConfig
    from emulator.edge.server import LocalService

    # No stop grace: a test is over when the service stops, and a job it left
    # running would hold the teardown for the default 3 s.
    settings = ServiceConfig(**{"datastore_transition_seconds": 0.05, "stop_grace_seconds": 0,
                                **config})
    with LocalService(config=settings) as svc:
        for name, value in svc.env().items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_MEDICAL_IMAGING", "AWS_PROFILE",
                     "DICOM_IMPORT_LEDGER_URL"):
            monkeypatch.delenv(name, raising=False)
        yield svc
