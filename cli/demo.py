"""``dicom-import demo``: the whole pipeline on one machine, offline.

Starts the local HealthImaging + S3 service, creates a bucket, writes a
sample set (real DICOM from pydicom's test files, a generated three-series CT
study, a few broken files), runs ``dicom_ingest`` on it exactly as an operator
would, and prints the report and the ``dicom-import view`` command that shows
what landed. Everything it writes stays in one folder (the service's data
too), so the reports and the images can be opened afterwards. It deletes only
what it wrote: a folder holding anything else is refused, never emptied.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from cli.exit_status import ExitStatus
from cli.ingest import run_ingest
from emulator.config import ServiceConfig
from flows.parameters import IngestParameters

BUCKET = "dicom-import-demo"
# Only the endpoint variables the service sets may steer the clients.
_FOREIGN_AWS_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_MEDICAL_IMAGING", "AWS_PROFILE")
# Written into the folder on every run: what the next run may replace.
MARKER = ".dicom-import-demo"
# The local service's data stays in local-state, for `dicom-import view`.
LOCAL_STATE = "local-state"
WRITTEN = ("incoming", "reports", LOCAL_STATE)
DATASTORE = "dicom-import-demo"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Run the whole pipeline on the embedded local service (no AWS account).",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--folder", type=Path, default=Path("demo-output"),
                        help="Where the sample files and the reports go: a new or empty "
                        "folder, or one an earlier demo wrote (its incoming/ and reports/ are "
                        "replaced). Any other folder is refused, never emptied.")
    parser.add_argument("--slices", type=int, default=12,
                        help="CT slices per generated series (three series).")
    parser.add_argument("--max-files-per-job", type=int, default=16,
                        help="Small on purpose, so the demo runs several import jobs.")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported as the command runs, not for --help (cli.main says why).
    from config.clients import s3_client
    from emulator.edge.server import LocalService
    from emulator.samples import write_demo_corpus

    folder: Path = args.folder.resolve()
    refused = prepare(folder)
    if refused:
        print(f"dicom-import demo: {refused}", file=sys.stderr)
        return ExitStatus.ERROR
    corpus = write_demo_corpus(folder / "incoming", args.slices)
    print(f"Sample set: {len(corpus)} files in {folder / 'incoming'}")
    with LocalService(data_dir=folder / LOCAL_STATE,
                      config=ServiceConfig(datastore_transition_seconds=0.5)) as service:
        for name in _FOREIGN_AWS_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(service.env())
        print(f"Local HealthImaging + S3 endpoint: {service.endpoint}")
        s3_client().create_bucket(Bucket=BUCKET)
        params = IngestParameters(
            source=str(folder / "incoming"),
            datastore=DATASTORE,
            create_datastore=True,
            staging_prefix=f"s3://{BUCKET}/staging",
            output_prefix=f"s3://{BUCKET}/output",
            report_location=str(folder / "reports"),
            max_files_per_job=args.max_files_per_job,
            max_concurrent_jobs=4,
            poll_interval_seconds=0.5,
            poll_timeout_seconds=600,
        )
        code = run_ingest(params)
        print_file_report(folder / "reports", folder / "incoming")
    # Its own, not the user's: the demo's ledger is with its reports, its data
    # store in local-state, where only `dicom-import view` opens it again.
    print(f"\nThe demo's reports and ledger: {folder / 'reports'}")
    print("Look at what landed, in a browser (the report's viewer_path opens each study):")
    print(f"  {_program()} view --local-data-dir {_shown(folder / LOCAL_STATE)} "
          f"--datastore {DATASTORE}")
    return code


def _program() -> str:
    """How this command was invoked (``.venv/bin/dicom-import`` after ``make
    demo``), so that the line printed can be pasted as it is."""
    invoked = Path(sys.argv[0])
    return _shown(invoked) if invoked.name == "dicom-import" else "dicom-import"


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return shlex.quote(str(path) if relative.startswith("..") else relative)


def prepare(folder: Path) -> str | None:
    """Make ``folder`` ready for a run, deleting only what an earlier run wrote;
    say why not when it holds anything the demo did not write."""
    marker = folder / MARKER
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if folder.is_dir() and not marker.is_file() and any(folder.iterdir()):
        return (f"{folder} is not empty and was not written by dicom-import demo (no {MARKER} "
                "in it); nothing was deleted: give a new or empty folder with --folder")
    for name in WRITTEN:
        shutil.rmtree(folder / name, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"Written by dicom-import demo, which replaces {' and '.join(WRITTEN)} "
                      "here on its next run.\n")
    return None


def print_file_report(reports: Path, source: Path) -> None:
    """Every file with its status: the point of the tool, shown on the demo set."""
    from cli.story import read_table
    from tasks.report import FILES_DATASET

    parts = reports.rglob(f"{FILES_DATASET}/part-*.parquet")
    latest = max(parts, key=lambda p: p.stat().st_mtime, default=None)
    if latest is None:
        return
    files = read_table(str(latest.parent))
    files["file"] = files["source_uri"].map(lambda uri: os.path.relpath(uri, source))
    files["image_set"] = files["image_set_id"].str.slice(0, 8)
    files["why"] = files["reason_code"].fillna(files["error_type"]).fillna("")
    shown = files.sort_values("file")[
        ["file", "status", "image_set", "is_primary", "image_set_version", "why"]
    ]
    print("\n" + shown.to_string(index=False, na_rep=""))
