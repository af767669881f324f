from __future__ import annotations

import base64
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import boto3

from config.clients import s3_client
from emulator.samples import series_spec, sha256_of, write_ct_series
from tasks.batch import make_batches
from tasks.discover import iter_source
from tasks.stage import (
    batch_input_uri,
    stage_batches,
    staging_run_id,
)
from tasks.statuses import StageAction
from tasks.validate import validate_files


def _batches(source: str, **quota: int):
    return make_batches(validate_files(iter_source(source), workers=1), **quota)


def test_run_id_is_derived_from_source_and_datastore() -> None:
    assert staging_run_id("s3://b/in/", "ds") == staging_run_id("s3://b/in", "ds")
    assert staging_run_id("s3://b/in", "ds") != staging_run_id("s3://b/in", "other")
    assert staging_run_id("/data/a", "ds") != staging_run_id("/data/b", "ds")


def test_uploads_under_run_and_batch_with_checksum(tmp_path: Path, s3_bucket: str) -> None:
    paths = write_ct_series(tmp_path / "study", 3, rows=8, columns=8)
    (batch,) = _batches(str(tmp_path))

    staged = stage_batches([batch], f"s3://{s3_bucket}/staging", "run1", concurrency=4)

    assert [s.action for s in staged] == [StageAction.UPLOADED] * 3
    s3 = boto3.client("s3")
    for path, item in zip(paths, staged, strict=True):
        assert item.key == f"staging/run1/{batch.batch_id}/study/{path.name}"
        head = s3.head_object(Bucket=s3_bucket, Key=item.key)
        assert item.sha256 == head["Metadata"]["sha256"] == sha256_of(path)
        assert head["Metadata"]["source-version"] == str(path.stat().st_mtime)
        assert head["ContentLength"] == path.stat().st_size
    assert str(batch_input_uri(f"s3://{s3_bucket}/staging", "run1", batch.batch_id)) == (
        f"s3://{s3_bucket}/staging/run1/{batch.batch_id}"
    )


def test_rerun_skips_files_already_staged(tmp_path: Path, s3_bucket: str) -> None:
    write_ct_series(tmp_path, 2, rows=8, columns=8)
    batches = _batches(str(tmp_path))
    stage_batches(batches, f"s3://{s3_bucket}/st", "r")

    again = stage_batches(batches, f"s3://{s3_bucket}/st", "r")

    assert [s.action for s in again] == [StageAction.SKIPPED] * 2


def _counting_client() -> tuple[Any, Counter[str]]:
    """An S3 client that counts the operations it sends."""
    client = boto3.client("s3")
    calls: Counter[str] = Counter()
    client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.update([model.name])
    )
    return client, calls


def test_one_request_per_file_and_one_listing_per_batch(
    tmp_path: Path, s3_bucket: str
) -> None:
    """A first run sends a PUT per file and no HEAD; a rerun a HEAD per file
    already there and no PUT."""
    for name in ("a", "b"):
        write_ct_series(tmp_path / name, 3, spec=series_spec(name), rows=8, columns=8)
    batches = _batches(str(tmp_path), max_files=3)
    client, calls = _counting_client()

    stage_batches(batches, f"s3://{s3_bucket}/st", "r", s3=client)
    first = dict(calls)
    calls.clear()
    again = stage_batches(batches, f"s3://{s3_bucket}/st", "r", s3=client)

    assert len(batches) == 2
    assert first == {"ListObjectsV2": 2, "PutObject": 6}
    assert dict(calls) == {"ListObjectsV2": 2, "HeadObject": 6}
    assert {s.action for s in again} == {StageAction.SKIPPED}


def test_only_a_body_of_2_mb_or_more_waits_for_100_continue(
    tmp_path: Path, s3_bucket: str
) -> None:
    """A slice's PUT sends its body at once instead of a round trip first."""
    write_ct_series(tmp_path / "small", 2, spec=series_spec("small"), rows=8, columns=8)
    write_ct_series(tmp_path / "large", 1, spec=series_spec("large"), rows=1100, columns=1100)
    client = s3_client()
    puts: list[tuple[int, bool]] = []  # body size, whether it asked for 100 Continue
    client.meta.events.register_last(
        "before-send.s3",
        lambda request, **_: puts.append(
            (int(request.headers["Content-Length"]), "Expect" in request.headers)
        ) if request.method == "PUT" else None,
    )

    staged = stage_batches(_batches(str(tmp_path)), f"s3://{s3_bucket}/st", "r", s3=client)

    assert {s.action for s in staged} == {StageAction.UPLOADED}
    sizes = sorted(path.stat().st_size for path in tmp_path.rglob("*.dcm"))
    assert sizes[1] < 2 << 20 <= sizes[2]
    assert sorted(puts) == [(size, size >= 2 << 20) for size in sizes]


def test_a_file_changed_after_validation_is_not_staged(
    tmp_path: Path, s3_bucket: str
) -> None:
    """Bytes that were not validated never reach an import job."""
    (path,) = write_ct_series(tmp_path, 1, rows=8, columns=8)
    (batch,) = _batches(str(tmp_path))
    with path.open("ab") as grown:
        grown.write(b"\0" * 16)

    (item,) = stage_batches([batch], f"s3://{s3_bucket}/st", "r")

    assert item.action is StageAction.FAILED
    assert "changed after it was validated" in (item.error or "")
    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="st/")
    assert listed.get("KeyCount") == 0


def test_upload_carries_the_checksum_of_the_bytes_sent(tmp_path: Path, s3_bucket: str) -> None:
    """S3 stores (and checks) the SHA-256 the PUT carries."""
    (path,) = write_ct_series(tmp_path, 1, rows=8, columns=8)
    (batch,) = _batches(str(tmp_path))

    (item,) = stage_batches([batch], f"s3://{s3_bucket}/st", "r")

    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key=item.key,
                                          ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(
        hashlib.sha256(path.read_bytes()).digest()
    ).decode()


def test_an_object_not_staged_from_this_version_is_uploaded_again(
    tmp_path: Path, s3_bucket: str
) -> None:
    (path,) = write_ct_series(tmp_path, 1, rows=8, columns=8)
    (batch,) = _batches(str(tmp_path))
    (first,) = stage_batches([batch], f"s3://{s3_bucket}/st", "r")
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key=first.key, Body=path.read_bytes(),
                  Metadata={"sha256": "0" * 64})

    (second,) = stage_batches([batch], f"s3://{s3_bucket}/st", "r")

    assert second.action is StageAction.UPLOADED
    head = s3.head_object(Bucket=s3_bucket, Key=first.key)
    assert head["Metadata"]["sha256"] == sha256_of(path)


def test_s3_source_is_copied_server_side(tmp_path: Path, s3_bucket: str) -> None:
    paths = write_ct_series(tmp_path, 2, spec=series_spec("s3src"), rows=8, columns=8)
    s3 = boto3.client("s3")
    for path in paths:
        s3.upload_file(str(path), s3_bucket, f"src/{path.name}")
    batches = _batches(f"s3://{s3_bucket}/src")

    staged = stage_batches(batches, f"s3://{s3_bucket}/st", "r")

    assert [s.action for s in staged] == [StageAction.UPLOADED] * 2
    body = s3.get_object(Bucket=s3_bucket, Key=staged[0].key)
    assert body["Body"].read() == paths[0].read_bytes()
    source = s3.head_object(Bucket=s3_bucket, Key=f"src/{paths[0].name}")
    assert body["Metadata"]["source-version"] == source["ETag"].strip('"')
    assert staged[0].sha256 is None  # copied inside S3: never read here


def test_upload_errors_are_reported_per_file(tmp_path: Path, s3_bucket: str) -> None:
    write_ct_series(tmp_path, 1, rows=8, columns=8)
    batches = _batches(str(tmp_path))

    (item,) = stage_batches(batches, f"s3://{s3_bucket}-missing/st", "r")

    assert item.action is StageAction.FAILED
    assert item.error


def test_a_file_over_the_single_put_size_goes_in_parts_with_its_checksum(
    tmp_path: Path, s3_bucket: str
) -> None:
    (path,) = write_ct_series(tmp_path, 1, rows=2100, columns=2100)  # 8.8 MB
    (batch,) = _batches(str(tmp_path))
    client, calls = _counting_client()

    (item,) = stage_batches([batch], f"s3://{s3_bucket}/st", "r", s3=client)
    (again,) = stage_batches([batch], f"s3://{s3_bucket}/st", "r", s3=client)

    assert item.action is StageAction.UPLOADED and calls["UploadPart"] == 2
    assert item.sha256 == sha256_of(path)
    s3 = boto3.client("s3")
    assert s3.get_object(Bucket=s3_bucket, Key=item.key)["Body"].read() == path.read_bytes()
    head = s3.head_object(Bucket=s3_bucket, Key=item.key)
    assert head["Metadata"]["sha256"] == sha256_of(path)
    assert (again.action, again.sha256) == (StageAction.SKIPPED, item.sha256)
