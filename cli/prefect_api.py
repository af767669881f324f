"""The Prefect API every flow run reports to, as the command line meets it.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server in a
subprocess, and gives it 20 s to answer: on a busy machine (two cores, tests
running) it takes longer, and the run died with a traceback. The defaults here
give it time; when the API still cannot be reached, the operator gets one line
saying so and what to set, not a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# Generous on purpose: a slow start costs nothing when the server comes up
# sooner, and a start given up on costs the whole run.
STARTUP_TIMEOUT_SECONDS = 180
_STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Prefect raises a bare RuntimeError when its temporary server does not answer in time.
_TEMPORARY_SERVER_TIMED_OUT = "Timed out while attempting to connect to ephemeral Prefect API"


def set_defaults() -> None:
    """Set Prefect's environment before Prefect is imported: it reads its settings
    once. An operator's own value of each variable wins."""
    # Offline by default: without these an unconnected machine logs telemetry errors.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(_STARTUP_TIMEOUT_VARIABLE, str(STARTUP_TIMEOUT_SECONDS))


def unreachable(error: BaseException) -> str | None:
    """One line saying the Prefect API could not be reached, or None when
    ``error`` is about something else."""
    import httpx
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    for cause in _chain(error):
        if isinstance(cause, RuntimeError) and str(cause).startswith(_TEMPORARY_SERVER_TIMED_OUT):
            return (
                "Prefect's temporary API server did not start within "
                f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s: give it longer "
                f"with {_STARTUP_TIMEOUT_VARIABLE}, or set PREFECT_API_URL to a running server"
            )
        if isinstance(cause, httpx.TransportError):
            url = PREFECT_API_URL.value() or "its temporary server"
            return (
                f"cannot reach the Prefect API at {url} ({cause or type(cause).__name__}): "
                "start it, or unset PREFECT_API_URL to run on a temporary server"
            )
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what it was raised from or while handling, each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
