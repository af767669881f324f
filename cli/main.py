"""The ``dicom-import`` command.

Building the parser imports only what the options need (the parameter models,
the settings): each command imports Prefect, pandas, moto and the flows when it
runs. Prefect alone takes seconds to import, which ``--help`` and a mistyped
option would otherwise pay before answering.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from cli import prefect_api
from cli.exit_status import ExitStatus


class OneLineErrors(argparse.ArgumentParser):
    """A mistyped option is one line naming it, exit status 2, as every other
    refusal of the command is; argparse would print the whole usage first.
    Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitStatus.ERROR, f"{self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    # Imported here, after main() has set the environment Prefect reads once.
    from cli import demo, ingest, migrate, reconcile, report, retry, verify, view
    from deployments import serve as serve_cli
    from emulator import cli as local_cli

    parser = OneLineErrors(
        prog="dicom-import",
        description="Import DICOM into AWS HealthImaging, file by file accounted for.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    ingest.add_parser(subparsers)
    retry.add_parser(subparsers)
    reconcile.add_parser(subparsers)
    migrate.add_parser(subparsers)
    report.add_parser(subparsers)
    verify.add_parser(subparsers)
    view.add_parser(subparsers)
    demo.add_parser(subparsers)
    local_cli.add_parser(subparsers)
    serve_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from config.settings_errors import settings_problem

    prefect_api.set_defaults()
    args = build_parser().parse_args(argv)
    problem = settings_problem()
    if problem is not None:
        print(f"dicom-import {args.command}: {problem}", file=sys.stderr)
        return ExitStatus.ERROR
    try:
        status: int = args.handler(args)
        return status
    except Exception as error:
        # Here, not in each subcommand: whichever runs or serves flows needs the API.
        problem = prefect_api.unreachable(error)
        if problem is None:
            raise
        print(f"dicom-import {args.command}: {problem}", file=sys.stderr)
        return ExitStatus.ERROR

