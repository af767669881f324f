"""WADO-RS against the local service: signed GETs for an instance, its
metadata, its frames and bulk data, and a series' metadata, on image sets
that import jobs made (tests.emulator.dicomweb_store)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests

from tests.dicomweb_http import local_auth, multipart_parts
from tests.emulator.dicomweb_store import (
    BULK_BYTES,
    DicomWebStore,
    native_frames,
    served_store,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
HTJ2K = "1.2.840.10008.1.2.4.202"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPHC = f'multipart/related; type="image/jphc"; transfer-syntax={HTJ2K}'

# One worker runs them all: the data store they share is filled once.
pytestmark = pytest.mark.xdist_group("dicomweb-wado")


@pytest.fixture(scope="module")
def store() -> Iterator[DicomWebStore]:
    with served_store() as filled:
        yield filled


def part10(response: requests.Response) -> pydicom.Dataset:
    assert response.status_code == 200, response.text
    return pydicom.dcmread(io.BytesIO(response.content))


def same_pixels(got: pydicom.Dataset, source: pydicom.Dataset) -> bool:
    return native_frames(got) == native_frames(source)


# -- the instance --------------------------------------------------------------


@pytest.mark.parametrize("name", ["a1", "rle"])
def test_an_instance_is_explicit_vr_little_endian_by_default(
    store: DicomWebStore, name: str
) -> None:
    source = store.sources[name]
    response = store.get(store.url(name))
    assert response.headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    got = part10(response)
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == source.SOPInstanceUID
    assert got.PatientName == source.PatientName
    assert got.StudyDate == source.StudyDate
    assert got.Rows == source.Rows and got.Columns == source.Columns
    assert same_pixels(got, source)


@pytest.mark.parametrize("syntax", ["*", HTJ2K])
def test_the_stored_htj2k_instance_is_given_when_asked_for(
    store: DicomWebStore, syntax: str
) -> None:
    got = part10(store.get(store.url("a2"), f"application/dicom; transfer-syntax={syntax}"))
    assert got.file_meta.TransferSyntaxUID == HTJ2K
    assert same_pixels(got, store.sources["a2"])


def test_a_multipart_accept_gets_the_instance_as_one_part(store: DicomWebStore) -> None:
    response = store.get(store.url("a3"), 'multipart/related; type="application/dicom"')
    assert response.status_code == 200, response.text
    ((content_type, body),) = multipart_parts(response)
    assert content_type.startswith("application/dicom")
    assert same_pixels(pydicom.dcmread(io.BytesIO(body)), store.sources["a3"])


def test_a_transfer_syntax_it_cannot_give_is_406(store: DicomWebStore) -> None:
    assert store.get(store.url("a1"),
                     f"application/dicom; transfer-syntax={JPEG_BASELINE}").status_code == 406
    assert store.get(store.url("a1"), "image/png").status_code == 406
    assert store.get(store.url("a1", "/frames/1"),
                     'multipart/related; type="image/jphc"').status_code == 406
    assert store.get(store.url("a1", "/frames/1"),
                     f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}'
                     ).status_code == 406
    assert store.get(store.url("a1", "/metadata"),
                     'multipart/related; type="application/dicom+xml"').status_code == 406


def test_a_quoted_transfer_syntax_is_refused(store: DicomWebStore) -> None:
    response = store.get(store.url("a1"), f'application/dicom; transfer-syntax="{HTJ2K}"')
    assert response.status_code == 400
    assert "quoted" in response.json()["message"]


def not_found(response: requests.Response) -> bool:
    return (response.status_code == 404
            and response.headers["x-amzn-ErrorType"] == "ResourceNotFoundException")


def test_an_unknown_instance_or_data_store_is_404(store: DicomWebStore) -> None:
    url = store.url("a1")
    assert not_found(store.get(url.replace(store.sources["a1"].SOPInstanceUID, "1.2.3")))
    assert not_found(store.get(url.replace(store.sources["a1"].SeriesInstanceUID, "1.2.3")))
    assert not_found(store.get(store.url("a1", datastore_id="0" * 32)))


# -- metadata --------------------------------------------------------------------


def test_instance_metadata_is_dicom_json_with_the_stored_transfer_syntax(
    store: DicomWebStore,
) -> None:
    source = store.sources["a1"]
    response = store.get(store.url("a1", "/metadata"))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    document = response.json()
    assert document["00020010"] == {"vr": "UI", "Value": [HTJ2K]}
    assert document["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Holmes^Sherlock"}]}
    assert document["00200013"] == {"vr": "IS", "Value": [1]}
    assert "7FE00010" not in document
    parsed = pydicom.Dataset.from_json(document)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate",
                    "Rows", "BitsStored", "ImagePositionPatient"):
        assert parsed[keyword].value == source[keyword].value, keyword


def test_series_metadata_is_every_instance_in_instance_number_order(
    store: DicomWebStore,
) -> None:
    a1 = store.sources["a1"]
    response = store.get(f"{store.base()}/studies/{a1.StudyInstanceUID}/series/"
                         f"{a1.SeriesInstanceUID}/metadata")
    assert response.status_code == 200, response.text
    sops = [item["00080018"]["Value"][0] for item in response.json()]
    assert sops == [store.sources[n].SOPInstanceUID for n in ("a1", "a2", "a3")]


def test_a_binary_value_over_1_mb_is_bulk_data(store: DicomWebStore) -> None:
    document = store.get(store.url("b1", "/metadata")).json()
    (private,) = [e for tag, e in document.items() if tag.startswith("0009") and e["vr"] == "OB"]
    uri = private["BulkDataURI"]
    assert uri.startswith(store.url("b1", "/bulkdata/"))
    assert "InlineBinary" in document["00020001"]  # small values stay inline
    expected = bytes(range(256)) * (BULK_BYTES // 256)
    single = store.get(uri)
    assert single.status_code == 200, single.text
    assert single.headers["Content-Type"] == "application/octet-stream"
    assert single.content == expected
    multipart = store.get(uri, 'multipart/related; type="application/octet-stream"')
    ((_, body),) = multipart_parts(multipart)
    assert body == expected
    assert store.get(store.url("b1", "/bulkdata/" + "0" * 32)).status_code == 404


# -- frames ----------------------------------------------------------------------


def test_frames_are_native_parts_by_default_in_the_order_asked(store: DicomWebStore) -> None:
    response = store.get(store.url("rle", "/frames/2,1"))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(
        'multipart/related; type="application/octet-stream"')
    parts = multipart_parts(response)
    assert [t.split(";")[0] for t, _ in parts] == ["application/octet-stream"] * 2
    first, second = native_frames(store.sources["rle"])
    assert [body for _, body in parts] == [second, first]


def test_frames_as_stored_are_the_htj2k_codestream(store: DicomWebStore) -> None:
    for accept in (JPHC, 'multipart/related; type="image/jphc"; transfer-syntax=*'):
        response = store.get(store.url("a1", "/frames/1"), accept)
        assert response.status_code == 200, response.text
        ((content_type, body),) = multipart_parts(response)
        assert content_type.split(";")[0] == "image/jphc"
        assert body[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: a bare codestream
        pixels = imagecodecs.htj2k_decode(body)
        assert pixels.tobytes() == native_frames(store.sources["a1"])[0]


def test_octet_stream_frames_are_native_even_with_any_transfer_syntax(
    store: DicomWebStore,
) -> None:
    response = store.get(store.url("a1", "/frames/1"),
                         'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    ((_, body),) = multipart_parts(response)
    assert body == native_frames(store.sources["a1"])[0]


@pytest.mark.parametrize(("frames", "status"), [
    ("0", 400), ("x", 400), ("1,1", 400), ("1,", 400), ("3", 404), ("1,3", 404)])
def test_bad_frame_numbers(store: DicomWebStore, frames: str, status: int) -> None:
    response = store.get(store.url("rle", f"/frames/{frames}"))
    assert response.status_code == status
    assert response.headers["x-amzn-ErrorType"] == (
        "BadRequestException" if status == 400 else "ResourceNotFoundException")


def test_a_jpeg_2000_lossless_store_gives_what_it_stores(store: DicomWebStore) -> None:
    source, ds = store.sources["j2k"], store.j2k_datastore_id
    stored = part10(store.get(store.url("j2k", datastore_id=ds),
                              "application/dicom; transfer-syntax=*"))
    assert stored.file_meta.TransferSyntaxUID == J2K_LOSSLESS
    assert same_pixels(stored, source)
    assert same_pixels(part10(store.get(store.url("j2k", datastore_id=ds))), source)
    frames = store.get(store.url("j2k", "/frames/1", datastore_id=ds),
                       f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}')
    ((content_type, body),) = multipart_parts(frames)
    assert content_type.split(";")[0] == "image/jp2"
    assert imagecodecs.jpeg2k_decode(body).tobytes() == native_frames(source)[0]
    assert store.get(store.url("j2k", "/frames/1", datastore_id=ds), JPHC).status_code == 406


# -- primary image sets only ---------------------------------------------------


def test_a_non_primary_instance_needs_its_image_set_id(store: DicomWebStore) -> None:
    image_set = {"imageSetId": store.non_primary_set}
    for suffix in ("", "/metadata", "/frames/1"):
        assert store.get(store.url("conflict", suffix)).status_code == 404
        assert store.get(store.url("conflict", suffix), **image_set).status_code == 200
    got = part10(store.get(store.url("conflict"), **image_set))
    assert got.PatientID == "SOMEONE-ELSE"
    assert same_pixels(got, store.sources["conflict"])
    # Only that image set is looked in: a primary instance is not in it.
    assert store.get(store.url("a1"), **image_set).status_code == 404


# -- storage tiers ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_wado_counts_as_an_access_and_qido_does_not(store: DicomWebStore) -> None:
    clock, original = Clock(), store.service.config.clock
    store.service.config.clock = clock
    try:
        a1 = store.sources["a1"]
        (image_set_id,) = [s["imageSetId"] for s in store.mi.search_image_sets(
            datastoreId=store.datastore_id,
            searchCriteria={"filters": [{"operator": "EQUAL", "values": [
                {"DICOMSeriesInstanceUID": a1.SeriesInstanceUID}]}]},
        )["imageSetsMetadataSummaries"] if s["isPrimary"]]

        def tier() -> str:
            props = store.mi.get_image_set(datastoreId=store.datastore_id,
                                           imageSetId=image_set_id)
            return str(props["storageTier"])

        for read in ("", "/frames/1", "/metadata"):
            clock.now += timedelta(days=31)
            for search in ("/studies", "/series", "/instances"):
                assert store.get(store.base() + search).status_code == 200
            assert tier() == "ARCHIVE_INSTANT_ACCESS"
            assert store.get(store.url("a1", read)).status_code == 200
            assert tier() == "FREQUENT_ACCESS", read
    finally:
        store.service.config.clock = original


# -- an unmodified client from PyPI ------------------------------------------


def test_dicomweb_client_searches_and_retrieves(store: DicomWebStore) -> None:
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = local_auth(store.service)
    client = DICOMwebClient(url=store.base(), session=session)
    source = store.sources["rle"]
    uids: dict[str, Any] = {"study_instance_uid": source.StudyInstanceUID,
                            "series_instance_uid": source.SeriesInstanceUID,
                            "sop_instance_uid": source.SOPInstanceUID}

    studies = client.search_for_studies(search_filters={"PatientID": source.PatientID})
    assert [s["0020000D"]["Value"][0] for s in studies] == [source.StudyInstanceUID]
    metadata = client.retrieve_instance_metadata(**uids)
    assert pydicom.Dataset.from_json(json.dumps(metadata)).SOPInstanceUID == source.SOPInstanceUID
    instance = client.retrieve_instance(**uids)
    assert np.array_equal(instance.pixel_array, source.pixel_array)
    frames = client.retrieve_instance_frames(frame_numbers=[1, 2], **uids)
    assert frames == native_frames(source)
