"""Fault injection, so clients can be tested against a hostile service.

Throttling uses token buckets at the published per-operation rates
(behaviour doc §3.4); errors are injected with a per-operation probability;
import jobs can be made slow or FAILED on demand. Everything is off by
default and can be changed at run time (CLI flags, the admin route, or
``service.faults`` in Python).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from emulator.exceptions import InternalServerException, ThrottlingException

# (requests per second, burst) as published; settings, not truths.
PUBLISHED_RATES: dict[str, tuple[float, int]] = {
    "CreateDatastore": (0.085, 1),
    "DeleteDatastore": (0.085, 1),
    "GetDatastore": (10, 20),
    "ListDatastores": (5, 10),
    "StartDICOMImportJob": (1, 2),
    "GetDICOMImportJob": (25, 50),
    "ListDICOMImportJobs": (10, 20),
    "SearchImageSets": (25, 50),
    "GetImageSet": (25, 50),
    "ListImageSetVersions": (25, 50),
    "GetImageSetMetadata": (50, 100),
    "GetImageFrame": (1000, 2000),
    "UpdateImageSetMetadata": (0.25, 1),
    "CopyImageSet": (0.25, 1),
    "DeleteImageSet": (0.25, 1),
    "TagResource": (10, 20),
    "UntagResource": (10, 20),
    "ListTagsForResource": (10, 20),
}


@dataclass
class FaultConfig:
    throttle: bool = False
    rates: dict[str, list[float]] = field(
        default_factory=lambda: {k: [r, b] for k, (r, b) in PUBLISHED_RATES.items()}
    )
    error_rate: dict[str, float] = field(default_factory=dict)
    job_duration_seconds: float = 0.0
    fail_jobs: int = 0
    fail_job_message: str = "Injected failure: the local service was asked to fail this job."
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}; known: {sorted(names)}")
        for key, value in changes.items():
            if key == "rates":
                self.rates.update(value)
            else:
                setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultInjector:
    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}
        self._random = random.Random(config.seed)

    def before_call(self, operation: str) -> None:
        if self.config.throttle and not self._take_token(operation):
            raise ThrottlingException(f"Rate exceeded for {operation}")
        probability = self.config.error_rate.get(operation, self.config.error_rate.get("*", 0.0))
        if probability and self._random.random() < probability:
            raise InternalServerException(f"Injected internal error in {operation}")

    def _take_token(self, operation: str) -> bool:
        rate, burst = self.config.rates.get(operation, (0, 0))
        if not rate:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(operation, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[operation] = (tokens, now)
                return False
            self._buckets[operation] = (tokens - 1, now)
            return True

    def take_job_failure(self) -> bool:
        with self._lock:
            if self.config.fail_jobs > 0:
                self.config.fail_jobs -= 1
                return True
            return False
