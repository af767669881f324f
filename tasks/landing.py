"""Which way a delivery's valid files land, and the batches each way makes.

An import job is built for throughput: staged to S3, started, polled, its
output read; a single study waits for all of that. STOW-RS lands a study in
one synchronous request, answered per instance. ``auto`` takes STOW-RS for a
delivery under both thresholds (the stow_auto_* settings), jobs otherwise.
The delivery is a window's valid files: for a run smaller than a window
(window_files), the whole run.

STOW-RS batches are requests: one study's files (``POST .../studies/{UID}``
checks that they are of that study), at most ``request_bytes`` of body each,
a series kept in one request wherever it fits (one request adds one version
to each image set it touches, as one job does).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from config.settings import LandingMode
from tasks.batch import Batch, make_batches
from tasks.statuses import Landing
from tasks.stow_body import PART_OVERHEAD
from tasks.validate import ValidationRecord

MB = 1000**2


def choose_landing(
    mode: LandingMode, records: Sequence[ValidationRecord], auto_max_files: int,
    auto_max_bytes: int,
) -> Landing:
    if mode is LandingMode.AUTO:
        valid = [r for r in records if r.is_valid]
        small = (len(valid) <= auto_max_files
                 and sum(r.size for r in valid) <= auto_max_bytes)
        return Landing.STOW if small else Landing.JOB
    return Landing.STOW if mode is LandingMode.STOW else Landing.JOB


def stow_requests(
    records: Sequence[ValidationRecord], max_files: int, request_bytes: int
) -> list[Batch]:
    """The valid files in requests: per study, packed as jobs are
    (tasks.batch), within ``request_bytes`` of body once each part's
    boundary and header are counted. A file larger than that is a request
    of its own (the service refuses it whole if it is over its limit)."""
    by_study: dict[str, list[ValidationRecord]] = defaultdict(list)
    for record in records:
        if record.is_valid:
            by_study[record.study_instance_uid or ""].append(record)
    # Positive: at least 1 MB a request, at most 5,000 files (the parameter model).
    files_budget = request_bytes - max_files * PART_OVERHEAD
    return [request for study in sorted(by_study)
            for request in make_batches(by_study[study], max_files, files_budget)]
