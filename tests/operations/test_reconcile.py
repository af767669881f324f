"""Non-primary image sets against the local service: explained in the report
and the conflicts artifact, then reconciled by an operator's decisions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from emulator.samples import ct_slice, series_spec, write, write_ct_series
from emulator.server import LocalService
from flows.ingest import IngestResult, dicom_ingest
from tasks.conflicts import CONFLICTS_ARTIFACT_KEY
from tests.operations.conftest import ingest_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

FIRST_PATIENT = "PID-FIRST-7731"
SECOND_PATIENT = "PID-SECOND-9942"


def _conflicting_imports(tmp_path: Path) -> tuple[IngestResult, IngestResult]:
    """Slices 0-2 of a series, then slices 3-5 of it under another Patient ID:
    the second import lands in a non-primary image set."""
    spec = replace(series_spec("conflict"), patient_id=FIRST_PATIENT)
    write_ct_series(tmp_path / "first", 3, spec, 16, 16)
    later = replace(spec, patient_id=SECOND_PATIENT)
    for index in range(3, 6):
        write(ct_slice(later, index, 16, 16), tmp_path / "second" / f"slice_{index:04d}.dcm")
    first = dicom_ingest(ingest_params(tmp_path, source=str(tmp_path / "first")))
    second = dicom_ingest(ingest_params(tmp_path, source=str(tmp_path / "second")),
                          return_state=True)
    return first, second.result()


def _run_artifact_and_logs(flow_run_id: str) -> tuple[str, str]:
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )

    run = uuid.UUID(flow_run_id)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[CONFLICTS_ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[run])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run])))
    assert len(artifacts) == 1
    return str(artifacts[0].data), "\n".join(log.message for log in logs)


def _files(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


def test_report_names_the_conflicting_attribute_without_its_value(
    service: LocalService, tmp_path: Path
) -> None:
    first, second = _conflicting_imports(tmp_path)

    before = _files(first.report_files_parquet)
    assert before["is_primary"].all() and before["conflict_attributes"].isna().all()
    after = _files(second.report_files_parquet)
    assert len(after) == 3 and not after["is_primary"].any()
    assert after["conflict_attributes"].eq("PatientID").all()
    non_primary = after["image_set_id"].iloc[0]
    primary = before["image_set_id"].iloc[0]
    assert non_primary != primary

    artifact, logs = _run_artifact_and_logs(str(second.flow_run_id))
    series = after["series_instance_uid"].iloc[0]
    assert f"| {series} | {primary} | {non_primary} | PatientID | 3 |" in artifact
    csv = Path(second.report_files_csv).read_text()
    for text in (artifact, logs, csv):
        assert FIRST_PATIENT not in text and SECOND_PATIENT not in text
