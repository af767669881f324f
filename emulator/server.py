"""One local endpoint for S3 and HealthImaging.

Requests are dispatched by the service name in their SigV4 credential scope:
``medical-imaging`` goes to our app, everything else to moto's server (S3).
``/_emulator/...`` is the admin route for fault injection.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.wrappers import Request, Response

from emulator.config import ServiceConfig
from emulator.faults import FaultConfig, FaultInjector
from emulator.http_server import KeepAliveServer
from emulator.models import HealthImagingBackend
from emulator.responses import HealthImagingApp
from emulator.store import Store

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_QUERY_SCOPE = re.compile(
    r"X-Amz-Credential=[^&/]+(?:/|%2F)\d{8}(?:/|%2F)[^&/%]+(?:/|%2F)([^&/%]+)"
)
ADMIN_PREFIX = "/_emulator"
# S3 Control shares S3's signing name; moto serves it from another app.
_S3_CONTROL_PATH = "/v20180820/"


def signing_service(environ: dict[str, Any]) -> str | None:
    found = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if not found:
        found = _QUERY_SCOPE.search(environ.get("QUERY_STRING", ""))
    return found.group(1) if found else None


class LocalApplication:
    """The WSGI app behind the endpoint."""

    def __init__(self, backend: HealthImagingBackend, faults: FaultInjector) -> None:
        self.backend = backend
        self.faults = faults
        self.health_imaging = HealthImagingApp(backend, faults.before_call)
        self.moto = DomainDispatcherApplication(create_backend_app)
        self._s3_app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(ADMIN_PREFIX):
            return self._admin(Request(environ))(environ, start_response)
        service = signing_service(environ)
        if service == "medical-imaging":
            return self.health_imaging(environ, start_response)
        if service == "s3" and not path.startswith(_S3_CONTROL_PATH):
            return self._s3(environ)(environ, start_response)
        return self.moto(environ, start_response)

    def _s3(self, environ: dict[str, Any]) -> Callable[..., Any]:
        """moto's S3 app, looked up once: moto's dispatcher looks it up per
        request under a global lock, listing moto's package folder each time,
        which made S3 requests wait on one another."""
        if self._s3_app is None:
            self._s3_app = self.moto.get_application(environ)
        return self._s3_app

    def _admin(self, request: Request) -> Response:
        """GET/POST /_emulator/faults reads/changes fault injection;
        GET /_emulator/health answers when the service is up."""
        path = request.path.removeprefix(ADMIN_PREFIX)
        if path == "/health":
            return Response(json.dumps({"status": "ok"}), content_type="application/json")
        if path == "/faults":
            if request.method == "POST":
                try:
                    self.faults.config.update(json.loads(request.get_data() or b"{}"))
                except (ValueError, TypeError) as error:
                    return Response(
                        json.dumps({"message": str(error)}),
                        status=400,
                        content_type="application/json",
                    )
            return Response(
                json.dumps(self.faults.config.as_dict()), content_type="application/json"
            )
        return Response(
            json.dumps({"message": f"no admin route {path}"}),
            status=404,
            content_type="application/json",
        )


class LocalService:
    """The local stack, started in-process on a free port (or a given one).

    ``with LocalService() as svc: ...`` for tests and the demo; ``svc.env()``
    gives the variables a client needs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
        config: ServiceConfig | None = None,
        faults: FaultConfig | None = None,
    ) -> None:
        # The service judges values itself and reports them as import warnings;
        # pydicom's own per-value warnings would only flood the console. This
        # is process-wide: pydicom has no per-read setting.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.config = config or ServiceConfig()
        self.faults = faults or FaultConfig()
        self.store = Store(data_dir)
        self._injector = FaultInjector(self.faults)
        self.backend = HealthImagingBackend(self.config, self.store, self._injector)
        self._server = KeepAliveServer(
            host, port, LocalApplication(self.backend, self._injector)
        )
        self.host = host
        self.port = self._server.server_port
        if self.backend.s3_in_process:
            self.backend.s3_endpoint = self.endpoint
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REGION": self.config.region,
            "AWS_DEFAULT_REGION": self.config.region,
        }

    def start(self) -> LocalService:
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="local-healthimaging"
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        self.backend.shutdown()
        self.store.close()

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
