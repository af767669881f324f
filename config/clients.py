"""boto3 and s3fs client factories.

Endpoints come from the standard AWS variables. When the HealthImaging endpoint
is not on ``amazonaws.com`` (the local service, a proxy), host-prefix injection
is turned off: otherwise botocore prepends ``runtime-`` to the host of the
eight data-plane operations and the request goes nowhere.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    import s3fs


# The AWS SDKs' default continueHeaderThresholdBytes (Kotlin, Go).
_EXPECT_CONTINUE_FROM_BYTES = 2 << 20


def _endpoint_for(service_env: str) -> str | None:
    return os.environ.get(service_env) or os.environ.get("AWS_ENDPOINT_URL")


def _is_local(endpoint: str | None) -> bool:
    if not endpoint:
        return False
    host = urlparse(endpoint).hostname or ""
    return not host.endswith("amazonaws.com")


def region() -> str:
    return (
        os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or boto3.session.Session().region_name
        or "us-east-1"
    )


def medical_imaging_client(max_attempts: int = 5, retry_mode: str = "standard") -> Any:
    """A ``medical-imaging`` client. botocore's own retries are the inner, fast
    layer; the flow's backoff around 402/429 is the outer one.

    ``max_attempts`` counts the first attempt (botocore's ``total_max_attempts``;
    its ``max_attempts`` key would count retries only), so 1 means no retry.
    """
    endpoint = _endpoint_for("AWS_ENDPOINT_URL_MEDICAL_IMAGING")
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": retry_mode},
        inject_host_prefix=not _is_local(endpoint),
        max_pool_connections=50,
    )
    return boto3.client(
        "medical-imaging", endpoint_url=endpoint, region_name=region(), config=config
    )


def dicomweb_endpoint() -> str:
    """Where HealthImaging answers DICOMweb (STOW-RS, WADO-RS, QIDO-RS): its
    own host on AWS, which no SDK knows (the operations are not in botocore's
    model); the configured endpoint otherwise (the local service answers
    DICOMweb on its one port)."""
    endpoint = _endpoint_for("AWS_ENDPOINT_URL_MEDICAL_IMAGING")
    if endpoint:
        return endpoint.rstrip("/")
    return f"https://dicom-medical-imaging.{region()}.amazonaws.com"


def s3_client(max_attempts: int = 5) -> Any:
    endpoint = _endpoint_for("AWS_ENDPOINT_URL_S3")
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=50,
    )
    client = boto3.client("s3", endpoint_url=endpoint, region_name=region(), config=config)
    client.meta.events.register("before-send.s3", _continue_only_for_large_bodies)
    return client


def _continue_only_for_large_bodies(request: Any, **_: Any) -> None:
    """botocore asks S3 for "100 Continue" before every PUT body: a round trip
    per file, which for a DICOM slice costs more than sending it. Like the AWS
    SDKs for Kotlin and Go (continueHeaderThresholdBytes), ask only from 2 MB,
    where being refused before sending saves something. The header is not
    signed, so it can go after signing."""
    if "Expect" not in request.headers:
        return
    length = request.headers.get("Content-Length")
    if length is not None and int(length) < _EXPECT_CONTINUE_FROM_BYTES:
        del request.headers["Expect"]


def s3_filesystem(**kwargs: Any) -> s3fs.S3FileSystem:
    """An s3fs filesystem on the same endpoint boto3 would use. A fresh instance
    (no fsspec instance cache) so that endpoint changes in tests are honoured."""
    import s3fs

    endpoint = _endpoint_for("AWS_ENDPOINT_URL_S3")
    client_kwargs: dict[str, Any] = {"region_name": region()}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True, **kwargs)
