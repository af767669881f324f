"""The ``dicom-import`` command."""

from __future__ import annotations

import argparse
import sys

from deployments import serve as serve_cli
from emulator import cli as local_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-import",
        description="Import DICOM into AWS HealthImaging, file by file accounted for.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    local_cli.add_parser(subparsers)
    serve_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
