"""The admin route, ``/_emulator/...``: fault injection, the service's clock
and a health check; and the admin token, which moto's own admin API and
services pass through on too (emulator.edge.server).

Changing anything takes the token the service prints when it starts
(``Authorization: Bearer <token>``) and a JSON body: a page in the
developer's browser can send neither without a CORS preflight, which this
route never grants. The health check is open; it tells nothing.

Every value is checked against its type and bounds before anything changes:
a wrong one is a 400 naming the field, never a 500 or a service left broken
(``{"advanceSeconds": -1e12}`` once made every later clock reading fail).
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from werkzeug.wrappers import Request, Response

from emulator.config import ServiceConfig
from emulator.edge.request_bodies import parse_json
from emulator.faults import FaultInjector, FaultSettingError
from emulator.state.exceptions import ValidationException

ADMIN_PREFIX = "/_emulator"
# For a request whose Authorization header holds its signature (moto's IAM,
# STS, SQS ...), the admin token goes in this header.
ADMIN_TOKEN_HEADER = "x-emulator-admin-token"
# The admin bodies are a few settings; a larger one is not read.
MAX_ADMIN_BODY_BYTES = 64 * 1024
# How far the admin route may move the service's clock from the clock it
# started with, either way: far enough to age image sets through every
# storage tier, not so far that a date can no longer be written.
MAX_CLOCK_OFFSET = timedelta(days=100 * 366)


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json",
                    headers=headers)


def _bad(field: str, message: str, status: int = 400) -> Response:
    return _json({"message": message, "field": field}, status)


@dataclass(frozen=True)
class ShiftedClock:
    """A clock ``offset`` ahead of ``base``: one offset, however many moves,
    where stacking a closure per move would recurse past Python's limit."""

    base: Callable[[], datetime]
    offset: timedelta

    def __call__(self) -> datetime:
        return self.base() + self.offset


class AdminRoute:
    def __init__(self, faults: FaultInjector, token: str, config: ServiceConfig) -> None:
        self.faults = faults
        self.token = token
        self.config = config

    def __call__(self, request: Request) -> Response:
        """GET /_emulator/health answers when the service is up;
        GET/POST /_emulator/faults reads/changes fault injection;
        GET/POST /_emulator/clock reads/moves the service's clock
        (``{"advanceSeconds": N}``), e.g. to age image sets into a storage tier."""
        path = request.path.removeprefix(ADMIN_PREFIX)
        if path == "/health":
            return _json({"status": "ok"})
        if path not in ("/faults", "/clock"):
            return _json({"message": f"no admin route {path}"}, 404)
        if not self.token_given(request.environ):
            return self.needs_token()
        if request.method == "GET":
            return _json(self.faults.config.as_dict() if path == "/faults" else self._clock())
        if request.method != "POST":
            return _json({"message": f"{request.method} is not allowed here"}, 405,
                         Allow="GET, POST")
        body = self._body(request)
        if isinstance(body, Response):
            return body
        return self._change(body) if path == "/faults" else self._advance(body)

    def token_given(self, environ: dict[str, Any]) -> bool:
        """The admin token, as ``Authorization: Bearer <token>`` or, beside a
        signature, in ``ADMIN_TOKEN_HEADER``."""
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer":
            given = environ.get("HTTP_" + ADMIN_TOKEN_HEADER.upper().replace("-", "_"), "")
        return bool(given) and hmac.compare_digest(given.strip().encode(), self.token.encode())

    @staticmethod
    def needs_token() -> Response:
        return _json(
            {"message": "this route needs the admin token printed at start: "
             "Authorization: Bearer <token>"},
            401, **{"WWW-Authenticate": "Bearer"},
        )

    @staticmethod
    def _body(request: Request) -> dict[str, Any] | Response:
        if request.mimetype != "application/json":
            return _json({"message": "the body must be JSON (Content-Type: application/json)"},
                         415)
        declared = request.content_length
        if declared is not None and declared > MAX_ADMIN_BODY_BYTES:
            return _json({"message": f"the body is over {MAX_ADMIN_BODY_BYTES} bytes"}, 413)
        raw = bytearray()
        while piece := request.stream.read(MAX_ADMIN_BODY_BYTES + 1 - len(raw)):
            raw += piece
            if len(raw) > MAX_ADMIN_BODY_BYTES:
                return _json({"message": f"the body is over {MAX_ADMIN_BODY_BYTES} bytes"}, 413)
        try:
            body = parse_json(bytes(raw) or b"{}")
        except ValidationException as error:
            return _json({"message": error.message}, 400)
        if not isinstance(body, dict):
            return _json({"message": "the body must be a JSON object of settings"}, 400)
        return body

    def _change(self, changes: dict[str, Any]) -> Response:
        try:
            self.faults.config.update(changes)
        except FaultSettingError as error:
            return _bad(error.field, str(error))
        return _json(self.faults.config.as_dict())

    def _clock(self) -> dict[str, Any]:
        clock = self.config.clock
        offset = clock.offset if isinstance(clock, ShiftedClock) else timedelta(0)
        return {"now": clock().isoformat(), "offsetSeconds": offset.total_seconds()}

    def _advance(self, body: dict[str, Any]) -> Response:
        seconds = body.get("advanceSeconds")
        if set(body) != {"advanceSeconds"}:
            return _bad("advanceSeconds", 'the body must be {"advanceSeconds": <number>}')
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or (
            not math.isfinite(seconds)
        ):
            return _bad("advanceSeconds", f"advanceSeconds must be a number, got {seconds!r}")
        clock = self.config.clock
        base, offset = ((clock.base, clock.offset) if isinstance(clock, ShiftedClock)
                        else (clock, timedelta(0)))
        limit = MAX_CLOCK_OFFSET.total_seconds()
        total = offset.total_seconds() + seconds
        if abs(total) > limit:
            return _bad("advanceSeconds",
                        f"advanceSeconds: the clock may be moved at most {limit:.0f} s (100 years) "
                        f"either way in all; it is {offset.total_seconds():+.0f} s now, "
                        f"{seconds:+g} s more would make it {total:+.0f} s")
        moved = ShiftedClock(base, timedelta(seconds=total))
        try:
            moved()
        except (OverflowError, ValueError) as error:  # the base clock is near a date's limits
            return _bad("advanceSeconds", f"advanceSeconds: the clock cannot read {error}")
        self.config.clock = moved
        return _json(self._clock())

