"""``docs/dicom-import.toml``, the example settings file, loaded through the
settings class: it names every setting, with its default, and every example
value in it is accepted, so it cannot drift from ``config/settings.py``."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "dicom-import.toml"
# "name = value", or "# name = value" for a setting without a default.
SETTING = re.compile(r"^(?:# )?([a-z_]+) = ", re.MULTILINE)


def load(path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings an operator gets from this file alone."""
    for name in os.environ:
        if name.startswith("DICOM_IMPORT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DICOM_IMPORT_CONFIG", str(path))
    return Settings()


def defaults() -> dict[str, Any]:
    return {name: field.get_default(call_default_factory=True)
            for name, field in Settings.model_fields.items()}


def test_every_setting_is_named_once() -> None:
    names = SETTING.findall(EXAMPLE.read_text())
    assert sorted(names) == sorted(Settings.model_fields)


def test_as_shipped_it_sets_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(EXAMPLE, monkeypatch).model_dump() == defaults()


def test_every_example_value_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = tmp_path / "dicom-import.toml"
    every.write_text(re.sub(r"^# ([a-z_]+ = )", r"\1", EXAMPLE.read_text(), flags=re.MULTILINE))
    written = tomllib.loads(every.read_text())
    assert set(written) == set(Settings.model_fields)
    loaded = load(every, monkeypatch).model_dump()
    assert {name: loaded[name] for name in written} == written
