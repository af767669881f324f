"""The DICOMweb reads: WADO-RS retrieves and QIDO-RS searches, GET under
``/datastore/{datastoreId}/`` (``studies``, ``series``, ``instances``).

These paths do not collide with the native API's (``/datastore/{id}`` and
``/datastore/{id}/imageSet/...``), so the same port serves both; a path here
that is no DICOMweb read (another method, a retrieve AWS does not offer such
as a whole study) is left to the rest of the edge. Requests are signed like
every other (``medical-imaging``), and pass the same fault injection under
their AWS operation names. Errors have the native API's shape.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote

from werkzeug.wrappers import Request, Response

from emulator.edge import wado
from emulator.edge.responses import render_error
from emulator.state import dicomweb_search
from emulator.state.dicomweb_index import DicomWebIndex, IndexedInstance
from emulator.state.dicomweb_retrieve import DicomWebRetrieval
from emulator.state.dicomweb_search import INSTANCE, SERIES, STUDY, Scope
from emulator.state.exceptions import (
    HealthImagingError,
    InternalServerException,
    ResourceNotFoundException,
)

if TYPE_CHECKING:
    from emulator.state.models import HealthImagingBackend

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PATH = re.compile(
    r"^/datastore/(?P<datastore>[^/]+)/(?P<rest>(?:studies|series|instances)(?:/.*)?)$")


class DicomWebReads:
    def __init__(self, backend: HealthImagingBackend, before_call: Callable[[str], None]) -> None:
        self._backend = backend
        self._before_call = before_call
        self.index = DicomWebIndex(backend.image_sets)
        self._retrieval = DicomWebRetrieval(backend.image_sets, self.index, self._check_datastore)

    def route(self, environ: dict[str, Any]) -> WsgiApp | None:
        """The app answering this request, or None when it is no DICOMweb read."""
        if environ.get("REQUEST_METHOD") != "GET":
            return None
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get(
            "PATH_INFO", "")
        found = _PATH.match(raw_path.split("?", 1)[0])
        if found is None:
            return None
        segments = [unquote(s) for s in found["rest"].rstrip("/").split("/")]
        handler = self._handler(segments)
        if handler is None:
            return None
        operation, answer = handler
        datastore_id = unquote(found["datastore"])

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            return self._answer(operation, answer, datastore_id, Request(environ))(
                environ, start_response)

        return app

    def _handler(
        self, segments: list[str]
    ) -> tuple[str, Callable[[Request, str], Response]] | None:
        """(AWS operation name, handler) for the path after ``{B}/``."""
        match segments:
            case ["studies"]:
                return "SearchDICOMStudies", self._search(Scope(STUDY))
            case ["series"]:
                return "SearchDICOMSeries", self._search(Scope(SERIES))
            case ["instances"]:
                return "SearchDICOMInstances", self._search(Scope(INSTANCE))
            case ["studies", study, "series"]:
                return "SearchDICOMSeries", self._search(Scope(SERIES, study))
            case ["studies", study, "instances"]:
                return "SearchDICOMInstances", self._search(Scope(INSTANCE, study))
            case ["studies", study, "series", series, "instances"]:
                return "SearchDICOMInstances", self._search(Scope(INSTANCE, study, series))
            case ["studies", study, "series", series, "metadata"]:
                return "GetDICOMSeriesMetadata", lambda request, datastore: (
                    self._series_metadata(request, datastore, study, series))
            case ["studies", study, "series", series, "instances", sop, *rest]:
                uids = (study, series, sop)
                match rest:
                    case []:
                        return "GetDICOMInstance", lambda request, datastore: (
                            self._instance(request, datastore, *uids))
                    case ["metadata"]:
                        return "GetDICOMInstanceMetadata", lambda request, datastore: (
                            self._instance_metadata(request, datastore, *uids))
                    case ["frames", frame_list]:
                        return "GetDICOMInstanceFrames", lambda request, datastore: (
                            self._frames(request, datastore, *uids, frame_list))
                    case ["bulkdata", bulk_id]:
                        return "GetDICOMBulkdata", lambda request, datastore: (
                            self._bulk_data(request, datastore, *uids, bulk_id))
        return None

    def _answer(
        self, operation: str, answer: Callable[[Request, str], Response], datastore_id: str,
        request: Request,
    ) -> Response:
        request_id = str(uuid.uuid4())
        try:
            self._before_call(operation)
            response = answer(request, datastore_id)
        except HealthImagingError as error:
            return render_error(error, request_id)
        except Exception:
            log.exception("unhandled error in %s", operation)
            return render_error(
                InternalServerException("The local service failed; see its log."), request_id)
        response.headers["x-amzn-RequestId"] = request_id
        return response

    def _check_datastore(self, datastore_id: str) -> None:
        properties = self._backend.get_datastore(datastore_id)["datastoreProperties"]
        if properties["datastoreStatus"] == "DELETED":
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist")

    # -- QIDO-RS ----------------------------------------------------------------
    def _search(self, scope: Scope) -> Callable[[Request, str], Response]:
        def search(request: Request, datastore_id: str) -> Response:
            wado.check_json_accepted(request.headers.get("Accept"))
            query = dicomweb_search.parse_query(scope, _query_pairs(request))
            self._check_datastore(datastore_id)
            results = dicomweb_search.search(
                query,
                self.index.image_sets(datastore_id, query.image_set_id),
                dicomweb_search.InstanceLoader(self._backend.image_sets.metadata),
                lambda instance: _instance_url(request, datastore_id, instance,
                                               query.image_set_id),
            )
            if not results:
                return Response(status=204)
            return _json(results)

        return search

    # -- WADO-RS ----------------------------------------------------------------
    def _instance(
        self, request: Request, datastore_id: str, study: str, series: str, sop: str
    ) -> Response:
        instance = self._retrieval.instance(datastore_id, study, series, sop,
                                            _image_set_id(request))
        choice = wado.choose_instance(request.headers.get("Accept"), instance.stored_syntax)
        data = self._retrieval.part10(instance, choice.syntax)
        if choice.multipart:
            return wado.multipart([data], wado.DICOM, choice.syntax)
        return Response(data, headers={
            "Content-Type": f"{wado.DICOM}; transfer-syntax={choice.syntax}"})

    def _instance_metadata(
        self, request: Request, datastore_id: str, study: str, series: str, sop: str
    ) -> Response:
        wado.check_json_accepted(request.headers.get("Accept"))
        image_set_id = _image_set_id(request)
        instance = self._retrieval.instance(datastore_id, study, series, sop, image_set_id)
        base = _base_url(request, datastore_id)
        return _json(self._retrieval.metadata(
            instance, lambda bulk_id: _bulk_uri(base, study, series, sop, bulk_id, image_set_id)))

    def _series_metadata(
        self, request: Request, datastore_id: str, study: str, series: str
    ) -> Response:
        wado.check_json_accepted(request.headers.get("Accept"))
        image_set_id = _image_set_id(request)
        base = _base_url(request, datastore_id)

        def bulk_uri(sop: str) -> Callable[[str], str]:
            return lambda bulk_id: _bulk_uri(base, study, series, sop, bulk_id, image_set_id)

        return _json([
            self._retrieval.metadata(instance, bulk_uri(instance.sop_uid))
            for instance in self._retrieval.series(datastore_id, study, series, image_set_id)
        ])

    def _frames(
        self, request: Request, datastore_id: str, study: str, series: str, sop: str,
        frame_list: str,
    ) -> Response:
        instance = self._retrieval.instance(datastore_id, study, series, sop,
                                            _image_set_id(request))
        numbers = self._retrieval.frame_numbers(instance, frame_list)
        choice = wado.choose_frames(request.headers.get("Accept"), instance.stored_syntax)
        frames = (self._retrieval.native_frames(instance, numbers) if choice.native
                  else self._retrieval.stored_frames(instance, numbers))
        return wado.multipart(frames, choice.part_type, choice.syntax)

    def _bulk_data(
        self, request: Request, datastore_id: str, study: str, series: str, sop: str,
        bulk_id: str,
    ) -> Response:
        multipart = wado.choose_bulk_data(request.headers.get("Accept"))
        instance = self._retrieval.instance(datastore_id, study, series, sop,
                                            _image_set_id(request))
        data = self._retrieval.bulk_data(instance, bulk_id)
        if multipart:
            return wado.multipart([data], wado.OCTET_STREAM, None)
        return Response(data, headers={"Content-Type": wado.OCTET_STREAM})


def _query_pairs(request: Request) -> list[tuple[str, str]]:
    return parse_qsl(request.query_string.decode("utf-8", "replace"), keep_blank_values=True)


def _image_set_id(request: Request) -> str | None:
    return dict(_query_pairs(request)).get("imageSetId") or None


def _json(document: Any) -> Response:
    return Response(json.dumps(document), headers={"Content-Type": "application/dicom+json"})


def _base_url(request: Request, datastore_id: str) -> str:
    return f"{request.host_url.rstrip('/')}/datastore/{quote(datastore_id)}"


def _instance_url(
    request: Request, datastore_id: str, instance: IndexedInstance, image_set_id: str | None
) -> str:
    url = (f"{_base_url(request, datastore_id)}/studies/{instance.study_uid}/series/"
           f"{instance.series_uid}/instances/{instance.sop_uid}")
    return url + (f"?imageSetId={image_set_id}" if image_set_id else "")


def _bulk_uri(
    base: str, study: str, series: str, sop: str, bulk_id: str, image_set_id: str | None
) -> str:
    url = f"{base}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{bulk_id}"
    return url + (f"?imageSetId={image_set_id}" if image_set_id else "")
