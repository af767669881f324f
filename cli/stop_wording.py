"""What Ctrl-C means for each command, apart from the console machinery: a
command's parser names its wording without importing Prefect."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopWording:
    """What a stop means for a command, told at each of its three moments."""

    # The first Ctrl-C.
    stopping: str
    # The run ended stopped, its report written.
    stopped: str
    # The second Ctrl-C.
    at_once: str


IMPORT_STOP = StopWording(
    stopping="Stopping: no new import job starts, jobs already started go on in "
    "HealthImaging; writing the report (Ctrl-C again to stop at once).",
    stopped="stopped. Jobs already started go on in HealthImaging and are in the ledger: "
    "run the same command again (or dicom-import retry) to pick them up.",
    at_once="Stopped at once. Jobs already started are in the ledger: run the same "
    "command again (or dicom-import retry) to pick them up.",
)
