"""Where DICOMweb reads go: HealthImaging's own DICOMweb host on AWS, which
is not the control plane's, and the endpoint given for a local service."""

from __future__ import annotations

import pytest

from config.clients import dicomweb_endpoint


@pytest.fixture(autouse=True)
def _no_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_MEDICAL_IMAGING", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-2")


def test_on_aws_the_dicomweb_host_of_the_region() -> None:
    assert dicomweb_endpoint() == "https://dicom-medical-imaging.eu-west-2.amazonaws.com"


def test_an_aws_endpoint_for_the_native_api_is_not_the_dicomweb_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_MEDICAL_IMAGING",
                       "https://medical-imaging.eu-west-2.amazonaws.com")
    assert dicomweb_endpoint() == "https://dicom-medical-imaging.eu-west-2.amazonaws.com"


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_MEDICAL_IMAGING"])
def test_a_local_endpoint_serves_dicomweb_itself(monkeypatch: pytest.MonkeyPatch,
                                                 variable: str) -> None:
    monkeypatch.setenv(variable, "http://127.0.0.1:4566/")
    assert dicomweb_endpoint() == "http://127.0.0.1:4566"
