"""The admin route, ``/_emulator/...``: fault injection, the service's clock
and a health check.

Changing faults takes the token the service prints when it starts
(``Authorization: Bearer <token>``) and a JSON body: a page in the
developer's browser can send neither without a CORS preflight, which this
route never grants. The health check is open; it tells nothing.
"""

from __future__ import annotations

import hmac
import json
from datetime import timedelta
from typing import Any

from werkzeug.wrappers import Request, Response

from emulator.config import ServiceConfig
from emulator.faults import FaultInjector, FaultSettingError

ADMIN_PREFIX = "/_emulator"


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json",
                    headers=headers)


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
        if not self._authorized(request):
            return _json(
                {"message": "the admin route needs the token printed at start: "
                 "Authorization: Bearer <token>"},
                401, **{"WWW-Authenticate": "Bearer"},
            )
        if request.method == "GET":
            return _json(self.faults.config.as_dict() if path == "/faults" else self._clock())
        if request.method != "POST":
            return _json({"message": f"{request.method} is not allowed here"}, 405,
                         Allow="GET, POST")
        body = self._body(request)
        if isinstance(body, Response):
            return body
        return self._change(body) if path == "/faults" else self._advance(body)

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        )

    @staticmethod
    def _body(request: Request) -> dict[str, Any] | Response:
        if request.mimetype != "application/json":
            return _json({"message": "the body must be JSON (Content-Type: application/json)"},
                         415)
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            return _json({"message": "the body is not valid JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"message": "the body must be a JSON object of settings"}, 400)
        return body

    def _change(self, changes: dict[str, Any]) -> Response:
        try:
            self.faults.config.update(changes)
        except FaultSettingError as error:
            return _json({"message": str(error), "field": error.field}, 400)
        return _json(self.faults.config.as_dict())

    def _clock(self) -> dict[str, Any]:
        return {"now": self.config.clock().isoformat()}

    def _advance(self, body: dict[str, Any]) -> Response:
        seconds = body.get("advanceSeconds")
        if set(body) != {"advanceSeconds"} or not isinstance(seconds, int | float) or isinstance(
            seconds, bool
        ):
            return _json({"message": 'the body must be {"advanceSeconds": <number>}',
                          "field": "advanceSeconds"}, 400)
        before = self.config.clock
        offset = timedelta(seconds=seconds)
        self.config.clock = lambda: before() + offset
        return _json(self._clock())
