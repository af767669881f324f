"""A stop the operator asked for (Ctrl-C), seen by every stage of the run.

Stopping must not lose track of anything: a job already started goes on in
HealthImaging, so the run stops *waiting*, reports its files as ``submitted``
with their job IDs (the ledger has them, and a rerun or retry gets the same
job back by its client token), starts no new job, and writes its report. A
flag the stages poll, rather than an exception thrown into them, is what lets
the run end with that report instead of a traceback.
"""

from __future__ import annotations

import threading

_requested = threading.Event()


def request_stop() -> None:
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def sleep_unless_stopped(seconds: float) -> bool:
    """Sleep, waking at once on a stop; True when stopped."""
    return _requested.wait(seconds)


def clear() -> None:
    """For the next run in this process (the CLI runs one flow per process;
    tests run many)."""
    _requested.clear()
