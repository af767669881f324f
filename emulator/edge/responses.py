"""The wire format: turn a rest-json request into backend arguments and a
backend result into the HTTP response botocore expects.

Both directions are driven by the botocore shapes (locations, wire names,
payload members, blobs, timestamps), so every operation is handled by the same
few functions; the backend sees plain Python values named as in the model and
returns them the same way (timestamps as epoch-second floats).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from botocore.model import OperationModel, Shape
from werkzeug.wrappers import Request, Response

from emulator.edge.quoted_values import quoted
from emulator.edge.request_bodies import parse_json, read_body
from emulator.edge.urls import match
from emulator.edge.validation import validate
from emulator.state.exceptions import (
    HealthImagingError,
    InternalServerException,
    ValidationException,
)

log = logging.getLogger(__name__)


def snake_case(name: str) -> str:
    """``StartDICOMImportJob`` -> ``start_dicom_import_job`` (moto's naming)."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


def _wire_name(name: str, shape: Shape) -> str:
    wire: str = shape.serialization.get("name", name)
    return wire


def _from_query(shape: Shape, values: list[str], field: str) -> Any:
    if shape.type_name == "list":
        return list(values)
    raw = values[-1]
    if shape.type_name in ("integer", "long"):
        try:
            return int(raw)
        except ValueError:
            raise ValidationException(
                f"Value '{quoted(raw)}' at '{field}' is not an integer"
            ) from None
    if shape.type_name == "boolean":
        if raw.lower() not in ("true", "false"):
            raise ValidationException(f"Value '{quoted(raw)}' at '{field}' is not a boolean")
        return raw.lower() == "true"
    return raw


def _from_json(shape: Shape, value: Any, field: str) -> Any:
    """JSON body value -> Python value; blobs arrive base64-encoded."""
    if value is None:
        return None
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        out = {}
        for name, member in shape.members.items():
            wire = _wire_name(name, member)
            if wire in value:
                out[name] = _from_json(member, value[wire], f"{field}.{name}")
        out.update(
            {
                k: v
                for k, v in value.items()
                if k not in out and k not in {_wire_name(n, m) for n, m in shape.members.items()}
            }
        )
        return out
    if kind == "list" and isinstance(value, list):
        return [_from_json(shape.member, v, field) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _from_json(shape.value, v, field) for k, v in value.items()}
    if kind == "blob" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ValidationException(f"Value at '{field}' is not valid base64") from None
    return value


def parse_request(op: OperationModel, request: Request, uri: dict[str, str]) -> dict[str, Any]:
    shape = op.input_shape
    if shape is None:
        return {}
    query = parse_qs(request.query_string.decode(), keep_blank_values=True)
    body: Any = {}
    raw = read_body(request)
    if raw:
        body = parse_json(raw)
    params: dict[str, Any] = {}
    payload = shape.serialization.get("payload")
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = _wire_name(name, member)
        if location == "uri":
            if wire in uri:
                params[name] = uri[wire]
        elif location == "querystring":
            if wire in query:
                params[name] = _from_query(member, query[wire], name)
        elif location == "header":
            if request.headers.get(wire) is not None:
                params[name] = request.headers[wire]
        elif name == payload:
            if raw:
                params[name] = _from_json(member, body, name)
        elif isinstance(body, dict) and wire in body:
            params[name] = _from_json(member, body[wire], name)
    if not payload and isinstance(body, dict):
        known = {_wire_name(n, m) for n, m in shape.members.items()}
        unknown = set(body) - known
        if unknown:
            raise ValidationException(
                f"Unknown field(s) in request body: {quoted(sorted(unknown))}"
            )
    validate(shape, params, "")
    return params


def _to_json(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if value is None:
        return None
    if kind == "structure":
        out = {}
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                out[_wire_name(name, member)] = _to_json(member, value[name])
        return out
    if kind == "list":
        return [_to_json(shape.member, v) for v in value]
    if kind == "map":
        return {k: _to_json(shape.value, v) for k, v in value.items()}
    if kind == "blob":
        return base64.b64encode(value).decode()
    if kind == "timestamp":
        return round(float(value), 3)
    return value


def render_result(op: OperationModel, result: dict[str, Any], request_id: str) -> Response:
    shape = op.output_shape
    headers = {"x-amzn-RequestId": request_id}
    body: bytes | Any = b""
    payload = shape.serialization.get("payload") if shape else None
    if shape is not None:
        for name, member in shape.members.items():
            if member.serialization.get("location") == "header" and result.get(name) is not None:
                headers[member.serialization["name"]] = str(result[name])
        if payload:
            body = result.get(payload) or b""
        else:
            body = json.dumps(_to_json(shape, result)).encode()
            headers.setdefault("Content-Type", "application/json")
    status = op.http.get("responseCode", 200)
    return Response(body, status=status, headers=headers)


def render_error(error: HealthImagingError, request_id: str) -> Response:
    return Response(
        json.dumps({"message": error.message}),
        status=error.status,
        headers={
            "x-amzn-ErrorType": error.code,
            "x-amzn-RequestId": request_id,
            "Content-Type": "application/json",
        },
    )


class HealthImagingApp:
    """WSGI app: route, parse and validate, check injected faults, call the
    backend method named after the operation, render."""

    def __init__(self, backend: Any, before_call: Callable[[str], None]) -> None:
        self.backend = backend
        self.before_call = before_call

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        request_id = str(uuid.uuid4())
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.path
        raw_path = raw_path.split("?", 1)[0]
        found = match(request.method, raw_path)
        if found is None:
            response = render_error(
                _UnknownOperation(f"No HealthImaging operation at {request.method} {raw_path}"),
                request_id,
            )
            return response(environ, start_response)
        op, uri = found
        try:
            self.before_call(op.name)
            params = parse_request(op, request, uri)
            result = getattr(self.backend, snake_case(op.name))(**params)
            response = render_result(op, result or {}, request_id)
        except HealthImagingError as error:
            response = render_error(error, request_id)
        except Exception:
            log.exception("unhandled error in %s", op.name)
            response = render_error(
                InternalServerException("The local service failed; see its log."), request_id
            )
        return response(environ, start_response)


class _UnknownOperation(HealthImagingError):
    status = 404

    @property
    def code(self) -> str:
        return "UnknownOperationException"
