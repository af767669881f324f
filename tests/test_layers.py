"""The project's packages are layers, and imports between them go down only:
the settings know nothing of the pipeline, the tasks nothing of the flows
that run them, the flows nothing of the command line. The local service
(``emulator``) stands beside the pipeline, sharing only the import rules;
the command line (the demo, the local service) and the benches start it.

The service's own layers are tests/emulator/test_layers.py's.
"""

from __future__ import annotations

from pathlib import Path

from tests.source_imports import imported_modules

ROOT = Path(__file__).resolve().parents[1]
# The pipeline, lowest first: each package may import those before it.
PIPELINE = ("import_rules", "config", "tasks", "flows", "deployments", "cli")
MAY_IMPORT = {
    **{package: set(PIPELINE[:level]) for level, package in enumerate(PIPELINE)},
    "cli": {*PIPELINE[:-1], "emulator"},
    "emulator": {"import_rules"},
    "bench": {*PIPELINE[:-1], "emulator"},
}


def _crossings() -> set[tuple[str, str]]:
    crossings = set()
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for imported in imported_modules(path):
                target = imported.split(".")[0]
                if target in MAY_IMPORT and target != package and target not in allowed:
                    crossings.add((importer, target))
    return crossings


def test_every_package_is_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(MAY_IMPORT)


def test_imports_between_packages_go_down() -> None:
    assert _crossings() == set()
