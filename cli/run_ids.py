"""A run ID as an operator types it: the 8 characters that end a report
folder's name, or any unique prefix of the flow run ID, completed from the
ledger before the flow starts (tasks.ledger.run_id_from_prefix)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from cli.options import flag
from config.settings import get_settings
from flows.parameters import RetryParameters, VerifyParameters
from tasks.ledger import LedgerError, ledger_url, require_existing, run_id_from_prefix
from tasks.locations import is_s3

Model = TypeVar("Model", RetryParameters, VerifyParameters)


def with_full_run_id(command: str, params: Model, field: str) -> Model | None:
    """``params`` with its run ID ``field`` completed from the ledger, or None
    once the refusal (no such run, or several) is on stderr as one line. With
    no ledger to look in, the ID goes on as typed: the flow says what is
    missing, as it does for a full ID."""
    typed = getattr(params, field)
    url = _existing_ledger(params.report_location)
    if not typed or url is None:
        return params
    try:
        full = run_id_from_prefix(url, typed)
    except LedgerError as error:
        print(f"dicom-import {command}: {flag(field)} {typed}: {error}", file=sys.stderr)
        return None
    return params.model_copy(update={field: full})


def _existing_ledger(report_location: str) -> str | None:
    """The ledger's URL, if there is one: looking a run up must not create it."""
    configured = get_settings().ledger_url
    if not configured and (is_s3(report_location)
                           or not Path(report_location).expanduser().is_dir()):
        return None
    try:
        url = ledger_url(configured, report_location)
        require_existing(url)
    except LedgerError:
        return None
    return url
