"""A data store for the DICOMweb tests, filled the native way (import jobs),
and read back over signed DICOMweb requests.

Three studies: A (CT series of 3 slices and MR series of 2, and a fourth CT
slice of another patient that lands in a non-primary image set), B (one CT
slice carrying a WarningReason and a private binary value over 1 MB, then
a second slice from a later job, so B changed last) and C (pydicom's two-frame
RGB RLE file). A second data store, JPEG 2000 lossless, holds one slice.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import requests
from pydicom.pixels import iter_pixels

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import ct_slice, series_spec, uid
from tests.dicomweb_http import signed_session
from tests.emulator.conftest import BUCKET, make_clients, wait_datastore_active
from tests.emulator.test_import import dicom_bytes, pydicom_file, run_import
from tests.local_service import empty_s3

WARNING = 0xB000
BULK_BYTES = 1_200_000
PRIVATE_CREATOR = "DICOMWEB TEST"


@dataclass
class DicomWebStore:
    service: LocalService
    mi: Any
    http: requests.Session
    datastore_id: str
    j2k_datastore_id: str
    sources: dict[str, pydicom.Dataset]
    non_primary_set: str

    def base(self, datastore_id: str | None = None) -> str:
        return f"{self.service.endpoint}/datastore/{datastore_id or self.datastore_id}"

    def url(self, name: str, suffix: str = "", datastore_id: str | None = None) -> str:
        ds = self.sources[name]
        return (f"{self.base(datastore_id)}/studies/{ds.StudyInstanceUID}/series/"
                f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}{suffix}")

    def get(self, url: str, accept: str | None = None, **params: Any) -> requests.Response:
        headers = {"Accept": accept} if accept else {}
        return self.http.get(url, headers=headers, params=params or None)


def native_frames(ds: pydicom.Dataset) -> list[bytes]:
    """Each frame of ``ds`` decoded, as little-endian bytes, samples as stored."""
    return [np.ascontiguousarray(f, dtype=f.dtype.newbyteorder("<")).tobytes()
            for f in iter_pixels(ds, as_rgb=False)]


def _slice(seed: str, index: int, *, series_number: int = 1, **attributes: Any
           ) -> pydicom.Dataset:
    spec = series_spec(seed)
    if series_number != 1:
        spec = dataclasses.replace(spec, series_instance_uid=uid(f"{seed}-{series_number}"),
                                   series_number=series_number)
    ds = ct_slice(spec, index, rows=16, columns=16)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _sources() -> dict[str, pydicom.Dataset]:
    study_a: dict[str, Any] = {
        "StudyDate": "20200315", "StudyTime": "101500", "PatientName": "Holmes^Sherlock",
        "PatientID": "PID-A", "AccessionNumber": "ACC-A", "StudyDescription": "Chest CT",
        "ReferringPhysicianName": "Bell^Joseph"}
    study_b: dict[str, Any] = {
        "StudyDate": "20210620", "StudyTime": "083000", "PatientName": "Watson^John",
        "PatientID": "PID-B", "AccessionNumber": "ACC-B"}
    sources = {f"a{i + 1}": _slice("dicomweb-a", i, **study_a) for i in range(3)}
    for i in range(2):
        sources[f"mr{i + 1}"] = _slice("dicomweb-a", i, series_number=2, Modality="MR",
                                       **study_a)
    sources["conflict"] = _slice("dicomweb-a", 5, **{**study_a, "PatientID": "SOMEONE-ELSE"})
    b1 = _slice("dicomweb-b", 0, **study_b)
    b1.WarningReason = WARNING
    block = b1.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * (BULK_BYTES // 256))
    sources["b1"] = b1
    sources["b2"] = _slice("dicomweb-b", 1, **study_b)
    sources["rle"] = pydicom.dcmread(io.BytesIO(pydicom_file("SC_rgb_rle_2frame.dcm")))
    sources["j2k"] = _slice("dicomweb-j2k", 0)
    return sources


def _raw(ds: pydicom.Dataset, name: str) -> bytes:
    return pydicom_file("SC_rgb_rle_2frame.dcm") if name == "rle" else dicom_bytes(ds)


@contextmanager
def served_store() -> Iterator[DicomWebStore]:
    """The local service holding the studies above."""
    empty_s3()
    config = ServiceConfig(datastore_transition_seconds=0.05, write_seconds=0.05,
                           stop_grace_seconds=0)
    with LocalService(config=config) as service:
        mi, s3 = make_clients(service)
        s3.create_bucket(Bucket=BUCKET)
        datastore_id = mi.create_datastore(datastoreName="dicomweb")["datastoreId"]
        j2k = mi.create_datastore(datastoreName="dicomweb-j2k",
                                  losslessStorageFormat="JPEG_2000_LOSSLESS")["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        wait_datastore_active(mi, j2k)
        sources = _sources()
        first = {f"{name}.dcm": _raw(ds, name) for name, ds in sources.items()
                 if name not in ("b2", "j2k")}
        run = run_import(mi, s3, datastore_id, first, "dicomweb-1/")
        assert not run.failure, run.failure
        conflict = run.succeeded("dicomweb-1/conflict.dcm")
        assert conflict["isPrimary"] is False
        later = run_import(mi, s3, datastore_id, {"b2.dcm": _raw(sources["b2"], "b2")},
                           "dicomweb-2/")
        assert not later.failure, later.failure
        stored = run_import(mi, s3, j2k, {"j2k.dcm": _raw(sources["j2k"], "j2k")}, "dicomweb-3/")
        assert not stored.failure, stored.failure
        yield DicomWebStore(service, mi, signed_session(service), datastore_id, j2k, sources,
                            conflict["imageSetId"])
