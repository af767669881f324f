"""Pre-flight: setup mistakes found before any file is read or anything created.

Without it a missing staging bucket shows up after every header was read and a
data store created, as one ``import_failed`` row per file with the reason in
the CSV; a mistyped endpoint or missing credentials cost half a minute of
retries first. None of these passes on a second try, so every check here is a
single request without retries, made in the order an operator fixes things
(the shape of each option, credentials, then what each option points at),
and the first failure ends the run as one line naming the option to fix, as
the CLI spells it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.clients import medical_imaging_client, s3_client
from config.settings import get_settings
from tasks.backoff import error_code
from tasks.discover import source_not_a_folder, source_not_found
from tasks.ledger import (
    LEDGER_SETTING,
    REPORT_OPTION,
    LedgerError,
    ledger_exists,
    ledger_url,
    sqlite_path,
)
from tasks.locations import S3Uri, meant_s3

STAGING_OPTION = "--staging-prefix"
OUTPUT_OPTION = "--output-prefix"
DASK_OPTION = "--dask-address"
# The zero-byte object written (and deleted) to prove a prefix writable.
WRITE_CHECK_NAME = ".dicom-import-write-check-"

_NOT_FOUND = frozenset({"404", "NoSuchBucket", "NotFound"})
_DENIED = frozenset({"403", "AccessDenied", "AccessDeniedException", "Forbidden"})
# What AWS answers to keys it does not know or a signature it cannot check.
_CREDENTIALS_REFUSED = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
    "InvalidClientTokenId", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
})

# Address schemes served over a TCP host and port, which a connection proves.
_DASK_OVER_TCP = frozenset({"tcp", "tls", "ws", "wss"})
# A scheduler answers a connection at once; distributed waits 30 s before giving up.
_DASK_CONNECT_SECONDS = 5.0

_log = logging.getLogger(__name__)


class SetupError(Exception):
    """The run cannot start as configured; the message is the one line an operator reads."""


def check_setup(
    report_location: str,
    source: str | None = None,
    staging_prefix: str | None = None,
    output_prefix: str | None = None,
    ledger: str | None = None,
    imports: bool = True,
    dask_address: str | None = None,
) -> None:
    """Check everything a run needs, without creating anything that stays.

    ``source`` is checked when given (an ingestion reads it; a retry reads
    the files its ledger names), and so are the staging and output prefixes.
    Without ``imports`` (a dry run) only the source, the report location and
    the Dask scheduler matter. ``ledger`` is the configured ledger URL, if any.

    Raises:
        SetupError: the first problem found.
    """
    source_uri = _location("Source", source) if source is not None else None
    report_uri = _location(REPORT_OPTION, report_location)
    targets: list[tuple[str, S3Uri]] = []
    if imports:
        # Absent only when nothing is staged (STOW-RS landing): the parameter
        # model requires both wherever import jobs may run.
        targets += [(option, _s3_option(option, prefix))
                    for option, prefix in ((STAGING_OPTION, staging_prefix),
                                           (OUTPUT_OPTION, output_prefix)) if prefix]
    if report_uri is not None:
        targets.append((REPORT_OPTION, report_uri))

    if source is not None and source_uri is None:
        _check_local_source(source)
    if report_uri is None:
        _check_local_folder(REPORT_OPTION, report_location)
    if dask_address:
        check_dask_address(dask_address)
    if source_uri is None and not targets and not imports:
        return  # a dry run from a folder to a folder: no AWS call at all
    _check_credentials()
    s3 = _client(s3_client)
    if source is not None and source_uri is not None:
        _check_listable(s3, source, source_uri)
    checked: set[str] = set()
    for option, uri in targets:
        if uri.bucket not in checked:
            _check_bucket(s3, option, uri)
            checked.add(uri.bucket)
    for option, uri in targets:
        _check_writable(s3, option, uri)
    if imports:
        _check_health_imaging()
        _check_ledger(ledger, report_location)


def _location(option: str, location: str) -> S3Uri | None:
    """The parsed URI of an S3 location, None for a local folder."""
    return _s3_option(option, location) if meant_s3(location) else None


def _s3_option(option: str, value: str) -> S3Uri:
    try:
        return S3Uri.parse(value)
    except ValueError as exc:
        raise SetupError(f"{option}: {exc}.") from exc


def check_dask_address(address: str) -> None:
    """The address parses as distributed parses it and, over TCP, a
    connection to it opens: otherwise validation would wait 30 s for it, after
    the source was listed and the data store made.

    Raises:
        SetupError: the address is malformed, or nothing answers there.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
        if scheme not in _DASK_OVER_TCP:
            return
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise SetupError(f"{DASK_OPTION} {address}: not a Dask scheduler address ({exc}); "
                         "give one such as tcp://scheduler.internal:8786.") from exc
    try:
        with socket.create_connection((host, port), timeout=_DASK_CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise SetupError(f"{DASK_OPTION} {address}: no Dask scheduler answers there "
                         f"({exc.strerror or exc}).") from exc


def _check_credentials() -> None:
    try:
        credentials = boto3.Session().get_credentials()
    except BotoCoreError as exc:  # e.g. AWS_PROFILE names a profile that does not exist
        raise SetupError(f"AWS credentials: {exc}.") from exc
    if credentials is None:
        raise SetupError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE."
        )


def _check_local_source(source: str) -> None:
    path = Path(source).expanduser()
    if not path.exists():
        raise SetupError(str(source_not_found(source)))
    if not path.is_dir():
        raise SetupError(str(source_not_a_folder(source)))


def _check_local_folder(option: str, location: str) -> None:
    """The folder exists and is writable, or could be created: checked on the
    nearest folder that exists, so that nothing is made before the run starts."""
    path = Path(location).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SetupError(f"{option} {location}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SetupError(f"{option} {location}: {existing} is not writable.")


def _client(factory: Callable[..., Any]) -> Any:
    """A client that tries once: a mistyped endpoint fails now, not after backoff."""
    try:
        return factory(max_attempts=1)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise SetupError(f"AWS endpoint: {exc}.") from exc


def _unreachable(service: str, client: Any, exc: BotoCoreError) -> SetupError:
    return SetupError(f"cannot reach {service} at {client.meta.endpoint_url}: {exc}.")


def _check_listable(s3: Any, source: str, uri: S3Uri) -> None:
    """At least one object under the prefix, as discovery will list it (a
    prefix is a folder: ``ct`` does not match ``ct2/``)."""
    prefix = f"{uri.key.rstrip('/')}/" if uri.key.strip("/") else ""
    try:
        listing = s3.list_objects_v2(Bucket=uri.bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as exc:
        if error_code(exc) in _NOT_FOUND:
            raise SetupError(str(source_not_found(source))) from exc
        raise _refused(f"Source {source!r}", "ListObjectsV2", exc) from exc
    except BotoCoreError as exc:
        raise _unreachable("S3", s3, exc) from exc
    if not listing.get("KeyCount"):
        raise SetupError(str(source_not_found(source)))


def _check_bucket(s3: Any, option: str, uri: S3Uri) -> None:
    try:
        s3.head_bucket(Bucket=uri.bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in _NOT_FOUND:
            raise SetupError(f"{option} {uri}: bucket {uri.bucket} does not exist.") from exc
        if code in _DENIED:
            raise SetupError(
                f"{option} {uri}: access to bucket {uri.bucket} is denied "
                "(check the AWS credentials and the bucket policy)."
            ) from exc
        raise _refused(f"{option} {uri}", "HeadBucket", exc) from exc
    except BotoCoreError as exc:
        raise _unreachable("S3", s3, exc) from exc


def _check_writable(s3: Any, option: str, uri: S3Uri) -> None:
    """Write and delete a zero-byte object under the prefix. A probe that
    cannot be deleted is left (and logged): the run needs to write, not delete."""
    key = uri.join(f"{WRITE_CHECK_NAME}{uuid.uuid4().hex}").key
    try:
        s3.put_object(Bucket=uri.bucket, Key=key, Body=b"")
    except ClientError as exc:
        raise _refused(f"{option} {uri}: cannot write there;", "PutObject", exc) from exc
    except BotoCoreError as exc:
        raise _unreachable("S3", s3, exc) from exc
    try:
        s3.delete_object(Bucket=uri.bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        _log.warning("Could not delete the write check s3://%s/%s: %s", uri.bucket, key, exc)


def _check_health_imaging() -> None:
    """The endpoint answers and takes the credentials. Any other refusal of
    ListDatastores proves both (a role may be allowed one data store only):
    the data store itself is resolved after the checks."""
    client = _client(medical_imaging_client)
    try:
        client.list_datastores(maxResults=1)
    except ClientError as exc:
        if error_code(exc) in _CREDENTIALS_REFUSED:
            raise _refused("HealthImaging refused the AWS credentials;", "ListDatastores",
                           exc) from exc
    except BotoCoreError as exc:
        raise _unreachable("HealthImaging", client, exc) from exc


def _check_ledger(configured: str | None, report_location: str) -> None:
    """The ledger can be had, without beginning one (the data store is still
    to be resolved): a SQLite ledger not there yet needs a folder that can
    be made, as the report folder does; another database must answer."""
    try:
        url = ledger_url(configured, report_location)
        if not ledger_exists(url) and (path := sqlite_path(url)) is not None:
            _check_local_folder(LEDGER_SETTING if configured else REPORT_OPTION,
                                str(path.parent))
    except LedgerError as exc:
        raise SetupError(str(exc)) from exc


def _refused(what: str, operation: str, exc: ClientError) -> SetupError:
    message = exc.response.get("Error", {}).get("Message") or ""
    return SetupError(f"{what} {operation} was refused: {error_code(exc)} {message}".rstrip()
                      + ".")


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(
    report_location: str,
    source: str | None = None,
    staging_prefix: str | None = None,
    output_prefix: str | None = None,
    imports: bool = True,
    dask_address: str | None = None,
) -> None:
    """The run's first step; fails the run with a :class:`SetupError`."""
    check_setup(report_location, source, staging_prefix, output_prefix,
                get_settings().ledger_url, imports, dask_address)
