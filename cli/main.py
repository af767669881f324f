"""The ``dicom-import`` command."""

from __future__ import annotations

import argparse
import os


def build_parser() -> argparse.ArgumentParser:
    # Imported here, after main() has set the environment Prefect reads once.
    from cli import demo, ingest, report
    from deployments import serve as serve_cli
    from emulator import cli as local_cli

    parser = argparse.ArgumentParser(
        prog="dicom-import",
        description="Import DICOM into AWS HealthImaging, file by file accounted for.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    ingest.add_parser(subparsers)
    report.add_parser(subparsers)
    demo.add_parser(subparsers)
    local_cli.add_parser(subparsers)
    serve_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Offline by default: without these an unconnected machine logs telemetry errors.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    return args.handler(args)

