"""What the ``dicom-import`` exit status means, for every command: 0 is a
promise that every file of the source is accounted for, in this run or an
earlier one."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    # Every file accounted for: imported, or refused for a reason in the report.
    OK = 0
    # Some files failed in the import (or were given up): the report says which.
    FILES_FAILED = 1
    # The run could not start or go on (setup, source, data store, API).
    ERROR = 2
    # Some files are held by another live run and were not processed here.
    HELD_ELSEWHERE = 3
    # Stopped by Ctrl-C: jobs in flight are in the ledger, to be picked up.
    INTERRUPTED = 130
