"""Validation, staging and verification's reading of the sources on a Dask
cluster, when ``dask_address`` names one.

Only these stages go to the cluster: they read the files (headers, every
byte, every frame decoded), so they are what outgrows one machine. Import jobs run in
HealthImaging and the flow only waits on them; they stay on the flow's thread
pool.

Work goes out in parts of hundreds of files or more (a task run costs tens of
milliseconds on a worker, plus an API record each), about four parts per
worker thread so that a slow worker does not hold up the end. Results come
back in input order, so the report is the one a local run writes: duplicates
are marked here, over all parts, exactly as ``validate_files`` does.

Workers need what the flow process needs: this package installed, the AWS
credentials and endpoint variables, and read access to the source (S3, or a
folder mounted at the same path on every worker). See docs/scale.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from prefect_dask import DaskTaskRunner

from tasks.batch import Batch
from tasks.discover import SourceFile
from tasks.stage import StagedFile, stage
from tasks.validate import ValidationRecord, mark_duplicates, validate_part
from tasks.verify.run import SourceReader, local_reader
from tasks.verify.source import SourceFacts, read_sources_part

PARTS_PER_THREAD = 4
MIN_PART_FILES = 500

T = TypeVar("T")


def validate_on_cluster(
    address: str, files: Sequence[SourceFile], include_phi: bool
) -> list[ValidationRecord]:
    with DaskTaskRunner(address=address) as runner:
        parts = _parts(list(files), _threads(runner), lambda _: 1)
        futures = [
            runner.submit(validate_part, {"files": part, "include_phi": include_phi})
            for part in parts
        ]
        records = [record for future in futures for record in future.result()]
    return mark_duplicates(records)


def stage_on_cluster(
    address: str, batches: Sequence[Batch], staging_prefix: str, run_id: str, concurrency: int
) -> list[StagedFile]:
    """Whole batches per part: each batch's prefix is listed once, by the
    worker that stages it."""
    staging = stage.with_options(name="stage-part", retries=2, retry_delay_seconds=5)
    with DaskTaskRunner(address=address) as runner:
        parts = _parts(list(batches), _threads(runner), lambda batch: len(batch.files))
        futures = [
            runner.submit(staging, {"batches": part, "staging_prefix": staging_prefix,
                                    "run_id": run_id, "concurrency": concurrency})
            for part in parts
        ]
        return [item for future in futures for item in future.result()]


def read_sources_on_cluster(
    address: str, uris: Sequence[str], pixels: bool
) -> list[SourceFacts]:
    with DaskTaskRunner(address=address) as runner:
        parts = _parts(list(uris), _threads(runner), lambda _: 1)
        futures = [runner.submit(read_sources_part, {"uris": part, "decode_frames": pixels})
                   for part in parts]
        return [facts for future in futures for facts in future.result()]


def source_reader(dask_address: str | None, workers: int | None) -> SourceReader:
    """Where verification reads the sources: where validation reads them."""
    if dask_address:
        return lambda uris, pixels: read_sources_on_cluster(dask_address, uris, pixels)
    return local_reader(workers)


def _threads(runner: DaskTaskRunner) -> int:
    # distributed leaves Client.nthreads unannotated: {worker address: threads}.
    threads: dict[str, int] = runner.client.nthreads()  # type: ignore[no-untyped-call]
    return max(1, sum(threads.values()))


def _parts(items: list[T], threads: int, files_in: Callable[[T], int]) -> list[list[T]]:
    """Consecutive runs of items holding about ``total / (4 x threads)`` files
    each, but not fewer than MIN_PART_FILES."""
    total = sum(files_in(item) for item in items)
    target = max(MIN_PART_FILES, math.ceil(total / (PARTS_PER_THREAD * threads)))
    parts: list[list[T]] = []
    current: list[T] = []
    filled = 0
    for item in items:
        current.append(item)
        filled += files_in(item)
        if filled >= target:
            parts.append(current)
            current, filled = [], 0
    if current:
        parts.append(current)
    return parts
