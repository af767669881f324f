"""The local HealthImaging service: import throughput and API latency.

Import: 512x512 16-bit CT slices imported with HTJ2K transcoding (AWS
behaviour) and without (frames kept as they came), against the baseline of
simply reading the same objects from the same S3 endpoint. API: latency of
GetDICOMImportJob under 16 concurrent clients, against S3 HeadObject on the
same endpoint and concurrency (what the server stack costs by itself).

    .venv/bin/python -m bench.emulator_service [--files 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    ROLE,
    active_datastore,
    clients,
    local_service,
    median,
    percentile,
    print_table,
)
from emulator.samples import write_ct_series

BUCKET = "bench-import"


def upload_corpus(s3: Any, files: list[Path]) -> int:
    s3.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: s3.upload_file(str(p), BUCKET, f"ct/{p.name}"), files))
    return sum(p.stat().st_size for p in files)


def time_s3_read(s3: Any, files: list[Path]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda p: s3.get_object(Bucket=BUCKET, Key=f"ct/{p.name}")["Body"].read(), files
            )
        )
    return time.perf_counter() - started


def time_import(mi: Any, run: int) -> float:
    datastore_id = active_datastore(mi, f"bench-{run}")
    started = time.perf_counter()
    job = mi.start_dicom_import_job(
        datastoreId=datastore_id,
        dataAccessRoleArn=ROLE,
        clientToken=f"bench-{run}",
        inputS3Uri=f"s3://{BUCKET}/ct/",
        outputS3Uri=f"s3://{BUCKET}/out/",
    )
    while True:
        props = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])
        status = props["jobProperties"]["jobStatus"]
        if status in ("COMPLETED", "FAILED"):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    if status != "COMPLETED":
        raise RuntimeError(f"bench import failed: {props['jobProperties'].get('message')}")
    return elapsed


def bench_import(files: list[Path], repeats: int) -> None:
    rows = []
    baseline = None
    for label, flags in (("HTJ2K lossless (AWS default)", ()), ("no transcoding", ("--no-htj2k",))):
        with local_service(*flags) as endpoint:
            mi, s3 = clients(endpoint)
            size = upload_corpus(s3, files)
            if baseline is None:
                baseline = median([time_s3_read(s3, files) for _ in range(repeats)])
                rows.append(
                    (
                        "S3 GetObject of every file (baseline)",
                        len(files),
                        size / 1e6,
                        baseline,
                        len(files) / baseline,
                        size / 1e6 / baseline,
                        1.0,
                    )
                )
            seconds = median([time_import(mi, run) for run in range(repeats)])
            rows.append(
                (
                    label,
                    len(files),
                    size / 1e6,
                    seconds,
                    len(files) / seconds,
                    size / 1e6 / seconds,
                    seconds / baseline,
                )
            )
    print_table(
        f"Import throughput, 512x512 16-bit CT slices (median of {repeats})",
        ["mode", "files", "MB", "median s", "files/s", "MB/s", "time vs baseline"],
        rows,
    )


def latencies(call: Any, clients_count: int, calls_each: int) -> list[float]:
    results: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients_count)

    def worker(client_call: Any) -> None:
        mine = []
        barrier.wait()
        for _ in range(calls_each):
            started = time.perf_counter()
            client_call()
            mine.append(time.perf_counter() - started)
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker, args=(call(),)) for _ in range(clients_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def bench_api(concurrency: int, calls_each: int) -> None:
    with local_service() as endpoint:
        mi, s3 = clients(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="probe", Body=b"x")
        datastore_id = active_datastore(mi, "bench-api")
        job_id = mi.start_dicom_import_job(
            datastoreId=datastore_id,
            dataAccessRoleArn=ROLE,
            clientToken="api",
            inputS3Uri=f"s3://{BUCKET}/none/",
            outputS3Uri=f"s3://{BUCKET}/out/",
        )["jobId"]

        def get_job() -> Any:
            client = clients(endpoint)[0]
            return lambda: client.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)

        def head_object() -> Any:
            client = clients(endpoint)[1]
            return lambda: client.head_object(Bucket=BUCKET, Key="probe")

        rows = []
        base = latencies(head_object, concurrency, calls_each)
        ours = latencies(get_job, concurrency, calls_each)
        for label, values in (
            ("S3 HeadObject (moto, baseline)", base),
            ("GetDICOMImportJob", ours),
        ):
            rows.append(
                (
                    label,
                    len(values),
                    median(values) * 1000,
                    percentile(values, 0.99) * 1000,
                    median(values) / median(base),
                )
            )
    print_table(
        f"API latency under {concurrency} concurrent clients (ms)",
        ["operation", "calls", "median ms", "p99 ms", "median vs baseline"],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_ct_series(Path(tmp) / "ct", args.files)
        bench_import(files, args.repeats)
    bench_api(args.clients, args.calls)


if __name__ == "__main__":
    main()
