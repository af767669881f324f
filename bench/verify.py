"""Pixel verification: ``pixels`` mode of ``tasks.verify`` against the naive way.

The naive way, as AWS's samples show it: for every frame, ``GetImageFrame``,
decode the HTJ2K (OpenJPH, as AWS's sample uses), decode the source file's
pixels and compare them. Ours: one ``GetImageSetMetadata`` per image set,
then every source frame decoded and its CRC-32 compared with the checksum
HealthImaging keeps in the metadata. Both get the same metadata documents,
fetched once, and go over the same 2,000 512x512 CT slices (4 series)
imported into the local service, on one process and then on two (the files
split in halves for the naive way; ``validation_workers`` = 2 for ours,
worker start included, as the flow runs it).

    .venv/bin/python -m bench.verify [--slices 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import orjson
import pydicom

from bench.common import (
    ROLE,
    active_datastore,
    clients,
    local_service,
    median,
    print_table,
    service_env,
)
from config.settings import VerifyMode
from emulator.samples import series_spec, write_ct_series
from tasks.statuses import Verification
from tasks.verify.metadata import image_set_documents
from tasks.verify.results import FileToVerify
from tasks.verify.run import local_reader, verify_files

BUCKET = "bench-verify"
SERIES = 4
PROCESSES = (1, 2)


def import_corpus(endpoint: str, folder: Path, slices: int) -> tuple[str, list[FileToVerify]]:
    """The slices written, uploaded and imported in one job; the files to
    verify as its output lists them."""
    paths = [path for number in range(SERIES) for path in write_ct_series(
        folder / f"series{number}", slices // SERIES, series_spec(f"bench-verify-{number}"))]
    mi, s3 = clients(endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for path in paths:
        s3.upload_file(str(path), BUCKET, f"in/{path.parent.name}/{path.name}")
    datastore_id = active_datastore(mi, "bench-verify")
    job_id = mi.start_dicom_import_job(
        datastoreId=datastore_id, dataAccessRoleArn=ROLE, clientToken="bench-verify",
        inputS3Uri=f"s3://{BUCKET}/in/", outputS3Uri=f"s3://{BUCKET}/out/")["jobId"]
    while (job := mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)[
            "jobProperties"])["jobStatus"] not in ("COMPLETED", "FAILED"):
        time.sleep(0.2)
    output = job["outputS3Uri"].removeprefix(f"s3://{BUCKET}/").rstrip("/")
    lines = s3.get_object(Bucket=BUCKET, Key=f"{output}/SUCCESS/success.ndjson")[
        "Body"].read().splitlines()
    landed = {row["inputFile"].split("/", 1)[1]: row["importResponse"]["imageSetId"]
              for row in map(orjson.loads, lines)}
    files = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files.append(FileToVerify(str(path), ds.SOPInstanceUID, ds.StudyInstanceUID,
                                  ds.SeriesInstanceUID,
                                  landed[f"{path.parent.name}/{path.name}"], job_id))
    return datastore_id, files


def ours(datastore_id: str, files: list[FileToVerify], processes: int) -> int:
    results = verify_files(datastore_id, files, VerifyMode.PIXELS, local_reader(processes))
    return sum(r.verification is Verification.VERIFIED for r in results)


def naive(datastore_id: str, files: list[FileToVerify], processes: int) -> int:
    mi, _ = clients(os.environ["AWS_ENDPOINT_URL"])
    documents = image_set_documents(mi, datastore_id, {f.image_set_id for f in files})
    work = [(f.source_uri, f.image_set_id, _frame_ids(documents[f.image_set_id], f))
            for f in files]
    if processes == 1:
        return _naive_part(datastore_id, work)
    halves = [work[i::processes] for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        return sum(pool.map(_naive_part, [datastore_id] * processes, halves))


def _frame_ids(document: dict[str, Any] | None, item: FileToVerify) -> list[str]:
    assert document is not None, "every image set of the bench is there"
    instance = document["Study"]["Series"][item.series_instance_uid]["Instances"][
        item.sop_instance_uid]
    return [frame["ID"] for frame in instance["ImageFrames"]]


def _naive_part(datastore_id: str, work: Sequence[tuple[str, str, list[str]]]) -> int:
    mi, _ = clients(os.environ["AWS_ENDPOINT_URL"])
    same = 0
    for uri, image_set_id, frame_ids in work:
        source = pydicom.dcmread(uri).pixel_array
        stored = [imagecodecs.htj2k_decode(_codestream(mi.get_image_frame(
            datastoreId=datastore_id, imageSetId=image_set_id,
            imageFrameInformation={"imageFrameId": frame_id})["imageFrameBlob"].read()))
            for frame_id in frame_ids]
        same += all(np.array_equal(frame, source) for frame in stored)
    return same


def _codestream(jph: bytes) -> bytes:
    """The jp2c box of a JPH file: OpenJPH decodes a raw codestream."""
    offset = 0
    while offset < len(jph):
        length, kind = struct.unpack_from(">I4s", jph, offset)
        if kind == b"jp2c":
            return jph[offset + 8: offset + length if length else len(jph)]
        offset += length
    raise ValueError("no jp2c box")


def bench(datastore_id: str, files: list[FileToVerify], repeats: int) -> None:
    methods = (("naive (GetImageFrame per frame)", naive),
               ("ours (pixels: CRC-32 vs metadata)", ours))
    runs = [(label, method, processes) for processes in PROCESSES for label, method in methods]
    for _, method, processes in runs:
        # Untimed: the first pool starts the fork server (tasks.worker_processes
        # explains it), once per process, as in a flow's first stage.
        method(datastore_id, files[:40], processes)
    times: dict[tuple[str, int], list[float]] = {}
    # Repeats take turns, so that a change in the machine's load falls on
    # every row alike, not on the rows measured last.
    for _ in range(repeats):
        for label, method, processes in runs:
            started = time.perf_counter()
            checked = method(datastore_id, files, processes)
            times.setdefault((label, processes), []).append(time.perf_counter() - started)
            if checked != len(files):
                raise RuntimeError(f"{label}: {checked} of {len(files)} files matched")
    seconds = {key: median(values) for key, values in times.items()}
    naive_label = "naive (GetImageFrame per frame)"
    rows = []
    for (label, processes), median_s in seconds.items():
        rows.append([label, processes, len(files), median_s, len(files) / median_s,
                     seconds[(naive_label, processes)] / median_s,
                     seconds[(label, 1)] / median_s])
    print_table(
        f"**Pixel verification of {len(files)} 512x512 CT slices (median of {repeats})**",
        ["method", "processes", "files", "median s", "files/s", "vs naive",
         "vs one process"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    environment = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp, local_service() as endpoint:
        # The product's clients find the service as they would AWS: by the variables.
        os.environ.update(service_env(endpoint))
        try:
            datastore_id, files = import_corpus(endpoint, Path(tmp), args.slices)
            bench(datastore_id, files, args.repeats)
        finally:
            os.environ.clear()
            os.environ.update(environment)


if __name__ == "__main__":
    main()
