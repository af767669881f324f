"""Requests refused at the door, in the shape of the service that was asked:
S3 answers an XML ``<Error>``, medical-imaging JSON with ``x-amzn-ErrorType``,
so that boto3 and the AWS CLI raise the error AWS would and a browser never
sees an HTML page."""

from __future__ import annotations

import uuid
from typing import Any
from xml.sax.saxutils import escape

from werkzeug.wrappers import Response

from emulator.edge.auth import Signature
from emulator.edge.responses import render_error
from emulator.edge.urls import is_dicomweb, match
from emulator.state.exceptions import (
    AccessDeniedException,
    HealthImagingError,
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)
from emulator.state.service_model import SERVICE_NAME

# Why a request was refused -> (S3 code, HTTP status) and the medical-imaging error.
_S3: dict[str, tuple[str, int]] = {
    "missing": ("AccessDenied", 403),
    "malformed": ("AuthorizationHeaderMalformed", 400),
    "unknown_key": ("InvalidAccessKeyId", 403),
    "signature": ("SignatureDoesNotMatch", 403),
    "expired": ("AccessDenied", 403),
    "payload_hash": ("XAmzContentSHA256Mismatch", 400),
    "host": ("AccessDenied", 403),
    "admin": ("AccessDenied", 403),
}
_HEALTH_IMAGING: dict[str, type[HealthImagingError]] = {
    "missing": MissingAuthenticationTokenException,
    "malformed": IncompleteSignatureException,
    "unknown_key": UnrecognizedClientException,
    "signature": InvalidSignatureException,
    "expired": InvalidSignatureException,
    "payload_hash": InvalidSignatureException,
    "host": AccessDeniedException,
    "admin": AccessDeniedException,
}
_S3_MESSAGES = {
    "missing": "Access Denied",
    "unknown_key": "The AWS Access Key Id you provided does not exist in our records.",
}
_HEALTH_IMAGING_MESSAGES = {
    "missing": "Missing Authentication Token",
    "unknown_key": "The security token included in the request is invalid.",
}


def service_asked(environ: dict[str, Any], signature: Signature | None) -> str:
    """The signing name when the request has one; else medical-imaging when
    the path is one of its routes (DICOMweb included), S3 otherwise."""
    if signature is not None and signature.service:
        return signature.service
    raw = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    path = raw.split("?", 1)[0]
    if match(environ.get("REQUEST_METHOD", ""), path) or is_dicomweb(path):
        return SERVICE_NAME
    return "s3"


def refusal(service: str, reason: str, message: str) -> Response:
    request_id = str(uuid.uuid4())
    if service == SERVICE_NAME:
        text = _HEALTH_IMAGING_MESSAGES.get(reason, message)
        return render_error(_HEALTH_IMAGING[reason](text), request_id)
    code, status = _S3[reason]
    text = _S3_MESSAGES.get(reason, message)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(text)}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return Response(
        body, status=status, content_type="application/xml",
        headers={"x-amz-request-id": request_id},
    )
