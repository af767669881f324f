"""STOW-RS (``StoreDICOM``, ``StoreDICOMStudy``) on the wire: the request
body in, the Store Instances Response out (behaviour doc §7). The backend
stores the instances (``store_dicom``, through the import jobs' own path).

The body is spooled to files as it arrives (``multipart``), under the data
directory's ``stow-spool`` folder (the system's temporary folder for a
service kept in memory), and removed once answered. It is refused unread
(413) when its Content-Length is over ``max_stow_request_bytes`` (AWS: 1 GB),
and reading stops the moment a body of unknown length (chunked) passes it.

The answer is PS3.18's Store Instances Response in DICOM JSON. Choices
where AWS publishes nothing:

* Status as PS3.18 Table 10.5.3-1: 200 when every instance is stored
  without warning, 202 when some are stored and others failed or were
  warned, 409 when none is stored, 400 for a body that is not the multipart
  message it says, 415 for another media type.
* FailureReason codes are ``import_rules.codes.FailureReason``; a failed
  item names the instance when its UIDs could be read, and is present but
  empty where they could not.
* WarningReason is the code of the instance's first import warning (the
  standard allows one value).
* The study's RetrieveURL is given when the stored instances are of one
  study, and empty otherwise (it is type 2). An instance's RetrieveURL
  carries ``?imageSetId=`` when it landed in a non-primary image set, the
  only way WADO-RS reaches those.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Response

from emulator.edge.dicomweb import DicomWebApp, DicomWebCall
from emulator.edge.multipart import (
    MalformedBody,
    MultipartSpooler,
    Part,
    SinglePartSpooler,
    UnsupportedMediaType,
    body_kind,
)
from emulator.edge.request_bodies import RequestTooLarge
from emulator.state.exceptions import BadRequestException, UnsupportedMediaTypeException
from emulator.state.models import HealthImagingBackend
from emulator.state.stored_instances import InstanceOutcome

STUDY = "StudyInstanceUID"
# How much of the body is read at a time.
_READ_BYTES = 1 << 20
DICOM_JSON = "application/dicom+json"
SPOOL_FOLDER = "stow-spool"


def add_stow_routes(app: DicomWebApp, backend: HealthImagingBackend) -> None:
    handler = StowHandler(backend)
    app.add_route("POST", "/studies", handler, streams_body=True)
    app.add_route("POST", f"/studies/{{{STUDY}}}", handler, streams_body=True)


class StowHandler:
    def __init__(self, backend: HealthImagingBackend) -> None:
        self.backend = backend
        self.spool_root: Path | None = None
        data_dir = backend.store.data_dir
        if data_dir is not None:
            # What a crash left: the store holds the directory alone, so no
            # request is spooling there now.
            self.spool_root = data_dir / SPOOL_FOLDER
            shutil.rmtree(self.spool_root, ignore_errors=True)
            self.spool_root.mkdir()

    def __call__(self, call: DicomWebCall) -> Response:
        limit = self.backend.config.max_stow_request_bytes
        declared = call.request.content_length
        if declared is not None and declared > limit:
            raise _too_large(f"{declared} bytes", limit)
        try:
            root_type, boundary = body_kind(call.request.headers.get("Content-Type"))
        except UnsupportedMediaType as error:
            raise UnsupportedMediaTypeException(str(error)) from None
        except MalformedBody as error:
            raise BadRequestException(str(error)) from None
        folder = Path(tempfile.mkdtemp(prefix="stow-", dir=self.spool_root))
        try:
            spooler = (SinglePartSpooler(folder) if boundary is None
                       else MultipartSpooler(boundary, root_type, folder))
            try:
                self._spool(call, spooler, limit)
                parts = spooler.finish()
            except MalformedBody as error:
                raise BadRequestException(str(error)) from None
            finally:
                spooler.close()
            return self._store(call, parts)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _spool(
        self, call: DicomWebCall, spooler: SinglePartSpooler | MultipartSpooler, limit: int
    ) -> None:
        """Feed the body to ``spooler``, reading no more than one byte past
        ``limit``, to its end: a body whose signature does not hold raises
        AuthError from its last read, before anything is stored."""
        stream = call.request.stream
        total = 0
        while chunk := _read(stream, min(_READ_BYTES, limit + 1 - total)):
            total += len(chunk)
            if total > limit:
                raise _too_large(f"over {limit} bytes", limit)
            spooler.feed(chunk)

    def _store(self, call: DicomWebCall, parts: list[Part]) -> Response:
        datastore_id = call.params["datastoreId"]
        outcomes = self.backend.store_dicom(
            datastore_id, [part.path for part in parts], call.params.get(STUDY))
        base = f"{call.request.scheme}://{call.request.host}/datastore/{datastore_id}"
        return _store_instances_response(base, outcomes)


def _read(stream: IO[bytes], size: int) -> bytes:
    """The body's next bytes; a client that leaves before the end of its
    body, or breaks its chunked encoding, sent a malformed request."""
    try:
        return stream.read(size)
    except (ClientDisconnected, OSError) as error:
        raise BadRequestException(f"The request body could not be read: {error}") from None


def _too_large(size: str, limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is {size}; a STOW-RS request body is at most {limit} bytes"
    )


# -- the Store Instances Response (PS3.18 Annex I) ------------------------------


def _store_instances_response(base: str, outcomes: list[InstanceOutcome]) -> Response:
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str | None] = set()
    for outcome in outcomes:
        if outcome.image_set_id is None:
            failed.append(_failed_item(outcome))
        else:
            studies.add(outcome.study_instance_uid)
            referenced.append(_referenced_item(base, outcome))
    study = next(iter(studies)) if len(studies) == 1 else None
    body: dict[str, Any] = {
        "00081190": _value("UR", f"{base}/studies/{_segment(study)}" if study else None),
    }
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    warned = any(outcome.warning_reason is not None for outcome in outcomes)
    status = 409 if not referenced else 202 if failed or warned else 200
    return Response(json.dumps(body), status=status, content_type=DICOM_JSON)


def _referenced_item(base: str, outcome: InstanceOutcome) -> dict[str, Any]:
    url = (f"{base}/studies/{_segment(outcome.study_instance_uid)}"
           f"/series/{_segment(outcome.series_instance_uid)}"
           f"/instances/{_segment(outcome.sop_instance_uid)}")
    if not outcome.is_primary:
        url += f"?imageSetId={outcome.image_set_id}"
    item = {
        "00081150": _value("UI", outcome.sop_class_uid),
        "00081155": _value("UI", outcome.sop_instance_uid),
        "00081190": _value("UR", url),
    }
    if outcome.warning_reason is not None:
        item["00081196"] = _value("US", outcome.warning_reason)
    return item


def _failed_item(outcome: InstanceOutcome) -> dict[str, Any]:
    return {
        "00081150": _value("UI", outcome.sop_class_uid),
        "00081155": _value("UI", outcome.sop_instance_uid),
        "00081197": _value("US", outcome.failure_reason),
    }


def _value(vr: str, value: str | int | None) -> dict[str, Any]:
    """A DICOM JSON attribute; one without a value is present but empty."""
    return {"vr": vr} if value is None else {"vr": vr, "Value": [value]}


def _segment(uid: str | None) -> str:
    return quote(uid or "", safe="")
