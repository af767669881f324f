"""StartDICOMImportJob's importConfiguration.dicomJsonMetadataImportConfiguration:
DICOM JSON files under the input prefix, mapped to a study or a series,
enhance the imported instances; a mapping that cannot be applied is a FAILURE
line, never a failed job."""

from __future__ import annotations

import json
from typing import Any

from emulator.samples import SeriesSpec, ct_slice, uid
from tests.emulator.conftest import BUCKET, ROLE
from tests.emulator.test_import import ImportRun, dicom_bytes, metadata

STUDY = uid("json-study")
SERIES_A = uid("json-series-a")
SERIES_B = uid("json-series-b")


def dicom_json(**elements: tuple[str, Any]) -> bytes:
    """``{tag: (vr, value)}`` as a PS3.18 Annex F object."""
    return json.dumps({tag: {"vr": vr, "Value": [value]} for tag, (vr, value) in elements.items()}
                      ).encode()


def study_files() -> dict[str, bytes]:
    files = {}
    for name, series, number in (("a", SERIES_A, 1), ("b", SERIES_B, 2)):
        spec = SeriesSpec(STUDY, series, number)
        for index in range(2):
            ds = ct_slice(spec, index, rows=8, columns=8)
            ds.SeriesDescription = "as written"
            files[f"dicom/{name}{index}.dcm"] = dicom_bytes(ds)
    return files


def run_with_mappings(
    mi: Any,
    s3: Any,
    datastore_id: str,
    prefix: str,
    files: dict[str, bytes],
    mappings: list[dict[str, str]],
) -> ImportRun:
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}{key}", Body=body)
    job = mi.start_dicom_import_job(
        datastoreId=datastore_id,
        dataAccessRoleArn=ROLE,
        clientToken=prefix.strip("/"),
        inputS3Uri=f"s3://{BUCKET}/{prefix}",
        outputS3Uri=f"s3://{BUCKET}/output/",
        importConfiguration={
            "dicomJsonMetadataImportConfiguration": {"dicomMetadataMappings": mappings}
        },
    )
    return ImportRun(mi, s3, datastore_id, job["jobId"])


def series_doc(mi: Any, datastore_id: str, run: ImportRun, key: str) -> dict[str, Any]:
    doc = metadata(mi, datastore_id, run.succeeded(key)["imageSetId"])
    (series,) = doc["Study"]["Series"].values()
    return {"study": doc["Study"]["DICOM"], "series": series["DICOM"], "patient":
            doc["Patient"]["DICOM"]}


def test_study_and_series_mappings_enhance_the_instances(
    mi: Any, s3: Any, datastore_id: str
) -> None:
    prefix = "json-ok/"
    files = study_files()
    files["meta/study.json"] = dicom_json(
        **{
            "00081030": ("LO", "from the study JSON"),
            "00100010": ("PN", {"Alphabetic": "Json^Patient"}),
        }
    )
    files["meta/series-a.json"] = dicom_json(
        **{"00081030": ("LO", "from the series JSON"), "0008103E": ("LO", "series A JSON"),
           "0020000D": ("UI", "1.2.3.4")}
    )
    run = run_with_mappings(mi, s3, datastore_id, prefix, files, [
        {"studyInstanceUID": STUDY, "metadataFilePath": "meta/study.json"},
        {"studyInstanceUID": STUDY, "seriesInstanceUID": SERIES_A,
         "metadataFilePath": "meta/series-a.json"},
    ])

    assert run.job["jobStatus"] == "COMPLETED"
    assert run.failure == []
    assert run.manifest["numberOfScannedFiles"] == 4  # the JSON files are not DICOM inputs
    a = series_doc(mi, datastore_id, run, f"{prefix}dicom/a0.dcm")
    b = series_doc(mi, datastore_id, run, f"{prefix}dicom/b0.dcm")
    # A series mapping wins over the study mapping; the JSON overrides the file.
    assert a["study"]["StudyDescription"] == "from the series JSON"
    assert a["series"]["SeriesDescription"] == "series A JSON"
    assert b["study"]["StudyDescription"] == "from the study JSON"
    assert b["series"]["SeriesDescription"] == "as written"
    assert a["patient"]["PatientName"] == b["patient"]["PatientName"] == "Json^Patient"
    # The UIDs that place an instance are not taken from the JSON.
    assert a["study"]["StudyInstanceUID"] == STUDY


def test_mappings_that_cannot_be_applied_are_failure_lines(
    mi: Any, s3: Any, datastore_id: str
) -> None:
    prefix = "json-bad/"
    files = study_files()
    files["meta/broken.json"] = b"{not json"
    files["meta/list.json"] = b'["a", "b"]'
    files["meta/elsewhere.json"] = dicom_json(**{"00081030": ("LO", "unused")})
    run = run_with_mappings(mi, s3, datastore_id, prefix, files, [
        {"studyInstanceUID": STUDY, "metadataFilePath": "meta/missing.json"},
        {"studyInstanceUID": STUDY, "metadataFilePath": "meta/broken.json"},
        {"studyInstanceUID": STUDY, "seriesInstanceUID": SERIES_B,
         "metadataFilePath": "meta/list.json"},
        {"studyInstanceUID": STUDY, "seriesInstanceUID": uid("json-no-such-series"),
         "metadataFilePath": "meta/elsewhere.json"},
    ])

    assert run.job["jobStatus"] == "COMPLETED"
    failures = {line["inputFile"]: line["exception"] for line in run.failure}
    assert set(failures) == {
        f"{prefix}meta/{name}.json" for name in ("missing", "broken", "list", "elsewhere")
    }
    assert all(f["exceptionType"] == "ValidationException" for f in failures.values())
    assert "not valid JSON" in failures[f"{prefix}meta/broken.json"]["message"]
    assert "No instance" in failures[f"{prefix}meta/elsewhere.json"]["message"]
    assert len(run.success) == 4
    a = series_doc(mi, datastore_id, run, f"{prefix}dicom/a0.dcm")
    assert a["study"]["StudyDescription"] == "Synthetic CT"
