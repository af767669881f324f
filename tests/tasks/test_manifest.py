from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tasks.manifest import ManifestError, read_job_output
from tests.import_output import (
    failure_row,
    image_set,
    success_row,
    warning_row,
    write_job_output,
)

A, B = "a" * 32, "b" * 32


def test_reads_every_category_and_joins_versions(tmp_path: Path) -> None:
    folder = write_job_output(
        tmp_path / "out",
        success=[success_row("in/x.dcm", A), success_row("in/y.dcm", B, primary=False)],
        failure=[failure_row("in/z.dcm", "ValidationException", "no TransferSyntaxUID")],
        warning=[warning_row("in/w.dcm", A, 0xB112, "INVALID_OFFSET_TABLE")],
        image_sets=[image_set(A, 3), image_set(B, 1, primary=False)],
    )

    output = read_job_output(str(folder))

    assert output.success.to_dict("records") == [
        {"inputFile": "in/x.dcm", "imageSetId": A, "isPrimary": True, "imageSetVersion": 3},
        {"inputFile": "in/y.dcm", "imageSetId": B, "isPrimary": False, "imageSetVersion": 1},
    ]
    assert output.failure.to_dict("records") == [
        {"inputFile": "in/z.dcm", "exceptionType": "ValidationException",
         "message": "no TransferSyntaxUID"},
    ]
    (warning,) = output.warning.to_dict("records")
    assert warning["inputFile"] == "in/w.dcm"
    assert warning["imageSetVersion"] == 3
    assert warning["warningCodes"] == "INVALID_OFFSET_TABLE(0xB112)"
    assert output.summary["numberOfImportedFiles"] == 2


@pytest.mark.parametrize("write_empty", [False, True])
def test_absent_or_empty_ndjson_means_no_rows(tmp_path: Path, write_empty: bool) -> None:
    folder = write_job_output(tmp_path / "out", write_empty=write_empty)

    output = read_job_output(str(folder))

    assert output.success.empty and output.failure.empty and output.warning.empty
    assert list(output.success.columns) == ["inputFile", "imageSetId", "isPrimary",
                                            "imageSetVersion"]
    assert list(output.failure.columns) == ["inputFile", "exceptionType", "message"]


def test_missing_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"job-output-manifest\.json"):
        read_job_output(str(tmp_path))


def test_manifest_missing_a_key_is_an_error(tmp_path: Path) -> None:
    folder = write_job_output(tmp_path / "out")
    manifest = folder / "job-output-manifest.json"
    document = orjson.loads(manifest.read_bytes())
    del document["jobSummary"]["imageSetsSummary"]
    manifest.write_bytes(orjson.dumps(document))

    with pytest.raises(ManifestError, match="imageSetsSummary"):
        read_job_output(str(folder))


def test_parses_a_large_success_file(tmp_path: Path) -> None:
    """Every row of a large file, each with its set's version (its speed is
    measured in bench.manifest, not asserted here: CI machines are shared)."""
    rows = 200_000
    sets = [f"{i:032x}" for i in range(50)]
    folder = write_job_output(tmp_path / "out", image_sets=[image_set(s) for s in sets])
    (folder / "SUCCESS").mkdir()
    line = b'{"inputFile":"stage/run/batch/f%07d.dcm","importResponse":' \
           b'{"imageSetId":"%s","isPrimary":true}}\n'
    (folder / "SUCCESS" / "success.ndjson").write_bytes(
        b"".join(line % (i, sets[i % 50].encode()) for i in range(rows))
    )

    output = read_job_output(str(folder))

    assert len(output.success) == rows
    assert output.success["imageSetVersion"].notna().all()
    assert output.success["inputFile"].iloc[-1] == f"stage/run/batch/f{rows - 1:07d}.dcm"
