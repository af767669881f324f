"""Batching: pack valid files into import jobs under the per-job quotas.

A series is kept in one job wherever it fits, so that its image set is built
by one job rather than merged across several. Batches are a pure function of
the validated files: a rerun computes the same batches with the same IDs and
digests, which is what makes the import job client tokens repeatable.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.validate import ValidationRecord

DEFAULT_MAX_FILES = 5000
DEFAULT_MAX_BYTES = 10 * 1000**3


@dataclass(frozen=True)
class Batch:
    files: tuple[ValidationRecord, ...]
    # sha256 over the sorted (uri, size, version) list: a file changed under
    # the same name is a different batch, hence a different job.
    digest: str

    @property
    def batch_id(self) -> str:
        return self.digest[:16]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def make_batches(
    records: Iterable[ValidationRecord],
    max_files: int = DEFAULT_MAX_FILES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Batch]:
    """First-fit decreasing over series: largest series first, each into the
    first batch with room; a series bigger than a whole batch is split."""
    if max_files < 1 or max_bytes < 1:
        raise ValueError("max_files and max_bytes must be positive")
    series: dict[tuple[str, str], list[ValidationRecord]] = defaultdict(list)
    for record in records:
        if record.is_valid:
            key = (record.study_instance_uid or "", record.series_instance_uid or "")
            series[key].append(record)

    bins: list[_Bin] = []
    ordered = sorted(
        series.items(), key=lambda kv: (-len(kv[1]), -_bytes(kv[1]), kv[0])
    )
    for _, members in ordered:
        members = sorted(members, key=lambda r: r.uri)
        count, size = len(members), _bytes(members)
        if count <= max_files and size <= max_bytes:
            target = next((b for b in bins if b.fits(count, size, max_files, max_bytes)), None)
            if target is None:
                target = _Bin()
                bins.append(target)
            target.add(members, size)
        else:
            _split_into(bins, members, max_files, max_bytes)
    return [seal(b.files) for b in bins]


class _Bin:
    def __init__(self) -> None:
        self.files: list[ValidationRecord] = []
        self.bytes = 0

    def fits(self, count: int, size: int, max_files: int, max_bytes: int) -> bool:
        return len(self.files) + count <= max_files and self.bytes + size <= max_bytes

    def add(self, members: list[ValidationRecord], size: int) -> None:
        self.files.extend(members)
        self.bytes += size


def _split_into(
    bins: list[_Bin], members: list[ValidationRecord], max_files: int, max_bytes: int
) -> None:
    # Fresh bins only: spreading an oversized series over partly filled bins
    # would scatter it over more jobs than needed. A single file over
    # max_bytes gets a job of its own; HealthImaging reports it per file.
    current = _Bin()
    bins.append(current)
    for record in members:
        if current.files and not current.fits(1, record.size, max_files, max_bytes):
            current = _Bin()
            bins.append(current)
        current.add([record], record.size)


def halves(batch: Batch) -> list[Batch]:
    """The batch in two, in its own (URI) order, which keeps a folder's
    files together: each half is a batch like any, with its own digest and so
    its own job token. A single file is not split."""
    if len(batch.files) < 2:
        return [batch]
    middle = (len(batch.files) + 1) // 2
    return [seal(list(batch.files[:middle])), seal(list(batch.files[middle:]))]


def seal(files: list[ValidationRecord]) -> Batch:
    ordered = tuple(sorted(files, key=lambda r: r.uri))
    digest = hashlib.sha256()
    for record in ordered:
        digest.update(f"{record.uri}\t{record.size}\t{record.version}\n".encode())
    return Batch(files=ordered, digest=digest.hexdigest())


def _bytes(records: list[ValidationRecord]) -> int:
    return sum(r.size for r in records)


@task(name="batch", cache_policy=NO_CACHE)
def batch(records: list[ValidationRecord], max_files: int, max_bytes: int) -> list[Batch]:
    return make_batches(records, max_files, max_bytes)
