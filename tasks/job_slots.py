"""Import job slots shared by every run and machine that imports into one data store.

HealthImaging runs at most 100 import jobs per data store at once and refuses
the next start (402, ServiceQuotaExceededException). ``max_concurrent_jobs``
bounds the jobs of one run only: a migration's child runs on several workers
would add up past the quota and spend their time backing off. A Prefect global
concurrency limit, enforced by the Prefect server for every client, named
after the data store, bounds them all. An import holds its slot from
StartDICOMImportJob to the end of polling, because the job occupies
HealthImaging's quota for all that time, not only while it is being started.

The limit is made by the flow, once per run (:func:`ensure_job_slots`), never
by ``concurrency()`` on the fly: a slot taken on a limit that does not exist
is an error, so a deleted or misnamed limit cannot silently stop bounding.

With Prefect's temporary server (no ``PREFECT_API_URL``: the CLI's default)
no limit is used and each run bounds only its own jobs. That server runs no
lease reaper (Prefect's repossessor runs only in a real server), and its
slot counts stay in ``PREFECT_HOME``'s database after it stops: a run killed
while holding slots would leave them taken for every later command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import wraps
from inspect import signature
from typing import Any, ParamSpec, TypeVar

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

# HealthImaging's quota of concurrent import jobs per data store.
HEALTHIMAGING_CONCURRENT_JOBS = 100
# Prefect's shortest lease is 60 s. A run killed while holding a slot gives it
# back when its lease runs out, so short is better; a live run renews its
# lease every 3/4 of it.
SLOT_LEASE_SECONDS = 120.0

P = ParamSpec("P")
R = TypeVar("R")


def job_limit_name(datastore_id: str) -> str:
    """Prefect limit names may not hold / % & > <; a data store ID is 32 hex."""
    return f"healthimaging-jobs-{datastore_id}"


def shared_limits_available() -> bool:
    """True with a Prefect server of one's own (``PREFECT_API_URL``), False
    on Prefect's temporary server (see the module's docstring)."""
    return bool(PREFECT_API_URL.value())


def ensure_job_limit(datastore_id: str, limit: int | None = None) -> int | None:
    """Create the data store's limit when missing, with ``limit`` slots or
    HealthImaging's quota; set it to ``limit`` when one is given. An existing
    limit is otherwise left as an operator set it (in the UI, or with
    ``prefect gcl update``). Returns the limit in force, None on a temporary
    server."""
    if not shared_limits_available():
        return None
    name = job_limit_name(datastore_id)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another run created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=name, limit=limit or HEALTHIMAGING_CONCURRENT_JOBS))
            existing = client.read_global_concurrency_limit_by_name(name)
        if limit is not None and existing.limit != limit:
            client.upsert_global_concurrency_limit_by_name(name, limit)
            return limit
        return existing.limit


@task(name="ensure-job-slots", cache_policy=NO_CACHE)
def ensure_job_slots(datastore_id: str, limit: int | None = None) -> int | None:
    in_force = ensure_job_limit(datastore_id, limit)
    logger = get_run_logger()
    if in_force is None:
        logger.info("Prefect's temporary server: import jobs are bounded by this run's "
                    "max_concurrent_jobs only (set PREFECT_API_URL to share a limit).")
    else:
        logger.info("At most %d import jobs in flight into this data store across all runs "
                    "(Prefect concurrency limit %s).", in_force, job_limit_name(datastore_id))
    return in_force


@contextmanager
def job_slot(datastore_id: str) -> Iterator[None]:
    """Hold one of the data store's slots for the block; waits for a free one.

    A failed lease renewal does not stop the block: the job it covers is
    already running in HealthImaging, and abandoning the wait would leave it
    unread.
    """
    if not shared_limits_available():
        yield
        return
    with concurrency(job_limit_name(datastore_id), occupy=1, strict=True,
                     lease_duration=SLOT_LEASE_SECONDS, raise_on_lease_renewal_failure=False):
        yield


def holding_job_slot(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` inside :func:`job_slot` of its ``datastore_id`` argument."""
    parameters = signature(function)

    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        datastore_id: Any = parameters.bind(*args, **kwargs).arguments["datastore_id"]
        with job_slot(str(datastore_id)):
            return function(*args, **kwargs)

    return wrapper
