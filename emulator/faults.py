"""Fault injection, so clients can be tested against a hostile service.

Throttling uses token buckets at the published per-operation rates
(behaviour doc §3.4); errors are injected with a per-operation probability;
import jobs can be made slow or FAILED on demand. Everything is off by
default and can be changed at run time (CLI flags, the admin route, or
``service.faults`` in Python).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from emulator.state.exceptions import InternalServerException, ThrottlingException
from emulator.state.service_model import service_model

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


ALL_OPERATIONS = "*"
# Bounds of the settings: past them a value is a mistake, and some broke the
# service (a burst of 1e400 failed every call of its operation with a 500).
MAX_RATE = 1_000_000.0
MAX_COUNT = 1_000_000
MAX_JOB_DURATION_SECONDS = 86_400.0
# The model's maximum for a job's message, where the injected one goes.
MAX_MESSAGE_CHARS = 2048
MAX_PATTERN_CHARS = 1024
MAX_SEED = 2**63 - 1
# What a job broken by one of its files ends with (``fail_jobs_with_key``).
POISON_MESSAGE = ("Internal error while importing: the import job could not process its "
                  "input; retry the job, or contact AWS Support with the job ID.")


class FaultSettingError(ValueError):
    """A fault setting of the wrong type or out of range; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def operation_names() -> frozenset[str]:
    """Faults are injected into medical-imaging operations only (S3 is moto's)."""
    return frozenset(service_model().operation_names)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise FaultSettingError(name, f"must be a number, got {value!r}")
    if not low <= value <= high:
        raise FaultSettingError(name, f"must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def _count(name: str, value: Any, high: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise FaultSettingError(name, f"must be a whole number from 0 to {high}, got {value!r}")
    return value


def _text(name: str, value: Any, low: int, high: int, what: str) -> str:
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise FaultSettingError(name, f"must be {what} of {low} to {high} characters, "
                                f"got {value!r:.80}")
    return value


def _operation(name: str, operation: Any, wildcard: bool) -> str:
    known = operation_names()
    if operation in known or (wildcard and operation == ALL_OPERATIONS):
        return str(operation)
    raise FaultSettingError(
        name, f"unknown operation {operation!r}; known: {sorted(known)}"
        + (f" or {ALL_OPERATIONS!r} for all" if wildcard else "")
    )


def _mapping(name: str, value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise FaultSettingError(name, f"must be an object, got {value!r}")
    return value


def _checked(name: str, value: Any) -> Any:
    """``value`` for setting ``name`` when its type and range are right.

    Without these checks ``{"error_rate": 5}`` failed every call and
    ``{"job_duration_seconds": "slow"}`` left a job IN_PROGRESS for ever."""
    if name == "throttle":
        if not isinstance(value, bool):
            raise FaultSettingError(name, f"must be true or false, got {value!r}")
        return value
    if name == "rates":
        rates = {}
        for operation, pair in _mapping(name, value).items():
            field_name = f"rates.{operation}"
            _operation(field_name, operation, wildcard=False)
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise FaultSettingError(field_name, f"must be [rate, burst], got {pair!r}")
            rates[operation] = [_number(field_name, pair[0], 0, MAX_RATE),
                                _count(field_name, pair[1])]
        return rates
    if name == "error_rate":
        return {
            _operation(f"error_rate.{operation}", operation, wildcard=True):
            _number(f"error_rate.{operation}", probability, 0, 1)
            for operation, probability in _mapping(name, value).items()
        }
    if name == "job_duration_seconds":
        return _number(name, value, 0, MAX_JOB_DURATION_SECONDS)
    if name == "fail_jobs":
        return _count(name, value)
    if name == "fail_job_message":
        return _text(name, value, 1, MAX_MESSAGE_CHARS, "a string")
    if name == "fail_jobs_with_key":
        _text(name, value, 0, MAX_PATTERN_CHARS, "a regular expression")
        try:
            re.compile(value)
        except re.error as error:
            raise FaultSettingError(name, f"is not a regular expression: {error}") from None
        return value
    if value is None:
        return value
    return _count(name, value, MAX_SEED)  # seed


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
    # A poison file: every job whose input holds an object whose key matches
    # this regular expression (re.search) ends FAILED, before it stores
    # anything, whatever else it holds. Empty: off.
    fail_jobs_with_key: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            setattr(self, item.name, _checked(item.name, getattr(self, item.name)))

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` all or nothing: every value is checked first.
        ``rates`` adds to the rates already set."""
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise FaultSettingError(
                sorted(unknown)[0],
                f"unknown fault settings: {sorted(unknown)}; known: {sorted(names)}",
            )
        checked = {key: _checked(key, value) for key, value in changes.items()}
        for key, value in checked.items():
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

    def job_failure(self, input_keys: Callable[[], Iterable[str]]) -> str | None:
        """The message a job ends FAILED with, or None to let it run.

        ``input_keys`` lists the job's input, asked only when a poison key is
        set. A poison file fails its job the way HealthImaging fails one that
        a file breaks: the whole job, with an internal error that names no file.
        """
        if self.take_job_failure():
            return self.config.fail_job_message
        pattern = self.config.fail_jobs_with_key
        if pattern and any(re.search(pattern, key) for key in input_keys()):
            return POISON_MESSAGE
        return None
