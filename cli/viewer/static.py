"""OHIF's files, and its ``app-config.js`` written for the data store viewed.

OHIF is a single-page app: ``index.html`` loads everything from the site
root (``/app-config.js``, ``/app.bundle.….js``), and its own routes
(``/viewer?StudyInstanceUIDs=…``, the study list at ``/``) are paths no file
has, answered with ``index.html``. ``app-config.js`` is written per request
and points OHIF's DICOMweb data source at the proxy on this origin
(:data:`cli.viewer.proxy.PREFIX`); the package's own, which names OHIF's
public demo server, is never served.

Frames are asked for as HTJ2K as stored (``image/jphc``, transfer syntax
1.2.840.10008.1.2.4.202): HealthImaging keeps lossless frames in it, OHIF's
bundled OpenJPH decoder reads it, and a frame crosses the network in a
third of its decoded size or less. A frame stored otherwise answers 406 to
that, and the proxy asks again for it uncompressed
(:mod:`cli.viewer.proxy`). Thumbnails load the same way (``wadors``): AWS
offers no rendered images.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

from werkzeug.exceptions import NotFound
from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

from cli.viewer.proxy import HTJ2K_FRAMES, IMAGE_SETS, PREFIX, Upstream
from tasks.viewer_paths import IMAGE_SET_PARAMETER

CONFIG_PATH = "/app-config.js"
# Browsers compile WebAssembly as it streams only when it is served so;
# Python's table lacks the type on some systems.
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")


@dataclass(frozen=True)
class ViewerConfig:
    """What ``app-config.js`` says, besides this origin."""

    upstream: Upstream
    datastore_name: str

    def script(self, origin: str) -> str:
        """``window.config`` for OHIF, with the DICOMweb roots on ``origin``.

        ``?imageSetId=`` on the page (a non-primary image set's viewer path,
        :mod:`tasks.viewer_paths`) moves the roots under
        ``/dicomweb/imagesets/{id}``, which the proxy reads as that image set:
        OHIF itself knows no image sets.
        """
        root = origin + PREFIX
        source = {
            "friendlyName": f"HealthImaging {self.datastore_name or self.upstream.datastore_id}",
            "name": "healthimaging",
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsReject": False,
            "supportsStow": False,
            "dicomUploadEnabled": False,
            "staticWado": False,
            "singlepart": "bulkdata,video,pdf",
            "omitQuotationForMultipartRequest": True,
            "acceptHeader": [HTJ2K_FRAMES],
            # HealthImaging names bulk data by absolute URLs on its own host:
            # the same paths on this origin.
            "bulkDataURI": {
                "enabled": True,
                "startsWith": self.upstream.datastore_root + "/",
                "prefixWith": root + "/",
            },
        }
        config = {
            "routerBasename": "/",
            "extensions": [],
            "modes": [],
            "showStudyList": True,
            "maxNumberOfWebWorkers": 3,
            "showWarningMessageForCrossOrigin": False,
            "showCPUFallbackMessage": False,
            "showLoadingIndicator": True,
            "strictZSpacingForVolumeViewport": True,
            # No guided tour over the first study opened.
            "customizationService": {"ohif.tours": {"$set": []}},
            # Frames through the proxy: HealthImaging's WADO-RS rate is 50/s.
            "maxNumRequests": {"interaction": 25, "thumbnail": 5, "prefetch": 10},
            "defaultDataSourceName": "healthimaging",
            "dataSources": [{
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "healthimaging",
                "configuration": source,
            }],
        }
        return (
            "// Written by dicom-import view for this data store.\n"
            f"window.config = {json.dumps(config, indent=2)};\n"
            "(function () {\n"
            f"  var imageSet = new URLSearchParams(window.location.search).get("
            f"{json.dumps(IMAGE_SET_PARAMETER)});\n"
            "  if (!imageSet || !/^[0-9a-f]{32}$/.test(imageSet)) return;\n"
            "  var source = window.config.dataSources[0].configuration;\n"
            f"  var root = {json.dumps(f'{root}/{IMAGE_SETS}/')} + imageSet;\n"
            "  source.wadoUriRoot = source.qidoRoot = source.wadoRoot = root;\n"
            "  source.bulkDataURI.prefixWith = root + '/';\n"
            "  source.friendlyName += ' (image set ' + imageSet + ')';\n"
            "})();\n"
        )


class ViewerFiles:
    """The OHIF files in ``folder``, ``index.html`` for OHIF's own routes, and
    the generated ``app-config.js``."""

    def __init__(self, folder: Path, config: ViewerConfig) -> None:
        self.folder = folder
        self.config = config

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if request.method not in ("GET", "HEAD"):
            response = Response("Only GET and HEAD.\n", status=405, mimetype="text/plain",
                                headers={"Allow": "GET, HEAD"})
        elif request.path == CONFIG_PATH:
            response = Response(self.config.script(request.host_url.rstrip("/")),
                                mimetype="text/javascript",
                                headers={"Cache-Control": "no-store"})
        else:
            response = self._file(request)
        return response(environ, start_response)

    def _file(self, request: Request) -> Response:
        path = request.path.lstrip("/")
        try:
            return send_from_directory(self.folder, path or "index.html", request.environ)
        except NotFound:
            # An asset that is not there is a 404; any other path is a route
            # of the app, which index.html handles.
            if "." in path.rsplit("/", 1)[-1]:
                return Response("Not found.\n", status=404, mimetype="text/plain")
            return send_from_directory(self.folder, "index.html", request.environ)
