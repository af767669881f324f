"""``dicom-import view``: open a data store's studies in a viewer, from the
shell that has the AWS credentials.

Serves OHIF on loopback, with a DICOMweb proxy on the same origin that signs
each read with those credentials and sends it to the data store's DICOMweb
endpoint (HealthImaging's ``dicom-medical-imaging.<region>``, or the local
service at ``AWS_ENDPOINT_URL``): the browser never holds AWS credentials.
Prints one URL and opens nothing itself. ``cli.viewer`` has the server.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cli.exit_status import ExitStatus
from config.settings import get_settings

COMMAND = "dicom-import view"
# Viewing a local data directory: only the variables the service sets may
# steer the clients (as in `dicom-import demo`).
_FOREIGN_AWS_VARIABLES = ("AWS_ENDPOINT_URL_MEDICAL_IMAGING", "AWS_ENDPOINT_URL_S3",
                          "AWS_PROFILE")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "view",
        help="Open a data store's studies in a web viewer (OHIF), on loopback.",
        description="Serve the OHIF viewer and a DICOMweb proxy that signs each read with "
        "the AWS credentials of this shell, for one data store. Prints one URL (it carries a "
        "token that lets only its browser in) and runs until Ctrl-C. A report's viewer_path "
        "opens an image set's study under that address.",
    )
    parser.add_argument("--datastore", default=None, metavar="NAME|ID",
                        help="The data store to view, by name or ID (default: the "
                        "settings' datastore, DICOM_IMPORT_DATASTORE).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default: %(default)s, this machine only). "
                        "Any other is reachable from the network: a warning says so.")
    parser.add_argument("--port", type=int, default=0,
                        help="Port to listen on (default: a free one).")
    parser.add_argument("--local-data-dir", type=Path, default=None, metavar="DIR",
                        help="View what the local service keeps in DIR (`dicom-import demo` "
                        "leaves it in its folder's local-state): the service runs here, on a "
                        "free loopback port, while the viewer does. Without it, the data "
                        "store is reached as every command reaches it (AWS, or "
                        "AWS_ENDPOINT_URL).")
    parser.add_argument("--verbose", action="store_true",
                        help="Log every DICOMweb read (operation, path and status; never "
                        "the query, which may name patients).")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported as the command runs, not for --help (cli.main says why).
    from cli.viewer import ohif

    name = args.datastore or get_settings().datastore
    if not name:
        return _refuse("--datastore: give a data store name or ID (or set "
                       "DICOM_IMPORT_DATASTORE).")
    if not ohif.installed():
        return _refuse(ohif.missing_message())
    if args.local_data_dir is None:
        return _view(args, name)
    return _view_local(args, name)


def _view_local(args: argparse.Namespace, name: str) -> int:
    """The local service on ``--local-data-dir``, here, for as long as the viewer runs."""
    from emulator.edge.server import LocalService
    from emulator.state.store import DataDirInUse

    folder: Path = args.local_data_dir
    if not (folder / "service.lock").is_file():
        return _refuse(f"--local-data-dir {folder}: no local service kept its data there "
                       "(`dicom-import demo` keeps it in its folder's local-state, "
                       "`dicom-import local --data-dir` where it is told).")
    try:
        service = LocalService(data_dir=folder).start()
    except DataDirInUse as held:
        return _refuse(f"--local-data-dir {held}")
    try:
        for variable in _FOREIGN_AWS_VARIABLES:
            os.environ.pop(variable, None)
        os.environ.update(service.env())
        return _view(args, name)
    finally:
        service.stop()


def _view(args: argparse.Namespace, name: str) -> int:
    import boto3

    from cli.viewer import ohif
    from cli.viewer.proxy import Upstream
    from cli.viewer.server import ViewerServer
    from cli.viewer.static import ViewerConfig
    from config.clients import dicomweb_endpoint, medical_imaging_client, region

    credentials = boto3.Session().get_credentials()
    if credentials is None:
        return _refuse("no AWS credentials found (the standard chain: AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, SSO, an instance role).")
    found = _datastore(medical_imaging_client(), name)
    if isinstance(found, str):
        return _refuse(found)
    datastore_id, datastore_name = found
    upstream = Upstream(dicomweb_endpoint(), datastore_id, region())
    try:
        server = ViewerServer(args.host, args.port, ohif.FILES,
                              ViewerConfig(upstream, datastore_name),
                              credentials.get_frozen_credentials)
    except OSError as error:
        return _refuse(f"--host/--port: cannot listen on {args.host}:{args.port} "
                       f"({error.strerror or error}).")
    _log_to_stderr(args.verbose)
    print(f"Data store {datastore_name} ({datastore_id}), DICOMweb at {upstream.endpoint}")
    if not _is_loopback(args.host):
        print(f"Warning: listening on {args.host}, not loopback: whoever reaches this "
              "address and has the URL sees these images, over plain HTTP.")
    print(f"Open in a browser: {server.url}")
    print("A report's viewer_path opens under that address. Ctrl-C stops the viewer.",
          flush=True)
    # SIGTERM too, and SIGINT where a background start left it ignored: the
    # viewer, and a local service started for it, end in order.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda signum, frame: server.stop())
    server.serve_forever()
    print("\nViewer stopped.")
    return ExitStatus.OK


def _datastore(client: Any, name: str) -> tuple[str, str] | str:
    """(ID, name) of an ACTIVE data store, or why not in one line. Never
    creates one: a mistyped name lists the closest names instead."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.import_jobs import DatastoreError, resolve_datastore

    try:
        datastore = resolve_datastore(client, name, create=False, timeout=60)
    except DatastoreError as error:
        # A name that matches none is already worded for --datastore, with the closest names.
        message = str(error)
        return message if message.startswith("--datastore") else f"--datastore: {message}"
    except (BotoCoreError, ClientError) as error:
        return f"--datastore: HealthImaging could not be asked for {name}: {error}"
    return datastore.datastore_id, datastore.name


def _log_to_stderr(verbose: bool) -> None:
    """The viewer's own lines (refusals, HealthImaging's errors; each read
    with --verbose), whatever the libraries did to the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    viewer_log = logging.getLogger("dicom_import.viewer")
    viewer_log.addHandler(handler)
    viewer_log.setLevel(logging.INFO if verbose else logging.WARNING)
    viewer_log.propagate = False


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _refuse(message: str) -> int:
    print(f"{COMMAND}: {message}", file=sys.stderr)
    return ExitStatus.ERROR
