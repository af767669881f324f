"""Status words live in tasks.statuses only (and the choices of a setting in
config.settings, which imports nothing of the pipeline): a status spelled as
a string in another module drifts from the enum it copies without any test
noticing."""

from __future__ import annotations

import ast
from enum import Enum
from pathlib import Path

import pytest

from config import settings
from tasks import statuses

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = sorted(p for folder in ("flows", "tasks", "cli", "config")
                  for p in (ROOT / folder).rglob("*.py"))
VOCABULARY_MODULES = {ROOT / "tasks" / "statuses.py": statuses,
                      ROOT / "config" / "settings.py": settings}
VOCABULARIES = [value for module in VOCABULARY_MODULES.values()
                for value in vars(module).values()
                if isinstance(value, type) and issubclass(value, Enum)
                and value.__module__ == module.__name__]
WORDS = {member.value for vocabulary in VOCABULARIES for member in vocabulary}


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef)
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def test_every_status_vocabulary_is_in_the_one_module() -> None:
    names = {vocabulary.__name__ for vocabulary in VOCABULARIES}
    assert {"FileStatus", "JobStatus", "DatastoreStatus", "FileValidity", "StageAction",
            "Change", "Skip", "RetryClass"} <= names


@pytest.mark.parametrize("path", PIPELINE, ids=_relative)
def test_no_other_module_defines_a_status_enum(path: Path) -> None:
    if path in VOCABULARY_MODULES:
        return
    tree = ast.parse(path.read_text())
    enums = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
             and any(isinstance(base, ast.Name) and base.id == "StrEnum" for base in node.bases)]
    assert enums == [], f"{_relative(path)} defines {enums}: put them in tasks/statuses.py"


def _parameter_names(tree: ast.AST) -> set[int]:
    """Names of a flow's parameters read by name (``_parameter("job")``): a
    field's name, not a status, even when it is spelled like one."""
    return {id(call.args[0]) for call in ast.walk(tree)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "_parameter" and call.args}


@pytest.mark.parametrize("path", PIPELINE, ids=_relative)
def test_no_module_spells_a_status_as_a_string(path: Path) -> None:
    if path in VOCABULARY_MODULES:
        return
    tree = ast.parse(path.read_text())
    skipped = _docstrings(tree) | _parameter_names(tree)
    spelled = [f"line {node.lineno}: {node.value!r}" for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and node.value in WORDS and id(node) not in skipped]
    assert spelled == [], f"{_relative(path)} spells statuses as strings: {spelled}"
