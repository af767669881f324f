from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tasks.discover import SourceEmptyError, SourceNotFoundError, iter_source


def _touch(root: Path, relative: str, data: bytes = b"x") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class TestLocal:
    def test_lists_recursively_in_name_order(self, tmp_path: Path) -> None:
        for name in ["b/2.dcm", "a.dcm", "b/1/z.dcm", "c", "b/10.dcm"]:
            _touch(tmp_path, name)

        files = list(iter_source(str(tmp_path)))

        assert [f.relative_path for f in files] == ["a.dcm", "b/1/z.dcm", "b/10.dcm",
                                                    "b/2.dcm", "c"]
        assert files[0].uri == str(tmp_path / "a.dcm")

    def test_reports_size_and_version(self, tmp_path: Path) -> None:
        _touch(tmp_path, "f.dcm", b"12345")

        (found,) = iter_source(str(tmp_path))

        assert found.size == 5
        assert found.version

    def test_is_a_generator(self, tmp_path: Path) -> None:
        _touch(tmp_path, "a")
        listing = iter_source(str(tmp_path))
        assert next(listing).relative_path == "a"

    def test_missing_folder_is_a_clear_error(self, tmp_path: Path) -> None:
        with pytest.raises(SourceNotFoundError, match="does not exist"):
            list(iter_source(str(tmp_path / "nope")))

    def test_empty_folder_is_a_clear_error(self, tmp_path: Path) -> None:
        (tmp_path / "sub").mkdir()
        with pytest.raises(SourceEmptyError, match="contains no files"):
            list(iter_source(str(tmp_path)))


class TestS3:
    def test_same_listing_semantics_as_local(self, s3_bucket: str) -> None:
        s3 = boto3.client("s3")
        for key in ["in/b/2.dcm", "in/a.dcm", "in/b/1/z.dcm", "other/x.dcm"]:
            s3.put_object(Bucket=s3_bucket, Key=key, Body=b"abc")

        files = list(iter_source(f"s3://{s3_bucket}/in"))

        assert [f.uri for f in files] == [
            f"s3://{s3_bucket}/in/a.dcm",
            f"s3://{s3_bucket}/in/b/1/z.dcm",
            f"s3://{s3_bucket}/in/b/2.dcm",
        ]
        assert [f.relative_path for f in files] == ["a.dcm", "b/1/z.dcm", "b/2.dcm"]
        assert all(f.size == 3 and f.version for f in files)

    def test_missing_prefix_is_a_clear_error(self, s3_bucket: str) -> None:
        with pytest.raises(SourceNotFoundError):
            list(iter_source(f"s3://{s3_bucket}/nothing-here"))

    def test_missing_bucket_is_a_clear_error(self, s3_bucket: str) -> None:
        with pytest.raises(SourceNotFoundError):
            list(iter_source(f"s3://{s3_bucket}-absent/in"))
