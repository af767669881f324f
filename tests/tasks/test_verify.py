"""Verification against the local service: files imported through boto3 as
HealthImaging imports them, then verified by ``tasks.verify`` with the
metadata the service serves."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import imagecodecs
import numpy as np
import pandas as pd
import pydicom
import pytest
from botocore.config import Config
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from config.settings import VerifyMode
from emulator.edge.server import LocalService
from emulator.samples import PYDICOM_TEST_FILES, ct_slice, series_spec, uid
from tasks import interruption
from tasks.manifest import read_job_output
from tasks.statuses import Verification
from tasks.verify.audit import sign_off
from tasks.verify.results import FileToVerify, FileVerification, with_verification
from tasks.verify.run import local_reader, verify_files
from tasks.verify.source import SourceFacts

BUCKET = "verify"
ROLE = "arn:aws:iam::123456789012:role/ImportRole"
# Every source syntax pydicom has a lossless test file in, multi-frame ones too.
STORED_AS_HTJ2K = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                   "image_dfl.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm",
                   "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm",
                   "MR_small_jp2klossless.dcm"]
KEPT_AS_THEY_CAME = ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"]


def wait_until(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def clients() -> tuple[Any, Any]:
    return boto3.client("medical-imaging", config=Config(inject_host_prefix=False)), \
        boto3.client("s3")


def import_files(
    folder: Path, names: list[str], lossless: str = "HTJ2K",
    made: dict[str, pydicom.Dataset] | None = None,
) -> tuple[str, list[FileToVerify]]:
    """pydicom's test files (and ``made`` ones) written to ``folder`` (the
    source) and imported in one job; the files to verify as the job's output
    lists them."""
    made = made or {}
    mi, s3 = clients()
    s3.create_bucket(Bucket=BUCKET)
    datastore_id = mi.create_datastore(datastoreName=f"verify-{lossless}",
                                       losslessStorageFormat=lossless)["datastoreId"]
    wait_until(lambda: mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"][
        "datastoreStatus"] == "ACTIVE")
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"in/{datastore_id}"
    for name in [*names, *made]:
        # Several of pydicom's files share a SOP Instance UID: one each here,
        # the pixel data as it is in the file.
        ds = made.get(name) or pydicom.dcmread(PYDICOM_TEST_FILES / name)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(name)
        ds.save_as(folder / name, enforce_file_format=True)
        s3.upload_file(str(folder / name), BUCKET, f"{prefix}/{name}")
    job_id = mi.start_dicom_import_job(
        datastoreId=datastore_id, dataAccessRoleArn=ROLE, clientToken=datastore_id,
        inputS3Uri=f"s3://{BUCKET}/{prefix}/", outputS3Uri=f"s3://{BUCKET}/out/")["jobId"]
    job = wait_until(lambda: (p := mi.get_dicom_import_job(
        datastoreId=datastore_id, jobId=job_id)["jobProperties"])["jobStatus"] in (
        "COMPLETED", "FAILED") and p)
    output = read_job_output(job["outputS3Uri"])
    landed = pd.concat([output.success, output.warning])
    files = []
    for key, image_set_id in zip(landed["inputFile"], landed["imageSetId"], strict=True):
        path = folder / key.rsplit("/", 1)[-1]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files.append(FileToVerify(str(path), ds.SOPInstanceUID, ds.StudyInstanceUID,
                                  ds.SeriesInstanceUID, image_set_id, job_id))
    assert len(files) == len(names) + len(made)
    return datastore_id, files


def verified(datastore_id: str, files: list[FileToVerify], mode: VerifyMode) -> dict[str, Any]:
    results = verify_files(datastore_id, files, mode, local_reader(1))
    return {Path(r.source_uri).name: (r.verification, r.detail) for r in results}


def stored_metadata(service: LocalService, image_set_id: str) -> tuple[str, dict[str, Any]]:
    version = service.backend.image_sets.version(image_set_id)
    return version["metadataKey"], json.loads(
        gzip.decompress(service.store.get_blob(version["metadataKey"])))


@pytest.mark.parametrize(("lossless", "names", "stored"), [
    ("HTJ2K", STORED_AS_HTJ2K + KEPT_AS_THEY_CAME,
     {"1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91"}),
    ("JPEG_2000_LOSSLESS", ["CT_small.dcm", "MR_small_jp2klossless.dcm",
                            "SC_rgb_rle_2frame.dcm"], {"1.2.840.10008.1.2.4.90"}),
])
def test_pydicom_files_in_every_stored_syntax_verify(
    local_aws: LocalService, tmp_path: Path, lossless: str, names: list[str], stored: set[str]
) -> None:
    datastore_id, files = import_files(tmp_path / "source", names, lossless)
    syntaxes = set()
    for item in files:
        _, document = stored_metadata(local_aws, item.image_set_id)
        instance = document["Study"]["Series"][item.series_instance_uid]["Instances"][
            item.sop_instance_uid]
        syntaxes.add(instance["StoredTransferSyntaxUID"])
    assert syntaxes == stored

    for mode in (VerifyMode.METADATA, VerifyMode.PIXELS):
        assert verified(datastore_id, files, mode) == dict.fromkeys(
            names, (Verification.VERIFIED, None)), mode


def test_a_video_verifies_by_the_checksum_of_its_stream(
    local_aws: LocalService, tmp_path: Path
) -> None:
    video = ct_slice(series_spec("verify-video"), 0, rows=8, columns=8)
    video.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102.1")  # H.264, fragmentable
    video.BitsAllocated, video.BitsStored, video.HighBit = 8, 8, 7
    video.NumberOfFrames = 30
    video.PixelData = encapsulate([b"\x00\x00\x00\x01\x09\xf0" * 10,
                                   b"\x00\x00\x00\x01\x65\x88" * 7])
    video["PixelData"].VR = "OB"
    datastore_id, files = import_files(tmp_path / "source", [], made={"video.dcm": video})

    assert verified(datastore_id, files, VerifyMode.PIXELS) == {
        "video.dcm": (Verification.VERIFIED, None)}


def test_frame_altered_after_import_is_a_mismatch_naming_the_frame(
    local_aws: LocalService, tmp_path: Path
) -> None:
    datastore_id, files = import_files(tmp_path / "source", ["SC_rgb_rle_2frame.dcm"])
    (item,) = files
    # The data store now holds other pixels as frame 2: its stored frame and
    # the checksum HealthImaging keeps of it both describe them.
    key, document = stored_metadata(local_aws, item.image_set_id)
    instance = document["Study"]["Series"][item.series_instance_uid]["Instances"][
        item.sop_instance_uid]
    second = instance["ImageFrames"][1]
    other = np.zeros((100, 100, 3), dtype=np.uint8)
    local_aws.store.put_blob(f"frames/{second['ID']}", bytes(imagecodecs.htj2k_encode(other)))
    second["PixelDataChecksumFromBaseToFullResolution"][-1]["Checksum"] = (
        __import__("zlib").crc32(other.data))
    local_aws.store.put_blob(key, gzip.compress(json.dumps(document).encode()))

    assert verified(datastore_id, files, VerifyMode.PIXELS) == {
        "SC_rgb_rle_2frame.dcm": (Verification.MISMATCH, "pixel checksum differs in frame 2")}
    # The metadata alone does not look at pixels.
    assert verified(datastore_id, files, VerifyMode.METADATA)[
        "SC_rgb_rle_2frame.dcm"][0] is Verification.VERIFIED


def test_deleted_image_set_makes_its_files_missing(
    local_aws: LocalService, tmp_path: Path
) -> None:
    datastore_id, files = import_files(tmp_path / "source", ["CT_small.dcm", "MR_small.dcm"])
    mi, _ = clients()
    gone = files[0].image_set_id
    mi.delete_image_set(datastoreId=datastore_id, imageSetId=gone)
    wait_until(lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=gone)[
        "imageSetState"] == "DELETED")

    assert verified(datastore_id, files, VerifyMode.METADATA) == {
        "CT_small.dcm": (Verification.MISSING, f"image set {gone} not found"),
        "MR_small.dcm": (Verification.VERIFIED, None),
    }


def test_attribute_that_differs_is_named_never_its_value(
    local_aws: LocalService, tmp_path: Path
) -> None:
    datastore_id, files = import_files(tmp_path / "source", ["CT_small.dcm"])
    source = Path(files[0].source_uri)
    ds = pydicom.dcmread(source)
    ds.PatientID = "SECRET-4711"
    ds.NumberOfFrames = 2
    ds.save_as(source)

    ((verification, detail),) = verified(datastore_id, files, VerifyMode.METADATA).values()

    assert verification is Verification.MISMATCH
    assert detail == "PatientID differs; 1 frames stored, 2 in the source"
    assert "SECRET" not in detail


def test_a_reported_coercion_is_not_a_mismatch(local_aws: LocalService, tmp_path: Path) -> None:
    datastore_id, files = import_files(tmp_path / "source", ["CT_small.dcm"])
    source = Path(files[0].source_uri)
    ds = pydicom.dcmread(source)
    ds.StudyDescription = "changed"
    ds.save_as(source)
    warned = [FileToVerify(**{**files[0].__dict__,
                              "warning_codes": "COERCION_OF_DATA_ELEMENTS(0xB000)"})]

    assert verified(datastore_id, warned, VerifyMode.METADATA) == {"CT_small.dcm": (
        Verification.VERIFIED, "as the import warned: StudyDescription differs")}


def test_report_rows_take_the_verification_and_a_discrepancy_fails_the_file() -> None:
    files = pd.DataFrame({"source_uri": ["a", "b", "c", "d"],
                          "status": ["imported", "imported_with_warnings", "imported",
                                     "invalid"]})
    results = [FileVerification("a", Verification.VERIFIED),
               FileVerification("b", Verification.MISMATCH, "PatientID differs"),
               FileVerification("c", Verification.MISSING, "image set x not found")]

    rows = with_verification(files, results)

    assert rows["status"].tolist() == ["imported", "verify_mismatch", "verify_mismatch",
                                       "invalid"]
    assert rows["verification"].tolist() == ["verified", "mismatch", "missing", "not_checked"]
    assert rows["verification_detail"].tolist() == [None, "PatientID differs",
                                                    "image set x not found", None]


def test_batches_of_image_sets_give_the_results_of_one_batch(
    local_aws: LocalService, tmp_path: Path
) -> None:
    """A data store's documents do not fit in memory together, so they are read
    a batch of whole image sets at a time; each set's still once, and on two
    processes the sources are read in parts whose results stream back."""
    made = {f"series{n}-{i}.dcm": ct_slice(series_spec(f"verify-batch-{n}"), i, rows=8, columns=8)
            for n in range(3) for i in range(14)}
    datastore_id, files = import_files(tmp_path / "source", [], made=made)
    sets = sorted({item.image_set_id for item in files})
    assert len(sets) == 3
    mi, _ = clients()
    gone = next(item for item in files if item.source_uri.endswith("series0-0.dcm")).image_set_id
    mi.delete_image_set(datastoreId=datastore_id, imageSetId=gone)
    wait_until(lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=gone)[
        "imageSetState"] == "DELETED")
    altered = tmp_path / "source" / "series1-3.dcm"
    ds = pydicom.dcmread(altered)
    ds.PatientID = "SECRET-4711"
    ds.save_as(altered)
    reads: list[str] = []
    mi.meta.events.register("before-parameter-build.medical-imaging.GetImageSetMetadata",
                            lambda params, **_: reads.append(params["imageSetId"]))

    whole = verify_files(datastore_id, files, VerifyMode.PIXELS, local_reader(1), client=mi)
    reads.clear()
    batched = verify_files(datastore_id, files, VerifyMode.PIXELS, local_reader(2), client=mi,
                           batch_files=14)

    assert batched == whole
    assert sorted(reads) == sets
    outcome = {Path(r.source_uri).name: r.verification for r in batched}
    assert sorted(name for name, v in outcome.items() if v is Verification.MISSING) == sorted(
        f"series0-{i}.dcm" for i in range(14))
    assert [name for name, v in outcome.items() if v is Verification.MISMATCH] == [
        "series1-3.dcm"]
    assert sum(v is Verification.VERIFIED for v in outcome.values()) == 27


def test_a_stop_ends_the_reading_and_leaves_the_rest_not_checked(
    local_aws: LocalService, tmp_path: Path
) -> None:
    made = {f"slice-{i:02d}.dcm": ct_slice(series_spec("verify-stop"), i, rows=8, columns=8)
            for i in range(40)}
    datastore_id, files = import_files(tmp_path / "source", [], made=made)
    handed: list[str] = []

    def read_then_stop(uris: Sequence[str], pixels: bool) -> Iterator[SourceFacts]:
        """Ctrl-C arrives once five files are read (on two processes)."""
        for number, facts in enumerate(local_reader(2)(uris, pixels), 1):
            handed.append(facts.source_uri)
            if number == 5:
                interruption.request_stop()
            yield facts

    try:
        results = verify_files(datastore_id, files, VerifyMode.PIXELS, read_then_stop)
    finally:
        interruption.clear()

    verdicts = {r.source_uri: (r.verification, r.detail) for r in results}
    assert [uri for uri, (v, _) in verdicts.items() if v is Verification.VERIFIED] == handed[:5]
    assert len(handed) == 5
    assert {verdict for uri, verdict in verdicts.items() if uri not in handed} == {
        (Verification.NOT_CHECKED, "verification stopped before this file was checked")}


def test_a_record_is_signed_off_after_the_imports_it_covers(tmp_path: Path) -> None:
    """Down to the microsecond: signed off within the second of its last
    import, it read as signed off before it."""
    report = tmp_path / "verification.csv"
    report.write_text("uri,verification\n")
    imported_at = pd.Series([pd.Timestamp.now(tz="UTC")])

    record = sign_off("d" * 32, "store", "/landing", "metadata", {"verified": 1},
                      {"csv": str(report)}, imported_at)

    assert record.imports_from == record.imports_to
    assert record.imports_to is not None and record.imports_to <= record.signed_off_at
