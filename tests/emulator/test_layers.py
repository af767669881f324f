"""The local service's folders are its three layers, and the imports between
them go one way: the edge and the worker use the state; the state uses
neither. Read from the source, so a TYPE_CHECKING import counts too: a
crossing made for types is still one a reader must know about."""

from __future__ import annotations

import ast
from pathlib import Path

EMULATOR = Path(__file__).resolve().parents[2] / "emulator"
LAYERS = ("edge", "state", "worker")
# Which layers each layer may import, besides itself and the top-level
# modules (cli, config, faults, samples).
MAY_IMPORT = {"edge": {"state"}, "worker": {"state"}, "state": set()}
# Crossings the rule does not allow yet, each with why it is still there.
KNOWN_CROSSINGS = {
    # The backend starts import jobs and checks their input quota up front;
    # turning that around (the worker handed to the backend) is its own change.
    ("emulator.state.models", "emulator.worker.importer"),
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "emulator" and parts[1] in LAYERS else None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from emulator.worker import importer" names the module in the alias.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("emulator.")}


def _crossings() -> set[tuple[str, str]]:
    crossings = set()
    for layer in LAYERS:
        for path in sorted((EMULATOR / layer).glob("*.py")):
            importer = f"emulator.{layer}.{path.stem}"
            for imported in _imports(path):
                target = _layer(imported)
                if target and target != layer and target not in MAY_IMPORT[layer]:
                    crossings.add((importer, ".".join(imported.split(".")[:3])))
    return crossings


def test_each_layer_is_a_folder_of_modules() -> None:
    for layer in LAYERS:
        modules = {p.stem for p in (EMULATOR / layer).glob("*.py")} - {"__init__"}
        assert modules, f"emulator/{layer}/ holds no module"
    top = {p.stem for p in EMULATOR.glob("*.py")}
    assert top == {"__init__", "cli", "config", "faults", "samples"}


def test_imports_between_layers_go_one_way() -> None:
    assert _crossings() == KNOWN_CROSSINGS
