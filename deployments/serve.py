"""``dicom-import serve``: serve every deployment from this machine.

One long-running process that registers the deployments with the Prefect
server named by ``PREFECT_API_URL`` and runs their flow runs as subprocesses,
which inherit its environment (AWS variables, ``DICOM_IMPORT_*``). For
several machines, use a work pool instead (``deployments/prefect.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config.settings import get_settings


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="Serve the scheduled, manual, retry and migrate deployments against a Prefect "
        "server.",
        description="Register the deployments with the Prefect server at PREFECT_API_URL "
        "and run their flow runs on this machine until stopped (Ctrl-C).",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N",
        help="Flow runs at once on this machine (default: no limit).",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    from deployments.definitions import build

    if not PREFECT_API_URL.value():
        print("PREFECT_API_URL is not set: start a server (prefect server start) and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api.", file=sys.stderr)
        return 2
    settings = get_settings()
    deployments = build(settings)
    if not settings.schedule_source:
        print("No scheduled ingestion: set DICOM_IMPORT_SCHEDULE_SOURCE to the folder or "
              "s3:// prefix to ingest on schedule.", flush=True)
    serve(*deployments, limit=args.limit)
    return 0
