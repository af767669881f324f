"""What a module imports, read from its source: the layer tests' one reader.

Every import counts, wherever it is (a TYPE_CHECKING block, a function
body): a crossing made for types, or made late, is still one a reader must
know about.
"""

from __future__ import annotations

import ast
from pathlib import Path


def imported_modules(path: Path) -> set[str]:
    """The absolute names the module at ``path`` imports; ``from a import b``
    gives ``a.b``, since ``b`` may be a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found
