from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from import_rules.codes import ReasonCode
from tasks.batch import halves, make_batches
from tasks.statuses import FileValidity
from tasks.validate import ValidationRecord


def _file(series: str, index: int, size: int = 100, study: str = "1.2") -> ValidationRecord:
    return ValidationRecord(
        uri=f"/src/{series}/{index:05d}.dcm",
        relative_path=f"{series}/{index:05d}.dcm",
        size=size,
        status=FileValidity.VALID,
        sop_instance_uid=f"1.3.{series}.{index}",
        study_instance_uid=study,
        series_instance_uid=f"1.4.{series}",
        version=f"{series}-{index}",
    )


def _series(name: str, count: int, size: int = 100) -> list[ValidationRecord]:
    return [_file(name, i, size) for i in range(count)]


def _series_batches(batches) -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for batch in batches:
        for f in batch.files:
            where.setdefault(f.series_instance_uid, set()).add(batch.batch_id)
    return where


def test_series_stay_together_and_quotas_hold() -> None:
    records = _series("1", 6) + _series("2", 5) + _series("3", 4) + _series("4", 3)

    batches = make_batches(records, max_files=10, max_bytes=10_000)

    assert all(len(b.files) <= 10 for b in batches)
    assert all(len(ids) == 1 for ids in _series_batches(batches).values())
    assert sum(len(b.files) for b in batches) == len(records)
    assert len(batches) == 2  # 6+4 and 5+3


def test_byte_quota_is_respected() -> None:
    records = _series("1", 4, size=300) + _series("2", 4, size=300)

    batches = make_batches(records, max_files=100, max_bytes=1_500)

    assert len(batches) == 2
    assert all(b.total_bytes <= 1_500 for b in batches)


def test_series_larger_than_a_batch_is_split() -> None:
    batches = make_batches(_series("big", 25), max_files=10, max_bytes=10**9)

    assert [len(b.files) for b in batches] == [10, 10, 5]
    assert len({f.uri for b in batches for f in b.files}) == 25


def test_invalid_and_duplicate_files_are_left_out() -> None:
    good = _series("1", 2)
    bad = ValidationRecord("/src/bad", "bad", 1, FileValidity.INVALID, ReasonCode.NOT_P10)
    dup = ValidationRecord("/src/dup", "dup", 1, FileValidity.DUPLICATE)

    (batch,) = make_batches([*good, bad, dup])

    assert [f.uri for f in batch.files] == [f.uri for f in good]


def test_same_input_in_any_order_gives_same_batches() -> None:
    records = [f for i in range(20) for f in _series(str(i), (i % 7) + 1)]
    shuffled = records[:]
    random.Random(4).shuffle(shuffled)

    first = make_batches(records, max_files=9, max_bytes=10**9)
    second = make_batches(shuffled, max_files=9, max_bytes=10**9)

    assert [b.batch_id for b in first] == [b.batch_id for b in second]
    assert [b.files for b in first] == [b.files for b in second]
    assert len({b.batch_id for b in first}) == len(first)
    assert all(len(b.batch_id) == 16 for b in first)


@pytest.mark.parametrize("change", [{"version": "new"}, {"size": 101}])
def test_a_changed_file_changes_the_digest(change: dict[str, Any]) -> None:
    records = _series("1", 3)
    changed = [*records[:2], replace(records[2], **change)]

    (before,) = make_batches(records)
    (after,) = make_batches(changed)

    assert before.digest != after.digest


def test_default_quota_is_5000_files() -> None:
    batches = make_batches(_series("1", 5001, size=1))
    assert Counter(len(b.files) for b in batches) == Counter({5000: 1, 1: 1})


def test_rejects_non_positive_quotas() -> None:
    with pytest.raises(ValueError):
        make_batches(_series("1", 1), max_files=0)


def test_halves_are_batches_of_their_own_and_cover_the_batch() -> None:
    (whole,) = make_batches(_series("s", 5))
    first, second = halves(whole)
    assert [len(first.files), len(second.files)] == [3, 2]
    assert first.files + second.files == whole.files
    assert len({whole.digest, first.digest, second.digest}) == 3
    assert halves(whole) == [first, second]  # the same parts on every split
    assert halves(first)[0].files == first.files[:2]
    (single,) = make_batches(_series("t", 1))
    assert halves(single) == [single]
