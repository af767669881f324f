"""Where DICOMweb requests go: HealthImaging's own DICOMweb host on AWS,
which no SDK knows, or the endpoint the standard variables name."""

from __future__ import annotations

import pytest

from config.clients import dicomweb_endpoint


def test_on_aws_the_dicomweb_host_of_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_MEDICAL_IMAGING", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert dicomweb_endpoint() == "https://dicom-medical-imaging.eu-west-1.amazonaws.com"


def test_the_configured_endpoint_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566/")
    monkeypatch.delenv("AWS_ENDPOINT_URL_MEDICAL_IMAGING", raising=False)
    assert dicomweb_endpoint() == "http://127.0.0.1:4566"
    monkeypatch.setenv("AWS_ENDPOINT_URL_MEDICAL_IMAGING", "http://127.0.0.1:9000")
    assert dicomweb_endpoint() == "http://127.0.0.1:9000"
