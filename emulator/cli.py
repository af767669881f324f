"""``dicom-import local``: run the local S3 + HealthImaging endpoint."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from emulator.config import Credentials, ServiceConfig
from emulator.faults import FaultConfig, FaultSettingError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local",
        help="Run the local HealthImaging + S3 endpoint.",
        description="Serve S3 (moto) and medical-imaging (our service) on one port, until "
        "Ctrl-C. It prints the AWS_* variables that point boto3, s3fs and the AWS CLI at it.",
    )
    # The service's own defaults, shown in the help, so the two cannot disagree.
    defaults = ServiceConfig()
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default: %(default)s, this machine only).")
    parser.add_argument("--port", type=int, default=4566,
                        help="Port for both S3 and medical-imaging (default: %(default)s).")
    parser.add_argument("--data-dir", type=Path,
                        help="Keep data stores, jobs and image sets here across restarts "
                        "(SQLite and files; S3 buckets stay in memory). Default: all in memory.")
    parser.add_argument("--region", default=defaults.region,
                        help="Region in the ARNs the service returns (default: %(default)s).")
    parser.add_argument("--max-files-per-job", type=int, default=defaults.max_files_per_job,
                        help="Files an import job's input may hold; over it, StartDICOMImportJob "
                        "answers ServiceQuotaExceededException (default: %(default)s, "
                        "HealthImaging's quota).")
    parser.add_argument("--max-bytes-per-job", type=int, default=defaults.max_bytes_per_job,
                        help="Bytes an import job's input may hold; over it, StartDICOMImportJob "
                        "answers ServiceQuotaExceededException (default: %(default)s, 10 GB).")
    parser.add_argument("--max-concurrent-jobs", type=int, default=defaults.max_concurrent_jobs,
                        help="Import jobs running at once per data store; one more, and "
                        "StartDICOMImportJob answers ServiceQuotaExceededException "
                        "(default: %(default)s).")
    parser.add_argument("--stop-grace", type=float, default=defaults.stop_grace_seconds,
                        metavar="SECONDS",
                        help="On Ctrl-C or SIGTERM, how long running import jobs may go on; "
                        "those still running then end FAILED (default: %(default)s).")
    parser.add_argument("--import-workers", type=int, default=defaults.import_workers,
                        help="Threads running import jobs; further jobs wait SUBMITTED "
                        "for a free one (default: %(default)s).")
    security = parser.add_argument_group("security")
    security.add_argument(
        "--credentials", type=_credentials, metavar="KEY:SECRET",
        help="Verify every request's signature against this key pair "
        "(default: any signed request is accepted, whatever its key).")
    security.add_argument(
        "--cors", action="append", default=[], metavar="ORIGIN",
        help="Let web pages from ORIGIN (e.g. http://localhost:3000) read answers; "
        "repeatable. Default: no CORS headers, pages cannot read anything.")
    parser.add_argument(
        "--no-htj2k",
        action="store_true",
        help="Store frames as they came instead of HTJ2K (for benchmarks).",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--throttle", action="store_true", help="Throttle every operation at its published rate."
    )
    faults.add_argument(
        "--error-rate",
        action="append",
        default=[],
        metavar="OP=P",
        help="Probability of InternalServerException for an operation, e.g. "
        "StartDICOMImportJob=0.2 (or *=P for all); repeatable.",
    )
    faults.add_argument(
        "--job-duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Minimum time an import job stays IN_PROGRESS (default: %(default)s).",
    )
    faults.add_argument(
        "--fail-jobs", type=int, default=0, metavar="N", help="Fail the next N import jobs."
    )
    parser.set_defaults(handler=run)


# FaultConfig's fields as the options that set them, to name them in errors.
_FAULT_OPTIONS = {
    "error_rate": "--error-rate",
    "job_duration_seconds": "--job-duration",
    "fail_jobs": "--fail-jobs",
}


def _credentials(text: str) -> Credentials:
    try:
        return Credentials.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _error_rates(items: list[str]) -> dict[str, float]:
    """OP=P pairs; FaultConfig checks the operations and probabilities."""
    rates = {}
    for item in items:
        operation, _, probability = item.partition("=")
        try:
            rates[operation] = float(probability)
        except ValueError:
            raise SystemExit(
                f"dicom-import local: --error-rate wants OP=PROBABILITY, got {item!r}"
            ) from None
    return rates


def run(args: argparse.Namespace) -> int:
    # Imported as the command runs: moto and werkzeug take a second to import,
    # and --help must answer at once.
    from emulator.edge.admin import ADMIN_PREFIX
    from emulator.edge.http_server import CannotListen
    from emulator.edge.origins import is_loopback
    from emulator.edge.server import LocalService
    from emulator.state.store import DataDirInUse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ServiceConfig(
        region=args.region,
        max_files_per_job=args.max_files_per_job,
        max_bytes_per_job=args.max_bytes_per_job,
        max_concurrent_jobs=args.max_concurrent_jobs,
        import_workers=args.import_workers,
        stop_grace_seconds=args.stop_grace,
        transcode_htj2k=not args.no_htj2k,
        credentials=args.credentials,
        cors_origins=tuple(args.cors),
    )
    try:
        faults = FaultConfig(
            throttle=args.throttle,
            error_rate=_error_rates(args.error_rate),
            job_duration_seconds=args.job_duration,
            fail_jobs=args.fail_jobs,
        )
    except FaultSettingError as error:
        option = _FAULT_OPTIONS.get(error.field.split(".")[0], "fault injection")
        print(f"dicom-import local: {option}: {error}", file=sys.stderr)
        return 2
    try:
        service = LocalService(args.host, args.port, args.data_dir, config, faults)
    except CannotListen as refused:
        if refused.error.errno == errno.EADDRINUSE:
            print(f"dicom-import local: port {args.port} is in use: stop what listens there, "
                  "or give another --port", file=sys.stderr)
        else:
            print(f"dicom-import local: {refused}", file=sys.stderr)
        return 2
    except DataDirInUse as held:
        print(f"dicom-import local: {held}", file=sys.stderr)
        return 2
    except OSError as error:  # the host does not resolve
        print(f"dicom-import local: cannot listen on {args.host}:{args.port}: "
              f"{error.strerror}", file=sys.stderr)
        return 2
    print(f"Local HealthImaging + S3 endpoint: {service.endpoint}")
    print(f"State: {args.data_dir or 'in memory (lost on exit)'}")
    print("Point clients at it with:")
    for name, value in service.env().items():
        print(f"  export {name}={value}")
    print(f"Fault injection: {service.endpoint}{ADMIN_PREFIX}/faults (GET, POST JSON), "
          f"with the header: Authorization: Bearer {service.admin_token}")
    if not is_loopback(args.host):
        print(f"WARNING: listening on {args.host}, not on this machine only: anyone who can "
              "reach it can read and change what it holds"
              + ("." if args.credentials else "; --credentials KEY:SECRET restricts it."),
              file=sys.stderr)
    print("Ctrl-C stops it.", flush=True)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    # Also when started in the background, where SIGINT arrives ignored. The
    # signal only asks: the stop runs here, in order, whatever the server
    # threads are doing, and a second Ctrl-C does not cut it short.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    service.start()
    while not stop_requested.wait(1):
        pass
    print(f"Stopping: running imports get {config.stop_grace_seconds:g} s to finish, "
          "then end FAILED.", flush=True)
    service.stop()
    return 0
