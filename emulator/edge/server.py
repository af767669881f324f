"""One local endpoint for S3 and HealthImaging.

Every request passes the door first (emulator.edge.origins: the ``Host`` it names
and the CORS headers it gets; emulator.edge.auth: its signature), then is
dispatched by the service name in its SigV4 credential scope:
``medical-imaging`` goes to our app, ``s3`` to moto's server. moto's other
services and its own admin API (``/moto-api/...``) take the admin token.
``/_emulator/...`` is the admin route (emulator.edge.admin).
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.wrappers import Request

from emulator.config import LOCAL_CREDENTIALS, Credentials, ServiceConfig
from emulator.edge.admin import ADMIN_PREFIX, ADMIN_TOKEN_HEADER, AdminRoute
from emulator.edge.auth import find_signature, verify
from emulator.edge.auth_errors import AuthError
from emulator.edge.dicomweb import DicomWebApp
from emulator.edge.dicomweb_reads import DicomWebReads
from emulator.edge.http_server import EdgeServer
from emulator.edge.origins import OriginPolicy
from emulator.edge.quoted_values import quoted
from emulator.edge.refusals import refusal, service_asked
from emulator.edge.request_bodies import RequestTooLarge, buffer_body
from emulator.edge.responses import HealthImagingApp, render_error
from emulator.edge.signed_body import CHECKED_BODY, STREAMING_SIGNED, decode_aws_chunked, spool
from emulator.edge.stow import add_stow_routes
from emulator.faults import FaultConfig, FaultInjector
from emulator.state.models import HealthImagingBackend
from emulator.state.service_model import SERVICE_NAME
from emulator.state.store import Store

# S3 Control shares S3's signing name; moto serves it from another app.
_S3_CONTROL_PATH = "/v20180820/"
# The services this endpoint is for, by signing name. moto serves many more
# (IAM, STS, SQS ...), and its admin API under /moto-api: those take the
# admin token, so that a signed request (any key passes by default) cannot
# reset what the service holds.
_SERVED = frozenset({"s3", SERVICE_NAME})
_MOTO_ADMIN_PREFIX = "/moto-api"
# How often the serving loop looks for a stop request (and for idle
# connections past their time): cheroot's 0.5 s would make every stop, which
# tests and `demo` pay, wait that long.
_SHUTDOWN_POLL_SECONDS = 0.02


class LocalApplication:
    """The WSGI app behind the endpoint."""

    def __init__(
        self,
        backend: HealthImagingBackend,
        faults: FaultInjector,
        origins: OriginPolicy,
        admin_token: str,
        credentials: Credentials | None = None,
    ) -> None:
        self.backend = backend
        self.health_imaging = HealthImagingApp(backend, faults.before_call)
        self.dicomweb = DicomWebApp(backend)
        add_stow_routes(self.dicomweb, backend)
        self.dicomweb_reads = DicomWebReads(backend, faults.before_call)
        self.admin = AdminRoute(faults, admin_token, backend.config)
        self.credentials = credentials
        self.origins = origins
        self.moto = DomainDispatcherApplication(create_backend_app)
        self._s3_app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        admin = path.startswith(ADMIN_PREFIX)
        if not self.origins.host_allowed(environ):
            host = environ.get("HTTP_HOST", "")
            refused = refusal(service_asked(environ, None), "host",
                              f"Host {quoted(host)!r} is not this service's address.")
            return refused(environ, start_response)
        preflight = None if admin else self.origins.preflight(environ)
        if preflight is not None:
            return preflight(environ, start_response)
        moto_admin = path.startswith(_MOTO_ADMIN_PREFIX)
        start_response = self.origins.with_cors(environ, start_response, admin or moto_admin)
        if admin:
            return self.admin(Request(environ))(environ, start_response)
        if moto_admin:
            # moto's own admin API (reset, seed, state transitions): the admin
            # token, no signature; /moto-api/reset wiped every bucket.
            if not self.admin.token_given(environ):
                return self.admin.needs_token()(environ, start_response)
            return self.moto(environ, start_response)
        signature = None
        try:
            signature = find_signature(environ)
            if signature is None:
                raise AuthError("missing", "The request is not signed.")
            if signature.service not in _SERVED and not self.admin.token_given(environ):
                raise AuthError("admin", f"{signature.service} is not served here: this "
                                f"service serves {' and '.join(sorted(_SERVED))}. moto's other "
                                f"services take the admin token (header {ADMIN_TOKEN_HEADER}).")
            if self.credentials is not None:
                verify(environ, signature, self.credentials)  # the body: as it is read
            if signature.service == SERVICE_NAME:
                if environ.get("HTTP_X_AMZ_CONTENT_SHA256") == STREAMING_SIGNED:
                    decode_aws_chunked(environ, None)  # unless verify() already did
                if self.dicomweb.handles(environ):
                    # STOW-RS streams its body to disk; the signature's check of
                    # the body ends as it reads the last byte.
                    return self.dicomweb(environ, start_response)
                buffer_body(environ)
            elif environ.get(CHECKED_BODY):
                spool(environ)  # moto is given a body already checked
        except AuthError as error:
            refused = refusal(service_asked(environ, signature), error.reason, error.message)
            return refused(environ, start_response)
        except RequestTooLarge as error:
            return render_error(error, str(uuid.uuid4()))(environ, start_response)
        if signature.service == SERVICE_NAME:
            app = self.dicomweb_reads.route(environ) or self.health_imaging
            return app(environ, start_response)
        if signature.service == "s3" and not path.startswith(_S3_CONTROL_PATH):
            return self._s3(environ)(environ, start_response)
        return self.moto(environ, start_response)

    def _s3(self, environ: dict[str, Any]) -> Callable[..., Any]:
        """moto's S3 app, looked up once: moto's dispatcher looks it up per
        request under a global lock, listing moto's package folder each time,
        which made S3 requests wait on one another."""
        if self._s3_app is None:
            self._s3_app = self.moto.get_application(environ)
        return self._s3_app


class LocalService:
    """The local stack, started in-process on a free port (or a given one).

    ``with LocalService() as svc: ...`` for tests and the demo; ``svc.env()``
    gives the variables a client needs, ``svc.admin_token`` what the admin
    route asks for.
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
        self.admin_token = secrets.token_urlsafe(32)
        # The application is given once the port is bound: the Host check needs it.
        try:
            self._server = EdgeServer(host, port, None, self.config.idle_timeout_seconds,
                                      _SHUTDOWN_POLL_SECONDS)
        except BaseException:
            self.backend.shutdown()
            self.store.close()  # a refused port must not keep the data directory held
            raise
        self.host = host
        self.port = self._server.port
        self._server.wsgi_app = LocalApplication(
            self.backend, self._injector,
            OriginPolicy(host, self.port, self.config.cors_origins),
            self.admin_token, self.config.credentials,
        )
        if self.backend.s3_in_process:
            self.backend.s3_endpoint = self.endpoint
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        key = self.config.credentials or LOCAL_CREDENTIALS
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
            "AWS_ACCESS_KEY_ID": key.access_key,
            "AWS_SECRET_ACCESS_KEY": key.secret_key,
            "AWS_REGION": self.config.region,
            "AWS_DEFAULT_REGION": self.config.region,
        }

    def start(self) -> LocalService:
        self._thread = threading.Thread(
            target=self._server.serve, daemon=True, name="local-healthimaging",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Import jobs first (no new one; running ones get the configured
        grace period, then end FAILED), so that they can still reach S3
        here; then the server, then the store, which nothing uses any more."""
        self.backend.stop_imports(self.config.stop_grace_seconds)
        self._server.stop()
        if self._thread:
            self._thread.join(timeout=5)
        self.backend.shutdown()
        self.store.close()

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
