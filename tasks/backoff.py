"""Backoff shared by every loop that waits on HealthImaging.

botocore retries throttling itself, but not ServiceQuotaExceededException
(HTTP 402), and its few fast attempts are spent quickly against
StartDICOMImportJob's ~1 request/s limit; this is the slower, outer layer.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

if TYPE_CHECKING:  # an annotation only: the viewer's proxy backs off without Prefect
    from prefect import State

# Worth waiting out: over a rate (429), over a quota such as concurrent jobs
# (402), or a transient server error that outlived botocore's own retries.
TRANSIENT_ERRORS = frozenset(
    {"ThrottlingException", "ServiceQuotaExceededException", "InternalServerException"}
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_transient(exc: ClientError) -> bool:
    return error_code(exc) in TRANSIENT_ERRORS


def is_transient_failure(error: BaseException) -> bool:
    """Whether running a whole task again may succeed: a transient service
    error that outlived botocore's retries, or a connection dropped mid-call.
    Not a missing or invalid resource, a refusal, missing credentials or an
    endpoint that cannot be reached: those fail the same way every time."""
    if isinstance(error, ClientError):
        return is_transient(error)
    return isinstance(error, ConnectionClosedError | ReadTimeoutError)


def retry_if_transient(task: Any, task_run: Any, state: State[Any]) -> bool:
    """A Prefect ``retry_condition_fn``: a task retries only failures that may
    pass, instead of spending its retry delays on one that cannot."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient_failure(error)


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """Equal jitter: half fixed, half random, so callers that failed together
    spread out but still wait at least half the nominal delay."""
    return delay / 2 + (rng or random).uniform(0, delay / 2)


def exponential(attempt: int, base: float, cap: float, factor: float = 2.0) -> float:
    return min(cap, base * factor**attempt)
