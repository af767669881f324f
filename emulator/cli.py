"""``dicom-import local``: run the local S3 + HealthImaging endpoint."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from emulator.config import ServiceConfig
from emulator.faults import FaultConfig
from emulator.server import LocalService


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local",
        help="Run the local HealthImaging + S3 endpoint.",
        description="Serve S3 (moto) and medical-imaging (our service) on one port.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--data-dir", type=Path, help="Keep state here across restarts.")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--max-files-per-job", type=int, default=5000)
    parser.add_argument("--max-bytes-per-job", type=int, default=10 * 1000**3)
    parser.add_argument("--max-concurrent-jobs", type=int, default=100)
    parser.add_argument("--import-workers", type=int, default=4)
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
        help="Probability of InternalServerException for an operation (or * for all); repeatable.",
    )
    faults.add_argument(
        "--job-duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Minimum time an import job stays IN_PROGRESS.",
    )
    faults.add_argument(
        "--fail-jobs", type=int, default=0, metavar="N", help="Fail the next N import jobs."
    )
    parser.set_defaults(handler=run)


def _error_rates(items: list[str]) -> dict[str, float]:
    rates = {}
    for item in items:
        operation, _, probability = item.partition("=")
        try:
            rates[operation] = float(probability)
        except ValueError:
            raise SystemExit(f"--error-rate wants OP=PROBABILITY, got {item!r}") from None
    return rates


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ServiceConfig(
        region=args.region,
        max_files_per_job=args.max_files_per_job,
        max_bytes_per_job=args.max_bytes_per_job,
        max_concurrent_jobs=args.max_concurrent_jobs,
        import_workers=args.import_workers,
        transcode_htj2k=not args.no_htj2k,
    )
    faults = FaultConfig(
        throttle=args.throttle,
        error_rate=_error_rates(args.error_rate),
        job_duration_seconds=args.job_duration,
        fail_jobs=args.fail_jobs,
    )
    try:
        service = LocalService(args.host, args.port, args.data_dir, config, faults)
    except OSError as error:
        print(f"Cannot listen on {args.host}:{args.port}: {error.strerror}", file=sys.stderr)
        return 2
    print(f"Local HealthImaging + S3 endpoint: {service.endpoint}")
    print(f"State: {args.data_dir or 'in memory (lost on exit)'}")
    print("Point clients at it with:")
    for name, value in service.env().items():
        print(f"  export {name}={value}")
    print(f"Fault injection: {service.endpoint}/_emulator/faults (GET, POST JSON)")
    print("Ctrl-C stops it.", flush=True)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        service.serve_forever()  # werkzeug returns from here on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping.", flush=True)
        service.stop()
    return 0
