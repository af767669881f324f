from __future__ import annotations

import pytest

from tasks.locations import S3Uri


@pytest.mark.parametrize("uri", [
    "s3://abc", "s3://my-bucket/a/b", "s3://a.b-c.1/x/", "s3://" + "a" * 63 + "/k",
    "s3://name-ending-in-s3alias/k",
])
def test_valid_bucket_names_parse(uri: str) -> None:
    assert str(S3Uri.parse(uri)) == uri


@pytest.mark.parametrize(("uri", "problem"), [
    ("S3://bucket/key", "is not an s3:// URI"),
    ("s3:/bucket/key", "is not an s3:// URI"),
    ("s3:///key", "has no bucket"),
    ("s3://My_Bucket/key", "3 to 63 lowercase letters"),
    ("s3://ab/key", "3 to 63"),
    ("s3://" + "a" * 64 + "/key", "3 to 63"),
    ("s3://-bucket/key", "starting and ending with a letter or digit"),
    ("s3://bucket./key", "starting and ending with a letter or digit"),
    ("s3://my..bucket/key", "no two dots in a row"),
    ("s3://192.168.5.4/key", "not IP addresses"),
])
def test_invalid_uris_say_why(uri: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        S3Uri.parse(uri)
