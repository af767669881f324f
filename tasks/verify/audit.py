"""The verification record an auditor keeps for a migration.

``dicom-import verify --datastore D --source S`` checks every file the ledger
says was imported from S into D and signs off what it found: counts by
result, the SHA-256 of the verification report it wrote (so the report can
be shown unaltered later), the time range of the imports covered, the tool
version, the data store and source, and when and by whom. JSON for tools, a
short markdown for people; counts, IDs and paths only, never patient data.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.metadata
import json
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pandas as pd

from tasks.locations import filesystem_for, uri_for

RECORD_NAME = "verification-record"


@dataclass(frozen=True)
class ReportFile:
    uri: str
    sha256: str


@dataclass(frozen=True)
class VerificationRecord:
    datastore_id: str
    datastore_name: str | None
    source: str
    mode: str
    counts: dict[str, int]
    files: int
    report: dict[str, ReportFile]
    imports_from: str | None
    imports_to: str | None
    tool_version: str
    signed_off_at: str
    signed_off_by: str


def sign_off(
    datastore_id: str, datastore_name: str | None, source: str, mode: str,
    counts: dict[str, int], report: dict[str, str], imported_at: pd.Series,
) -> VerificationRecord:
    """The record of a verification whose report is at ``report`` (URI by
    extension), over imports recorded at ``imported_at``."""
    times = pd.to_datetime(imported_at.dropna(), utc=True)
    return VerificationRecord(
        datastore_id=datastore_id, datastore_name=datastore_name, source=source, mode=mode,
        counts=counts, files=sum(counts.values()),
        report={extension: ReportFile(uri, sha256_of(uri)) for extension, uri in report.items()},
        # Every time to the microsecond, in one format: a sign-off cut to the
        # second could read as earlier than the imports it covers.
        imports_from=times.min().isoformat(timespec="microseconds") if len(times) else None,
        imports_to=times.max().isoformat(timespec="microseconds") if len(times) else None,
        tool_version=importlib.metadata.version("dicom-import"),
        signed_off_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        signed_off_by=f"{getpass.getuser()}@{socket.gethostname()}",
    )


def sha256_of(uri: str) -> str:
    fs, path = filesystem_for(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_record(record: VerificationRecord, folder: str) -> dict[str, str]:
    """``verification-record.json`` and ``.md`` in ``folder``; their URIs."""
    fs, root = filesystem_for(folder)
    fs.makedirs(root, exist_ok=True)
    documents = {"json": json.dumps(asdict(record), indent=2) + "\n", "md": _markdown(record)}
    uris = {}
    for extension, text in documents.items():
        path = f"{root}/{RECORD_NAME}.{extension}"
        with fs.open(path, "w") as out:
            out.write(text)
        uris[extension] = uri_for(folder, path)
    return uris


def _markdown(record: VerificationRecord) -> str:
    store = (f"{record.datastore_name} ({record.datastore_id})" if record.datastore_name
             else record.datastore_id)
    lines = [
        "# Verification record",
        "",
        f"- Data store: {store}",
        f"- Source: {record.source}",
        f"- Imports covered: {record.imports_from or '-'} to {record.imports_to or '-'}",
        f"- Check: {record.mode}",
        f"- Tool: dicom-import {record.tool_version}",
        f"- Signed off: {record.signed_off_at} by {record.signed_off_by}",
        "",
        "| result | files |",
        "|---|---:|",
        *(f"| {result} | {count} |" for result, count in record.counts.items()),
        f"| total | {record.files} |",
        "",
        "| report | SHA-256 |",
        "|---|---|",
        *(f"| `{item.uri}` | `{item.sha256}` |" for item in record.report.values()),
        "",
    ]
    return "\n".join(lines)
