from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flows.run_identity import source_label
from tasks.locations import S3Uri, fs_path


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


def test_fs_path_drops_the_scheme_of_s3_uris_only() -> None:
    assert fs_path("s3://my-bucket/a/b.dcm") == "my-bucket/a/b.dcm"
    assert fs_path("/data/in/b.dcm") == "/data/in/b.dcm"
    with pytest.raises(ValueError, match="not a valid bucket name"):
        fs_path("s3://My_Bucket/a.dcm")


def test_a_run_is_named_after_the_last_two_parts_of_its_source() -> None:
    assert source_label("s3://my-bucket/landing/ct/") == "landing/ct"
    assert source_label("s3://my-bucket") == "my-bucket"
    assert source_label("/data/landing/ct") == "landing/ct"


ROOT = Path(__file__).resolve().parents[2]
PIPELINE = sorted(p for folder in ("flows", "tasks", "cli", "config")
                  for p in (ROOT / folder).rglob("*.py") if p != ROOT / "tasks" / "locations.py")


@pytest.mark.parametrize("path", PIPELINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_s3uri_takes_uris_apart(path: Path) -> None:
    """A bare "s3://" outside tasks/locations.py is a URI cut by hand
    (``removeprefix("s3://")``, ``startswith("s3://")``); building one in an
    f-string is fine."""
    tree = ast.parse(path.read_text())
    in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                   for part in node.values}
    cut = [node.lineno for node in ast.walk(tree)
           if isinstance(node, ast.Constant) and node.value == "s3://"
           and id(node) not in in_fstrings]
    assert cut == [], f"lines {cut}: use S3Uri.parse, is_s3 or fs_path (tasks.locations)"
