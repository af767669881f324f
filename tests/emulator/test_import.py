"""Imports into the local HealthImaging service, driven only through boto3.

Inputs are pydicom's bundled test files (read from the installed package,
never downloaded), files generated with ``emulator.samples`` and files
broken in one way each. Assertions read what a client reads: the job, its
output folder, the metadata documents and the frames.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.pixels import iter_pixels
from pydicom.uid import UID, RLELossless

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import (
    PYDICOM_TEST_FILES,
    ct_slice,
    series_spec,
    write_not_dicom,
    write_pixel_mismatch,
    write_truncated,
    write_with,
    write_without_transfer_syntax,
)
from tests.emulator.conftest import (
    BUCKET,
    ROLE,
    make_clients,
    wait_datastore_active,
    wait_job_done,
)

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.202"
MANIFEST_KEYS = {
    "jobId",
    "datastoreId",
    "inputS3Uri",
    "outputS3Uri",
    "successOutputS3Uri",
    "failureOutputS3Uri",
    "warningsOutputS3Uri",
    "numberOfScannedFiles",
    "numberOfImportedFiles",
    "numberOfFilesWithCustomerError",
    "numberOfFilesWithServerError",
    "numberOfGeneratedImageSets",
    "imageSetsSummary",
}
SUMMARY_KEYS = {"imageSetId", "imageSetVersion", "isPrimary", "numberOfMatchedSOPInstances"}


def pydicom_file(name: str) -> bytes:
    return (PYDICOM_TEST_FILES / name).read_bytes()


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def broken(tmp_path: Path, maker: Any, name: str, **attributes: Any) -> bytes:
    path = tmp_path / name
    return (maker(path, **attributes) if attributes else maker(path)).read_bytes()


class ImportRun:
    """One finished job and its output folder, read back from S3."""

    def __init__(self, mi: Any, s3: Any, datastore_id: str, job_id: str) -> None:
        self.job = wait_job_done(mi, datastore_id, job_id)
        self.s3 = s3
        self.manifest: dict[str, Any] = {}
        self.success: list[dict[str, Any]] = []
        self.failure: list[dict[str, Any]] = []
        self.warning: list[dict[str, Any]] = []
        if self.job["jobStatus"] == "COMPLETED":
            self.manifest = json.loads(self._read("job-output-manifest.json"))["jobSummary"]
            self.success = self._lines("SUCCESS/success.ndjson")
            self.failure = self._lines("FAILURE/failure.ndjson")
            self.warning = self._lines("WARNING/warning.ndjson")

    def _read(self, name: str) -> bytes:
        bucket, key = self.job["outputS3Uri"].removeprefix("s3://").split("/", 1)
        return self.s3.get_object(Bucket=bucket, Key=key + name)["Body"].read()

    def _lines(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._read(name).decode().splitlines()]

    def succeeded(self, key: str) -> dict[str, Any]:
        return next(line["importResponse"] for line in self.success if line["inputFile"] == key)

    def failed(self, key: str) -> dict[str, Any]:
        return next(line["exception"] for line in self.failure if line["inputFile"] == key)


def run_import(
    mi: Any,
    s3: Any,
    datastore_id: str,
    files: dict[str, bytes],
    prefix: str,
    *,
    output: str = f"s3://{BUCKET}/output/",
) -> ImportRun:
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}{key}", Body=body)
    job = mi.start_dicom_import_job(
        datastoreId=datastore_id,
        dataAccessRoleArn=ROLE,
        clientToken=prefix.strip("/").replace("/", "-"),
        inputS3Uri=f"s3://{BUCKET}/{prefix}",
        outputS3Uri=output,
    )
    return ImportRun(mi, s3, datastore_id, job["jobId"])


def metadata(mi: Any, datastore_id: str, image_set_id: str, version: str | None = None) -> dict:
    kwargs = {"versionId": version} if version else {}
    blob = mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, **kwargs)
    return json.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))


def frame(mi: Any, datastore_id: str, image_set_id: str, frame_id: str) -> tuple[bytes, str]:
    response = mi.get_image_frame(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        imageFrameInformation={"imageFrameId": frame_id},
    )
    return response["imageFrameBlob"].read(), response["contentType"]


def only_instance(doc: dict[str, Any]) -> dict[str, Any]:
    (series,) = doc["Study"]["Series"].values()
    (instance,) = series["Instances"].values()
    return instance


def jph_boxes(data: bytes) -> dict[bytes, bytes]:
    """Top-level and jp2h boxes of a JPH file, by type."""
    boxes: dict[bytes, bytes] = {}
    offset = 0
    while offset < len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        payload = data[offset + 8 : offset + length]
        boxes[kind] = payload
        if kind == b"jp2h":
            boxes.update(jph_boxes(payload))
        offset += length
    return boxes


def little_endian(frame_pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frame_pixels, dtype=frame_pixels.dtype.newbyteorder("<"))


@pytest.fixture
def custom_service() -> Iterator[Any]:
    """Start a service with its own settings; yields a factory."""
    started: list[LocalService] = []

    def start(**settings: Any) -> tuple[Any, Any, str]:
        svc = LocalService(
            config=ServiceConfig(datastore_transition_seconds=0.05, **settings)
        ).start()
        started.append(svc)
        mi, s3 = make_clients(svc)
        s3.create_bucket(Bucket=BUCKET)
        datastore_id = mi.create_datastore(datastoreName="custom")["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        return mi, s3, datastore_id

    yield start
    for svc in started:
        svc.stop()


# -- the job and its output folder ------------------------------------------


def test_mixed_input_every_file_reported_once(
    mi: Any, s3: Any, datastore_id: str, tmp_path: Path
) -> None:
    leading_zero_uid = "1.2.826.0.1.3680043.8.498.01"
    files = {
        "ct/CT_small.dcm": pydicom_file("CT_small.dcm"),
        "mr/MR_small_RLE.dcm": pydicom_file("MR_small_RLE.dcm"),
        "rgb/SC_rgb_rle_2frame.dcm": pydicom_file("SC_rgb_rle_2frame.dcm"),
        "rgb/SC_rgb_jpeg_dcmtk.dcm": pydicom_file("SC_rgb_jpeg_dcmtk.dcm"),
        "dose/rtdose": pydicom_file("rtdose.dcm"),
        "nm/JPEG-lossy.dcm": pydicom_file("JPEG-lossy.dcm"),
        "uid/leading_zero.dcm": broken(
            tmp_path, write_with, "lz.dcm", SOPInstanceUID=leading_zero_uid
        ),
        "bad/readme.txt": broken(tmp_path, write_not_dicom, "readme.txt"),
        "bad/truncated.dcm": broken(tmp_path, write_truncated, "truncated.dcm"),
        "bad/no_sop.dcm": broken(tmp_path, write_with, "no_sop.dcm", SOPInstanceUID=None),
        "uid/letters.dcm": broken(tmp_path, write_with, "letters.dcm", SeriesInstanceUID="1.2.x"),
        "bad/long_pid.dcm": broken(tmp_path, write_with, "long_pid.dcm", PatientID="P" * 257),
        "bad/pixels.dcm": broken(tmp_path, write_pixel_mismatch, "pixels.dcm"),
        "bad/no_ts.dcm": broken(tmp_path, write_without_transfer_syntax, "no_ts.dcm"),
    }
    run = run_import(mi, s3, datastore_id, files, "mixed/")

    assert run.job["jobStatus"] == "COMPLETED"
    assert set(run.manifest) == MANIFEST_KEYS
    out = run.job["outputS3Uri"]
    assert out == (f"s3://{BUCKET}/output/{datastore_id}-DicomImport-{run.job['jobId']}/")
    assert run.manifest["outputS3Uri"] == out
    assert run.manifest["successOutputS3Uri"] == f"{out}SUCCESS/"
    assert run.manifest["failureOutputS3Uri"] == f"{out}FAILURE/"
    assert run.manifest["warningsOutputS3Uri"] == f"{out}WARNING/"
    assert run.manifest["inputS3Uri"] == f"s3://{BUCKET}/mixed/"
    assert run.manifest["numberOfScannedFiles"] == 14
    assert run.manifest["numberOfImportedFiles"] == 8
    assert run.manifest["numberOfFilesWithCustomerError"] == 6
    assert run.manifest["numberOfFilesWithServerError"] == 0

    reported = [line["inputFile"] for line in run.success + run.failure]
    assert sorted(reported) == sorted(f"mixed/{key}" for key in files)
    assert {line["exception"]["exceptionType"] for line in run.failure} == {"ValidationException"}
    messages = {
        key: run.failed(f"mixed/bad/{key}")["message"]
        for key in (
            "readme.txt",
            "truncated.dcm",
            "no_sop.dcm",
            "long_pid.dcm",
            "pixels.dcm",
            "no_ts.dcm",
        )
    }
    assert "DICM" in messages["readme.txt"]
    assert "truncated" in messages["truncated.dcm"]
    assert messages["no_sop.dcm"] == "DICOM attribute SOPInstanceUID does not exist"
    assert "PatientID is 257 characters long; the maximum is 256" in messages["long_pid.dcm"]
    assert "Pixel data length" in messages["pixels.dcm"]
    assert messages["no_ts.dcm"] == "DICOM attribute TransferSyntaxUID does not exist"

    summaries = run.manifest["imageSetsSummary"]
    assert all(set(s) == SUMMARY_KEYS for s in summaries)
    assert run.manifest["numberOfGeneratedImageSets"] == len(summaries)
    assert {s["imageSetId"] for s in summaries} == {
        line["importResponse"]["imageSetId"] for line in run.success
    }
    assert all(s["imageSetVersion"] == 1 and s["isPrimary"] for s in summaries)
    # The two SC_rgb files share a series; everything else is a series of its own.
    assert len(summaries) == 7
    assert sorted(s["numberOfMatchedSOPInstances"] for s in summaries) == [1, 1, 1, 1, 1, 1, 2]

    warned = {line["inputFile"]: line["warnings"] for line in run.warning}
    assert set(warned) == {
        "mixed/nm/JPEG-lossy.dcm", "mixed/uid/leading_zero.dcm", "mixed/uid/letters.dcm",
    }
    assert warned["mixed/nm/JPEG-lossy.dcm"][0]["warning_reason_code"] == 0xB100
    assert warned["mixed/nm/JPEG-lossy.dcm"][0]["type"] == "TRANSCODING_EXCEPTION"
    assert warned["mixed/uid/leading_zero.dcm"][0]["warning_reason_code"] == 0xB201
    assert warned["mixed/uid/letters.dcm"][0]["warning_reason_code"] == 0xB201
    for line in run.warning:
        assert line["importResponse"] == run.succeeded(line["inputFile"])


def test_empty_output_files_are_written(mi: Any, s3: Any, datastore_id: str) -> None:
    run = run_import(mi, s3, datastore_id, {"a.dcm": pydicom_file("CT_small.dcm")}, "clean/")
    assert run.job["jobStatus"] == "COMPLETED"
    assert run.failure == []
    assert run.warning == []
    assert len(run.success) == 1


def test_output_bucket_missing_fails_the_job(mi: Any, s3: Any, datastore_id: str) -> None:
    run = run_import(
        mi,
        s3,
        datastore_id,
        {"a.dcm": pydicom_file("CT_small.dcm")},
        "nowhere/",
        output="s3://no-such-output-bucket/out/",
    )
    assert run.job["jobStatus"] == "FAILED"
    assert "no-such-output-bucket" in run.job["message"]
    found = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
    assert found == []


def test_input_bucket_missing_fails_the_job(mi: Any, s3: Any, datastore_id: str) -> None:
    job = mi.start_dicom_import_job(
        datastoreId=datastore_id,
        dataAccessRoleArn=ROLE,
        clientToken="missing-input",
        inputS3Uri="s3://no-such-input-bucket/in/",
        outputS3Uri=f"s3://{BUCKET}/output/",
    )
    props = wait_job_done(mi, datastore_id, job["jobId"])
    assert props["jobStatus"] == "FAILED"
    assert "no-such-input-bucket" in props["message"]


def test_file_over_the_size_limit_fails_alone(custom_service: Any) -> None:
    mi, s3, datastore_id = custom_service(max_bytes_per_file=20_000)
    files = {"big.dcm": pydicom_file("CT_small.dcm"), "small.dcm": pydicom_file("MR_small.dcm")}
    run = run_import(mi, s3, datastore_id, files, "sizes/")
    assert run.manifest["numberOfImportedFiles"] == 1
    assert run.failed("sizes/big.dcm") == {
        "exceptionType": "ValidationException",
        "message": "File is 39206 bytes; the limit is 20000",
    }


# -- grouping into image sets -------------------------------------------------


def small_series(seed: str, count: int, **attributes: Any) -> dict[int, pydicom.Dataset]:
    spec = series_spec(seed)
    slices = {}
    for index in range(count):
        ds = ct_slice(spec, index, rows=16, columns=16)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        slices[index] = ds
    return slices


def test_same_series_across_jobs_is_one_primary_set_with_versions(
    mi: Any, s3: Any, datastore_id: str
) -> None:
    first = small_series("grouping", 3)
    run1 = run_import(
        mi, s3, datastore_id, {f"s{i}.dcm": dicom_bytes(ds) for i, ds in first.items()}, "g1/"
    )
    (summary1,) = run1.manifest["imageSetsSummary"]
    assert summary1["imageSetVersion"] == 1
    assert summary1["isPrimary"] is True
    assert summary1["numberOfMatchedSOPInstances"] == 3
    set_id = summary1["imageSetId"]
    replaced_sop = first[0].SOPInstanceUID
    old_frame = metadata(mi, datastore_id, set_id)["Study"]["Series"][first[0].SeriesInstanceUID][
        "Instances"
    ][replaced_sop]["ImageFrames"][0]

    more = small_series("grouping", 5)
    again = more[0]
    again.PixelData = bytes(len(again.PixelData))  # same SOP instance, new pixels
    files = {f"s{i}.dcm": dicom_bytes(more[i]) for i in (0, 3, 4)}
    run2 = run_import(mi, s3, datastore_id, files, "g2/")

    (summary2,) = run2.manifest["imageSetsSummary"]
    assert summary2 == {
        "imageSetId": set_id,
        "imageSetVersion": 2,
        "isPrimary": True,
        "numberOfMatchedSOPInstances": 3,
    }
    assert {line["importResponse"]["imageSetId"] for line in run2.success} == {set_id}
    doc = metadata(mi, datastore_id, set_id)
    instances = doc["Study"]["Series"][first[0].SeriesInstanceUID]["Instances"]
    assert len(instances) == 5
    new_frame = instances[replaced_sop]["ImageFrames"][0]
    assert new_frame["ID"] != old_frame["ID"]
    zeros = zlib.crc32(bytes(16 * 16 * 2))
    assert new_frame["PixelDataChecksumFromBaseToFullResolution"][-1]["Checksum"] == zeros
    assert new_frame["MaxPixelValue"] == 0
    version1 = metadata(mi, datastore_id, set_id, "1")
    assert len(version1["Study"]["Series"][first[0].SeriesInstanceUID]["Instances"]) == 3
    got = mi.get_image_set(datastoreId=datastore_id, imageSetId=set_id)
    assert got["versionId"] == "2"
    assert got["imageSetWorkflowStatus"] == "IMPORTED"


def test_conflicting_instance_goes_to_a_non_primary_set(
    mi: Any, s3: Any, datastore_id: str
) -> None:
    slices = small_series("conflict", 3)
    other_patient = small_series("conflict", 5, PatientID="SOMEONE-ELSE")
    files = {f"a{i}.dcm": dicom_bytes(ds) for i, ds in slices.items()}
    files["b3.dcm"] = dicom_bytes(other_patient[3])
    files["b4.dcm"] = dicom_bytes(other_patient[4])
    run = run_import(mi, s3, datastore_id, files, "conflict/")

    primary = run.succeeded("conflict/a0.dcm")
    assert primary["isPrimary"] is True
    assert run.succeeded("conflict/a2.dcm") == primary
    other = run.succeeded("conflict/b3.dcm")
    assert other["isPrimary"] is False
    assert other["imageSetId"] != primary["imageSetId"]
    assert run.succeeded("conflict/b4.dcm") == other
    by_id = {s["imageSetId"]: s for s in run.manifest["imageSetsSummary"]}
    assert by_id[other["imageSetId"]]["isPrimary"] is False
    assert by_id[other["imageSetId"]]["numberOfMatchedSOPInstances"] == 2
    assert by_id[primary["imageSetId"]]["numberOfMatchedSOPInstances"] == 3
    assert (
        metadata(mi, datastore_id, other["imageSetId"])["Patient"]["DICOM"]["PatientID"]
        == "SOMEONE-ELSE"
    )
    got = mi.get_image_set(datastoreId=datastore_id, imageSetId=other["imageSetId"])
    assert got["isPrimary"] is False


# -- the metadata document ----------------------------------------------------


def test_metadata_document_levels_and_values(mi: Any, s3: Any, datastore_id: str) -> None:
    run = run_import(mi, s3, datastore_id, {"ct.dcm": pydicom_file("CT_small.dcm")}, "doc/")
    set_id = run.succeeded("doc/ct.dcm")["imageSetId"]
    doc = metadata(mi, datastore_id, set_id)
    source = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")

    assert doc["SchemaVersion"] == "1.1"
    assert doc["DatastoreID"] == datastore_id
    assert doc["ImageSetID"] == set_id
    patient = doc["Patient"]["DICOM"]
    assert patient["PatientName"] == "CompressedSamples^CT1"
    assert patient["PatientID"] == "1CT1"
    assert patient["PatientBirthDate"] is None
    assert patient["OtherPatientIDsSequence"][0] == {
        "PatientID": "ABCD1234",
        "TypeOfPatientID": "TEXT",
    }
    study = doc["Study"]["DICOM"]
    assert study["StudyInstanceUID"] == source.StudyInstanceUID
    assert study["StudyDate"] == "20040119"
    assert study["StudyTime"] == "072730"
    assert study["PatientWeight"] == "0.000000"
    assert "Modality" not in study
    series = doc["Study"]["Series"][source.SeriesInstanceUID]
    assert series["DICOM"]["Modality"] == "CT"
    assert series["DICOM"]["SeriesNumber"] == "1"
    instance = series["Instances"][source.SOPInstanceUID]
    attributes = instance["DICOM"]
    assert attributes["SOPInstanceUID"] == source.SOPInstanceUID
    assert attributes["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert attributes["FileMetaInformationVersion"] == "AAE="
    assert attributes["PixelData"] is None
    assert attributes["Rows"] == 128
    assert attributes["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert attributes["SliceThickness"] == "5.000000"
    assert attributes["ImagePositionPatient"] == ["-158.135803", "-179.035797", "-75.699997"]
    assert "PatientID" not in attributes and "StudyDate" not in attributes
    assert attributes["00091001"] == "GE_GENESIS_FF"
    assert instance["DICOMVRs"]["00091001"] == "LO"
    assert instance["DICOMVRs"]["00431028"] == "OB"
    assert attributes["00431028"] == base64.b64encode(source[0x00431028].value).decode()
    assert instance["StoredTransferSyntaxUID"] == HTJ2K_LOSSLESS
    assert instance["ChecksumType"] == "DECOMPRESSED"
    (image_frame,) = instance["ImageFrames"]
    assert len(image_frame["ID"]) == 32 and int(image_frame["ID"], 16) >= 0
    pixels = source.pixel_array
    assert image_frame["PixelDataChecksumFromBaseToFullResolution"] == [
        {"Width": 128, "Height": 128, "Checksum": zlib.crc32(little_endian(pixels).tobytes())}
    ]
    assert image_frame["MinPixelValue"] == int(pixels.min())
    assert image_frame["MaxPixelValue"] == int(pixels.max())


# -- frames ---------------------------------------------------------------------


def signed_slice() -> bytes:
    ds = ct_slice(series_spec("signed"), 0, rows=32, columns=24)
    ds.PixelRepresentation = 1
    values = np.linspace(-2000, 2000, 32 * 24).astype(np.int16).reshape(32, 24)
    ds.PixelData = values.tobytes()
    return dicom_bytes(ds)


TRANSCODED = {
    "CT_small.dcm": lambda: pydicom_file("CT_small.dcm"),
    "MR_small_bigendian.dcm": lambda: pydicom_file("MR_small_bigendian.dcm"),
    "MR_small_implicit.dcm": lambda: pydicom_file("MR_small_implicit.dcm"),
    "MR_small_RLE.dcm": lambda: pydicom_file("MR_small_RLE.dcm"),
    "MR_small_jpeg_ls_lossless.dcm": lambda: pydicom_file("MR_small_jpeg_ls_lossless.dcm"),
    "MR_small_jp2klossless.dcm": lambda: pydicom_file("MR_small_jp2klossless.dcm"),
    "SC_rgb_rle_2frame.dcm": lambda: pydicom_file("SC_rgb_rle_2frame.dcm"),
    "SC_rgb_small_odd_big_endian.dcm": lambda: pydicom_file("SC_rgb_small_odd_big_endian.dcm"),
    "rtdose.dcm": lambda: pydicom_file("rtdose.dcm"),
    "image_dfl.dcm": lambda: pydicom_file("image_dfl.dcm"),
    "generated_signed.dcm": signed_slice,
}


@pytest.mark.parametrize("name", sorted(TRANSCODED))
def test_frames_are_lossless_htj2k_in_jph(mi: Any, s3: Any, datastore_id: str, name: str) -> None:
    data = TRANSCODED[name]()
    run = run_import(mi, s3, datastore_id, {name: data}, f"frames-{name}/")
    set_id = run.succeeded(f"frames-{name}/{name}")["imageSetId"]
    instance = only_instance(metadata(mi, datastore_id, set_id))
    source = pydicom.dcmread(io.BytesIO(data))
    expected = [little_endian(p) for p in iter_pixels(source, as_rgb=False)]

    assert instance["StoredTransferSyntaxUID"] == HTJ2K_LOSSLESS
    assert len(instance["ImageFrames"]) == len(expected)
    signed = int(source.PixelRepresentation) == 1
    for image_frame, pixels in zip(instance["ImageFrames"], expected, strict=True):
        stored, content_type = frame(mi, datastore_id, set_id, image_frame["ID"])
        assert content_type == "image/jph"
        assert image_frame["FrameSizeInBytes"] == len(stored)
        boxes = jph_boxes(stored)
        assert boxes[b"jP  "] == b"\r\n\x87\n"
        assert boxes[b"ftyp"] == b"jph \x00\x00\x00\x00jph "
        height, width, components, bpc, compression = struct.unpack(">IIHBB", boxes[b"ihdr"][:12])
        assert (height, width) == (source.Rows, source.Columns)
        assert components == int(source.SamplesPerPixel)
        assert compression == 7
        assert bool(bpc & 0x80) == signed
        assert boxes[b"colr"][0] == 1
        decoded = little_endian(imagecodecs.htj2k_decode(boxes[b"jp2c"]))
        np.testing.assert_array_equal(decoded, pixels)
        checksum = image_frame["PixelDataChecksumFromBaseToFullResolution"][-1]
        assert checksum == {
            "Width": int(source.Columns),
            "Height": int(source.Rows),
            "Checksum": zlib.crc32(decoded.tobytes()),
        }
        assert image_frame["MinPixelValue"] == pixels.min()
        assert image_frame["MaxPixelValue"] == pixels.max()


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg"), ("JPEG2000.dcm", "image/j2c")],
)
def test_lossy_frames_stay_as_they_came(
    mi: Any, s3: Any, datastore_id: str, name: str, content_type: str
) -> None:
    data = pydicom_file(name)
    run = run_import(mi, s3, datastore_id, {name: data}, f"lossy-{name}/")
    assert run.warning == []
    set_id = run.succeeded(f"lossy-{name}/{name}")["imageSetId"]
    instance = only_instance(metadata(mi, datastore_id, set_id))
    source = pydicom.dcmread(io.BytesIO(data))
    assert instance["StoredTransferSyntaxUID"] == source.file_meta.TransferSyntaxUID
    (image_frame,) = instance["ImageFrames"]
    stored, served_as = frame(mi, datastore_id, set_id, image_frame["ID"])
    assert served_as == content_type
    assert stored == next(generate_frames(source.PixelData, number_of_frames=1))
    decoded = little_endian(
        source.pixel_array if name == "JPEG2000.dcm" else next(iter_pixels(source, as_rgb=False))
    )
    checksum = image_frame["PixelDataChecksumFromBaseToFullResolution"][-1]["Checksum"]
    assert checksum == zlib.crc32(decoded.tobytes())


def test_undecodable_pixel_data_imports_as_it_came_with_a_warning(
    mi: Any, s3: Any, datastore_id: str
) -> None:
    data = pydicom_file("JPEG-lossy.dcm")
    run = run_import(mi, s3, datastore_id, {"nm.dcm": data}, "undecodable/")
    (line,) = run.warning
    assert line["inputFile"] == "undecodable/nm.dcm"
    assert [w["warning_reason_code"] for w in line["warnings"]] == [45312]
    instance = only_instance(metadata(mi, datastore_id, line["importResponse"]["imageSetId"]))
    assert instance["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.51"
    (image_frame,) = instance["ImageFrames"]
    assert image_frame["PixelDataChecksumFromBaseToFullResolution"] == []
    stored, _ = frame(mi, datastore_id, line["importResponse"]["imageSetId"], image_frame["ID"])
    source = pydicom.dcmread(io.BytesIO(data))
    assert stored == next(generate_frames(source.PixelData, number_of_frames=1))


@pytest.mark.parametrize("transcode", [True, False])
@pytest.mark.parametrize(("fragments", "declared"), [(1, 10_000), (3, 5)])
def test_fewer_fragments_than_frames_imports_with_frame_number_mismatch(
    custom_service: Any, transcode: bool, fragments: int, declared: int
) -> None:
    """Every frame needs a fragment: NumberOfFrames over the fragments there
    are imports with FRAME_NUMBER_MISMATCH, the fragments stored as frames."""
    mi, s3, datastore_id = custom_service(transcode_htj2k=transcode)
    ds = ct_slice(series_spec(f"mismatch-{fragments}"), 0, rows=8, columns=8)
    ds.NumberOfFrames = fragments
    pixels = np.arange(fragments * 64, dtype=np.uint16).reshape(fragments, 8, 8)
    ds.compress(RLELossless, pixels.squeeze())
    ds.NumberOfFrames = declared
    run = run_import(mi, s3, datastore_id, {"rle.dcm": dicom_bytes(ds)}, "mismatch/")
    (line,) = run.warning
    assert [w["type"] for w in line["warnings"]] == ["FRAME_NUMBER_MISMATCH"]
    assert line["warnings"][0]["message"] == (
        f"NumberOfFrames is {declared} but the pixel data holds {fragments} fragment(s); "
        "the fragments are stored as the frames"
    )
    instance = only_instance(metadata(mi, datastore_id, line["importResponse"]["imageSetId"]))
    assert len(instance["ImageFrames"]) == fragments


def test_without_transcoding_native_frames_are_little_endian_bytes(custom_service: Any) -> None:
    mi, s3, datastore_id = custom_service(transcode_htj2k=False)
    data = pydicom_file("MR_small_bigendian.dcm")
    run = run_import(mi, s3, datastore_id, {"mr.dcm": data}, "native/")
    set_id = run.succeeded("native/mr.dcm")["imageSetId"]
    instance = only_instance(metadata(mi, datastore_id, set_id))
    assert instance["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    (image_frame,) = instance["ImageFrames"]
    stored, content_type = frame(mi, datastore_id, set_id, image_frame["ID"])
    assert content_type == "application/octet-stream"
    pixels = little_endian(pydicom.dcmread(io.BytesIO(data)).pixel_array)
    assert stored == pixels.tobytes()
    assert image_frame["FrameSizeInBytes"] == 64 * 64 * 2


# -- where input objects are read from ------------------------------------------


def test_input_on_another_s3_endpoint_is_read_through_it(
    custom_service: Any, moto_s3_endpoint: str
) -> None:
    """The embedded S3 is read in-process; one given by s3_endpoint, as a
    client would read it."""
    mi, s3, datastore_id = custom_service(s3_endpoint=moto_s3_endpoint)
    run = run_import(mi, s3, datastore_id, {"mr.dcm": pydicom_file("MR_small.dcm")}, "ext/")
    assert run.manifest["numberOfImportedFiles"] == 1


@pytest.mark.parametrize(
    ("bucket", "code"), [(BUCKET, "NoSuchKey"), ("no-such-bucket", "NoSuchBucket")]
)
def test_a_missing_input_object_read_in_process_is_a_client_error(
    s3: Any, bucket: str, code: str
) -> None:
    from botocore.exceptions import ClientError

    from emulator.worker.input_objects import read_input_object

    with pytest.raises(ClientError) as raised:
        read_input_object(s3, bucket, "gone.dcm", in_process=True)
    assert raised.value.response["Error"]["Code"] == code


def test_a_video_is_one_frame_whose_checksum_is_the_whole_stream(
    mi: Any, s3: Any, datastore_id: str
) -> None:
    """AWS: for video, the checksum covers the original video object."""
    from pydicom.encaps import encapsulate

    ds = ct_slice(series_spec("video"), 0, rows=8, columns=8)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102.1")  # H.264, fragmentable
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    fragments = [b"\x00\x00\x00\x01\x09\xf0" * 10, b"\x00\x00\x00\x01\x65\x88" * 7]
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    run = run_import(mi, s3, datastore_id, {"video.dcm": dicom_bytes(ds)}, "video/")
    set_id = run.succeeded("video/video.dcm")["imageSetId"]
    (image_frame,) = only_instance(metadata(mi, datastore_id, set_id))["ImageFrames"]
    stream = b"".join(fragments)

    assert frame(mi, datastore_id, set_id, image_frame["ID"])[0] == stream
    assert image_frame["PixelDataChecksumFromBaseToFullResolution"] == [
        {"Width": 8, "Height": 8, "Checksum": zlib.crc32(stream)}]
