"""Non-primary image sets against the local service: explained in the report
and the conflicts artifact, then reconciled by an operator's decisions."""

from __future__ import annotations

import gzip
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from cli.main import main
from emulator.edge.server import LocalService
from emulator.samples import ct_slice, series_spec, uid, write, write_ct_series
from flows.ingest import IngestResult, dicom_ingest
from flows.retry import retry_failed
from tasks import interruption
from tasks.conflicts import CONFLICTS_ARTIFACT_KEY
from tasks.ledger import RunLedger, ledger_url
from tasks.ledger.schema import reconcile_changes_table as changes_table
from tests.operations.conftest import (
    DATASTORE,
    import_jobs,
    ingest_params,
    medical_imaging,
    retry_params,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

FIRST_PATIENT = "PID-FIRST-7731"
SECOND_PATIENT = "PID-SECOND-9942"


def _conflicting_imports(
    tmp_path: Path, seeds: tuple[str, ...] = ("conflict",)
) -> tuple[IngestResult, IngestResult]:
    """Slices 0-2 of each series, then slices 3-5 of it under another Patient
    ID: the second import lands in a non-primary image set per series."""
    for seed in seeds:
        spec = replace(series_spec(seed), patient_id=FIRST_PATIENT)
        write_ct_series(tmp_path / "first" / seed, 3, spec, 16, 16)
        later = replace(spec, patient_id=SECOND_PATIENT)
        for index in range(3, 6):
            write(ct_slice(later, index, 16, 16),
                  tmp_path / "second" / seed / f"slice_{index:04d}.dcm")
    first = dicom_ingest(ingest_params(tmp_path, source=str(tmp_path / "first")))
    second = dicom_ingest(ingest_params(tmp_path, source=str(tmp_path / "second")),
                          return_state=True)
    return first, second.result()


def _run_artifact_and_logs(flow_run_id: str, until: str = "Time by stage") -> tuple[str, str]:
    """The run's conflicts artifact and its log, once the log holds ``until``
    (logs reach the API in batches, a little after the run ends)."""
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
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[CONFLICTS_ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[run])))
        while True:
            logs = "\n".join(log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run]))))
            if until in logs:
                break
            assert time.monotonic() < deadline, f"no {until!r} in the run's logs"
            time.sleep(0.5)
    assert len(artifacts) == 1
    return str(artifacts[0].data), logs


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
    assert second.report_files_csv is not None
    csv = Path(second.report_files_csv).read_text()
    for text in (artifact, logs, csv):
        assert FIRST_PATIENT not in text and SECOND_PATIENT not in text


def test_the_console_says_where_files_landed_and_what_to_run_next(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = replace(series_spec("console"), patient_id=FIRST_PATIENT)
    write_ct_series(tmp_path / "first", 3, spec, 16, 16)
    for index in range(3, 5):
        write(ct_slice(replace(spec, patient_id=SECOND_PATIENT), index, 16, 16),
              tmp_path / "second" / f"slice_{index:04d}.dcm")
    first = dicom_ingest(ingest_params(tmp_path, source=str(tmp_path / "first")))
    params = ingest_params(tmp_path)

    code = main(["ingest", str(tmp_path / "second"), "--datastore", DATASTORE,
                 "--staging-prefix", str(params.staging_prefix),
                 "--output-prefix", str(params.output_prefix),
                 "--report-location", params.report_location,
                 "--poll-interval-seconds", "0.1", "--validation-workers", "1"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert FIRST_PATIENT not in out + err and SECOND_PATIENT not in out + err
    (non_primary,) = set(pd.read_parquet(next((tmp_path / "reports").rglob(
        f"*-{_run_id(err)[:8]}/files")))["image_set_id"])
    assert "Non-primary image sets: 2 files landed beside the primary image set" in out
    assert f"  image set {non_primary}: 2 files, PatientID (0010,0020)\n" in out
    (command,) = [line.strip() for line in out.splitlines()
                  if line.strip().startswith("dicom-import reconcile ")]
    assert command == (f"dicom-import reconcile decisions.json --datastore {first.datastore_id} "
                       f"--report-location {tmp_path / 'reports'}")

    # The command as printed, with the operator's decisions file.
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps(
        {non_primary: {"action": "merge", "corrections": {"PatientID": FIRST_PATIENT}}}))
    argv = command.split()[1:]
    argv[argv.index("decisions.json")] = str(decisions)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"image set {non_primary}: merge would:" in out
    assert f"(reconcile decisions.json in {first.datastore_id} (dry run) " in err


def _run_id(err: str) -> str:
    (run_id,) = re.findall(r"Flow run ([0-9a-f-]{36}) \(", err)
    return str(run_id)


def test_report_is_written_when_the_conflicts_cannot_be_read(
    service: LocalService, tmp_path: Path
) -> None:
    service.faults.error_rate = {"GetImageSetMetadata": 1.0}

    _, second = _conflicting_imports(tmp_path)

    after = _files(second.report_files_parquet)
    assert len(after) == 3 and not after["is_primary"].any()
    assert after["conflict_attributes"].isna().all()
    # Verification reads the same metadata: its files are not checked, the run goes on.
    assert set(after["verification"]) == {"not_checked"}
    assert after["verification_detail"].str.contains("InternalServerException").all()
    artifact, _ = _run_artifact_and_logs(str(second.flow_run_id),
                                         until="Non-primary image sets not explained")
    assert "Not explained: InternalServerException from GetImageSetMetadata" in artifact


def _reconcile(
    tmp_path: Path, decisions: dict[str, Any], capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(decisions))
    code = main(["reconcile", str(path), "--datastore", DATASTORE,
                 "--report-location", str(tmp_path / "reports"), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert FIRST_PATIENT not in out + err and SECOND_PATIENT not in out + err
    return code, out, err


def _image_set(datastore_id: str, image_set_id: str) -> dict[str, Any]:
    return medical_imaging().get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)


def _instances(datastore_id: str, image_set_id: str) -> set[str]:
    blob = medical_imaging().get_image_set_metadata(datastoreId=datastore_id,
                                                    imageSetId=image_set_id)
    document = json.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
    return {uid for series in document["Study"]["Series"].values()
            for uid in series["Instances"]}


def _recorded(tmp_path: Path) -> list[dict[str, Any]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'reports' / 'ledger.sqlite'}")
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(changes_table.name):
            return []
        return [dict(row._mapping) for row in
                conn.execute(sa.select(changes_table).order_by(changes_table.c.id))]


def _sets(report: IngestResult) -> tuple[str, str]:
    """(datastore ID, image set ID) of a report whose files share one set."""
    ids = _files(report.report_files_parquet)["image_set_id"].unique()
    assert len(ids) == 1
    return str(report.datastore_id), str(ids[0])


def test_dry_run_says_what_it_would_do_and_changes_nothing(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _conflicting_imports(tmp_path)
    datastore_id, primary = _sets(first)
    non_primary = _sets(second)[1]
    before = {i: _image_set(datastore_id, i) for i in (primary, non_primary)}

    code, out, err = _reconcile(
        tmp_path, {non_primary: {"action": "merge", "corrections": {"PatientID": FIRST_PATIENT}}},
        capsys)

    assert code == 0 and "dicom-import reconcile:" not in err
    assert "UpdateImageSetMetadata PatientID (version 1)" in out
    assert f"CopyImageSet into primary image set {primary} (version 1)" in out
    assert "Dry run: nothing changed" in out
    for image_set_id, props in before.items():
        now = _image_set(datastore_id, image_set_id)
        assert (now["versionId"], now["imageSetState"], now["isPrimary"]) == (
            props["versionId"], "ACTIVE", props["isPrimary"])
    assert _recorded(tmp_path) == []


def test_dry_run_refuses_what_apply_would_refuse(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both come from one plan: a merge that CopyImageSet would refuse (the
    Patient IDs still differ) fails in the dry run with the line --apply
    gives, and --apply writes nothing; with force, the plan says which
    values the primary set keeps."""
    first, second = _conflicting_imports(tmp_path)
    datastore_id, primary = _sets(first)
    non_primary = _sets(second)[1]

    dry_code, _, dry_err = _reconcile(tmp_path, {non_primary: "merge"}, capsys)
    code, _, err = _reconcile(tmp_path, {non_primary: "merge"}, capsys, "--apply")

    def failures(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines()
                if line.startswith("dicom-import reconcile:")]

    assert (dry_code, code) == (1, 1)
    assert failures(dry_err) == failures(err) == [
        f"dicom-import reconcile: image set {non_primary}: merge failed: CopyImageSet would be "
        f"refused: the values of PatientID differ from primary image set {primary}; correct "
        "them, or set force to keep the primary set's values"]
    assert _recorded(tmp_path) == []
    assert _image_set(datastore_id, non_primary)["versionId"] == "1"
    forced = {non_primary: {"action": "merge", "force": True}}
    code, out, _ = _reconcile(tmp_path, forced, capsys)
    assert code == 0 and "afterwards PatientID as reconciled, not as imported" in out


def test_apply_merges_a_corrected_set_into_the_primary_set(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _conflicting_imports(tmp_path)
    datastore_id, primary = _sets(first)
    non_primary = _sets(second)[1]
    every_instance = set(_files(first.report_files_parquet)["sop_instance_uid"]) | set(
        _files(second.report_files_parquet)["sop_instance_uid"])

    code, out, err = _reconcile(
        tmp_path, {non_primary: {"action": "merge", "corrections": {"PatientID": FIRST_PATIENT}}},
        capsys, "--apply")

    assert code == 0, err
    assert f"image set {non_primary}: merged into primary image set {primary}" in out
    assert _instances(datastore_id, primary) == every_instance
    assert _image_set(datastore_id, primary)["isPrimary"] is True
    assert _image_set(datastore_id, non_primary)["imageSetState"] == "DELETED"
    steps = [(r["operation"], r["image_set_id"], r["version_before"], r["version_after"],
              r["source_version"], r["attributes"], r["outcome"]) for r in _recorded(tmp_path)]
    assert steps == [
        ("UpdateImageSetMetadata", non_primary, "1", "2", None, "PatientID", "applied"),
        ("CopyImageSet", primary, "1", "2", "2", None, "applied"),
        ("DeleteImageSet", non_primary, "2", None, None, None, "applied"),
    ]


def test_promote_makes_the_set_primary(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _conflicting_imports(tmp_path)
    datastore_id, primary = _sets(first)
    non_primary = _sets(second)[1]
    # The first import was the mistake: its set is deleted, the later one stays.
    medical_imaging().delete_image_set(datastoreId=datastore_id, imageSetId=primary)

    code, out, err = _reconcile(tmp_path, {non_primary: "promote"}, capsys, "--apply")

    assert code == 0, err
    promoted = _recorded(tmp_path)[0]["image_set_id"]
    assert f"image set {non_primary}: promoted to primary image set {promoted}" in out
    assert _image_set(datastore_id, promoted)["isPrimary"] is True
    assert _instances(datastore_id, promoted) == set(
        _files(second.report_files_parquet)["sop_instance_uid"])
    assert _image_set(datastore_id, non_primary)["imageSetState"] == "DELETED"


def test_promote_after_giving_the_set_a_series_of_its_own(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AWS's documented way out: correct the UIDs of the non-primary set
    (force), then promote it; the primary set of the old series stays as it was."""
    first, second = _conflicting_imports(tmp_path)
    datastore_id, primary = _sets(first)
    non_primary = _sets(second)[1]
    own_series = uid("conflict-own-series")

    code, out, err = _reconcile(tmp_path, {non_primary: {
        "action": "promote", "corrections": {"SeriesInstanceUID": own_series}, "force": True,
    }}, capsys, "--apply")

    assert code == 0, err
    promoted = _recorded(tmp_path)[1]["image_set_id"]
    assert f"image set {non_primary}: promoted to primary image set {promoted}" in out
    blob = medical_imaging().get_image_set_metadata(datastoreId=datastore_id,
                                                    imageSetId=promoted)
    document = json.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
    assert list(document["Study"]["Series"]) == [own_series]
    assert _image_set(datastore_id, promoted)["isPrimary"] is True
    assert _instances(datastore_id, primary) == set(
        _files(first.report_files_parquet)["sop_instance_uid"])
    assert _image_set(datastore_id, primary)["versionId"] == "1"
    # Verification finds the files in the promoted set, under their new series.
    assert main(["verify", "--run", str(second.flow_run_id),
                 "--report-location", str(tmp_path / "reports")]) == 0
    rows = _verification_report(capsys.readouterr().out)
    assert rows["image_set_id"].eq(promoted).all()
    assert rows["verification_detail"].eq("SeriesInstanceUID as reconciled").all()


def test_each_failed_decision_is_one_line_and_the_rest_go_on(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = ("stale", "promoted", "merged")
    _, second = _conflicting_imports(tmp_path, seeds)
    rows = _files(second.report_files_parquet)
    datastore_id = str(second.datastore_id)
    of = {seed: str(rows.loc[rows["source_uri"].str.contains(f"/{seed}/"),
                             "image_set_id"].iloc[0]) for seed in seeds}
    correction = {"PatientID": FIRST_PATIENT}

    code, out, err = _reconcile(tmp_path, {
        of["stale"]: {"action": "merge", "corrections": correction, "version": 7},
        of["promoted"]: "promote",
        of["merged"]: {"action": "merge", "corrections": correction},
    }, capsys, "--apply")

    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("dicom-import reconcile:")]
    assert len(lines) == 2
    assert of["stale"] in lines[0] and "version 7 is no longer the latest" in lines[0]
    assert of["promoted"] in lines[1] and "already has primary image set" in lines[1]
    assert f"image set {of['merged']}: merged into" in out
    for seed in ("stale", "promoted"):
        props = _image_set(datastore_id, of[seed])
        assert (props["versionId"], props["imageSetState"]) == ("1", "ACTIVE")
    recorded = _recorded(tmp_path)
    assert [(r["decided_image_set_id"], r["outcome"]) for r in recorded] == [
        (of["stale"], "failed"), *[(of["merged"], "applied")] * 3]


@pytest.mark.parametrize("content", [
    "not json", '{"0123": "promote"}', '{"%s": {"action": "split"}}' % ("a" * 32),
], ids=["not-json", "not-an-id", "unknown-action"])
def test_unusable_decisions_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "decisions.json"
    path.write_text(content)

    code = main(["reconcile", str(path), "--datastore", DATASTORE])

    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("dicom-import reconcile:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err
    assert f"decisions file {path}" in lines[0]


def test_a_service_error_while_checking_fails_that_decision_only(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datastore_id = medical_imaging().create_datastore(datastoreName=DATASTORE)["datastoreId"]
    # The ledger of earlier imports, which reconcile records in and never begins.
    RunLedger(ledger_url(None, str(tmp_path / "reports")), "earlier", datastore_id).start_run(
        "dicom-ingest", None)
    service.faults.error_rate = {"GetImageSet": 1.0}
    decided = "b" * 32

    code, _, err = _reconcile(tmp_path, {decided: "promote"}, capsys)

    lines = [line for line in err.splitlines() if line.startswith("dicom-import reconcile:")]
    assert code == 1 and len(lines) == 1
    assert f"image set {decided}: promote failed: GetImageSet refused: InternalServerException" \
        in lines[0]


def test_a_stop_lets_the_decision_under_way_finish_and_starts_no_other(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = _conflicting_imports(tmp_path)
    datastore_id, primary = _sets(first)
    non_primary = _sets(second)[1]
    copy = service.backend.copy_image_set

    def copy_then_ctrl_c(**params: Any) -> Any:
        """The operator presses Ctrl-C while the first decision's copy runs."""
        interruption.request_stop()
        return copy(**params)

    monkeypatch.setattr(service.backend, "copy_image_set", copy_then_ctrl_c)
    decisions = {non_primary: {"action": "merge", "corrections": {"PatientID": FIRST_PATIENT}},
                 # Refused, were it started: no such image set.
                 "0" * 32: {"action": "promote"}}

    code, out, err = _reconcile(tmp_path, decisions, capsys, "--apply")

    assert code != 0
    assert f"image set {non_primary}: merged into primary image set {primary}" in out
    assert f"image set {'0' * 32}: promote: not started: the run was stopped" in out
    assert "dicom-import reconcile:" not in err  # no decision failed
    assert _image_set(datastore_id, non_primary)["imageSetState"] == "DELETED"
    assert [r["operation"] for r in _recorded(tmp_path)] == [
        "UpdateImageSetMetadata", "CopyImageSet", "DeleteImageSet"]


def _merge_outside(datastore_id: str, non_primary: str, primary: str) -> None:
    """What an operator may do on the console, unknown to the ledger: merge a
    non-primary set into the primary one (force: the primary's values stay),
    then delete it."""
    client = medical_imaging()

    def version(image_set_id: str) -> str:
        deadline = time.monotonic() + 30
        while (props := _image_set(datastore_id, image_set_id))["imageSetState"] == "LOCKED":
            assert time.monotonic() < deadline, f"image set {image_set_id} stays LOCKED"
            time.sleep(0.05)
        return str(props["versionId"])

    client.copy_image_set(datastoreId=datastore_id, sourceImageSetId=non_primary, force=True,
                          copyImageSetInformation={
                              "sourceImageSet": {"latestVersionId": version(non_primary)},
                              "destinationImageSet": {"imageSetId": primary,
                                                      "latestVersionId": version(primary)}})
    version(primary)
    version(non_primary)
    client.delete_image_set(datastoreId=datastore_id, imageSetId=non_primary)
    version(non_primary)


def _holders(datastore_id: str) -> dict[str, list[str]]:
    """SOP Instance UID -> every image set in the data store that holds it."""
    pages = medical_imaging().get_paginator("search_image_sets").paginate(
        datastoreId=datastore_id)
    holders: dict[str, list[str]] = {}
    for page in pages:
        for item in page["imageSetsMetadataSummaries"]:
            for sop in _instances(datastore_id, item["imageSetId"]):
                holders.setdefault(sop, []).append(item["imageSetId"])
    return holders


def _verification_report(out: str) -> pd.DataFrame:
    path = next(line.split(": ", 1)[1] for line in out.splitlines()
                if line.startswith("Verification report: "))
    rows = pd.read_csv(path)
    rows["seed"] = rows["source_uri"].map(lambda uri: Path(uri).parent.name)
    return rows


@pytest.mark.usefixtures("ledger_backend")
def test_verify_and_retry_find_each_file_where_reconcile_left_it(
    service: LocalService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One series reconciled by dicom-import (the ledger records where its
    files went), one merged outside it (the ledger still names the deleted
    set): verify checks the first where reconcile put it; retry imports
    neither again, so no instance is ever in the data store twice."""
    seeds = ("decided", "console")
    first, second = _conflicting_imports(tmp_path, seeds)
    datastore_id = str(second.datastore_id)
    before, after = _files(first.report_files_parquet), _files(second.report_files_parquet)

    def set_of(rows: pd.DataFrame, seed: str) -> str:
        return str(rows.loc[rows["source_uri"].str.contains(f"/{seed}/"), "image_set_id"].iloc[0])

    primary = {seed: set_of(before, seed) for seed in seeds}
    non_primary = {seed: set_of(after, seed) for seed in seeds}
    jobs_before = len(import_jobs(datastore_id))
    code, _, err = _reconcile(tmp_path, {non_primary["decided"]: {
        "action": "merge", "corrections": {"PatientID": FIRST_PATIENT}}}, capsys, "--apply")
    assert code == 0, err
    _merge_outside(datastore_id, non_primary["console"], primary["console"])

    code = main(["verify", "--datastore", DATASTORE, "--source", str(tmp_path / "second"),
                 "--report-location", str(tmp_path / "reports")])

    out = capsys.readouterr().out
    rows = _verification_report(out).set_index("seed")
    decided, console = rows.loc["decided"], rows.loc["console"]
    assert decided["verification"].eq("verified").all(), decided["verification_detail"]
    assert decided["image_set_id"].eq(primary["decided"]).all()
    assert decided["verification_detail"].str.contains("PatientID as reconciled").all()
    assert console["verification"].eq("missing").all() and code == 1

    retried = retry_failed(retry_params(tmp_path))

    assert retried.jobs == 0 and len(import_jobs(datastore_id)) == jobs_before
    assert all(len(sets) == 1 for sets in _holders(datastore_id).values())
    report = _files(retried.report_files_parquet)
    assert sorted(report["source_uri"]) == sorted(
        after.loc[after["source_uri"].str.contains("/console/"), "source_uri"])
    assert report["image_set_id"].eq(primary["console"]).all()
    assert report["status"].eq("verify_mismatch").all()
    assert report["verification_detail"].eq("PatientID differs").all()
    assert report["error_message"].str.contains("dicom-import reconcile").all()
