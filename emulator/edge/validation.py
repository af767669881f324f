"""Server-side validation of request parameters against the botocore model.

botocore checks only types, required members and minimums on the client; the
real service rejects everything else (patterns, maximum lengths, enums, ranges,
unions with more than one member). The model is the single source of those
rules, so they are walked from it instead of being written out per operation.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from botocore.model import Shape

from emulator.edge.quoted_values import quoted
from emulator.state.exceptions import ValidationException

# The model's patterns are Java regular expressions; translate the few
# constructs Python's ``re`` spells differently.
_JAVA_CLASSES = {r"\p{ASCII}": r"[\x00-\x7F]"}


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    for java, python in _JAVA_CLASSES.items():
        pattern = pattern.replace(java, python)
    return re.compile(pattern, re.DOTALL)


def _fail(path: str, value: Any, constraint: str) -> ValidationException:
    shown = "***" if isinstance(value, (bytes, bytearray)) else quoted(value)
    return ValidationException(
        f"1 validation error detected: Value '{shown}' at '{path}' failed to satisfy "
        f"constraint: {constraint}"
    )


def validate(shape: Shape, value: Any, path: str) -> None:
    """Raise ValidationException naming the first field that breaks the model."""
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        _validate_structure(shape, value, path)
    elif kind == "list":
        if not isinstance(value, list):
            raise _fail(path, value, "Member must be a list")
        _check_size(path, value, len(value), meta)
        for i, item in enumerate(value):
            validate(shape.member, item, f"{path}.{i + 1}.member")
    elif kind == "map":
        if not isinstance(value, dict):
            raise _fail(path, value, "Member must be a map")
        _check_size(path, value, len(value), meta)
        for key, item in value.items():
            validate(shape.key, key, f"{path}.key")
            validate(shape.value, item, f"{path}.{key}")
    elif kind == "string":
        if not isinstance(value, str):
            raise _fail(path, value, "Member must be a string")
        _check_size(path, value, len(value), meta)
        if "enum" in meta and value not in meta["enum"]:
            raise _fail(path, value, f"Member must satisfy enum value set: {meta['enum']}")
        pattern = meta.get("pattern")
        if pattern and not _compile(pattern).fullmatch(value):
            raise _fail(path, value, f"Member must satisfy regular expression pattern: {pattern}")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, value, "Member must be an integer")
        if "min" in meta and value < meta["min"]:
            raise _fail(path, value, f"Member must have value >= {meta['min']}")
        if "max" in meta and value > meta["max"]:
            raise _fail(path, value, f"Member must have value <= {meta['max']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _fail(path, value, "Member must be a boolean")
    elif kind == "blob":
        if not isinstance(value, (bytes, bytearray)):
            raise _fail(path, value, "Member must be base64-encoded binary data")
        _check_size(path, value, len(value), meta)
    elif kind == "timestamp" and not isinstance(value, (int, float)):
        raise _fail(path, value, "Member must be a timestamp in epoch seconds")


def _check_size(path: str, value: Any, size: int, meta: dict[str, Any]) -> None:
    if "min" in meta and size < meta["min"]:
        raise _fail(path, value, f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and size > meta["max"]:
        raise _fail(path, value, f"Member must have length less than or equal to {meta['max']}")


def _validate_structure(shape: Any, value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _fail(path, value, "Member must be a structure")
    prefix = f"{path}." if path else ""
    for name in shape.required_members:
        if value.get(name) is None:
            raise ValidationException(
                f"1 validation error detected: Value null at '{prefix}{name}' failed to "
                "satisfy constraint: Member must not be null"
            )
    unknown = set(value) - set(shape.members)
    if unknown:
        raise ValidationException(
            f"Unknown field(s) at '{path or 'body'}': {quoted(sorted(unknown))}"
        )
    present = [name for name, item in value.items() if item is not None]
    if shape.is_tagged_union and len(present) != 1:
        raise ValidationException(
            f"'{path or 'body'}' must set exactly one of {sorted(shape.members)}, "
            f"got {quoted(present)}"
        )
    for name in present:
        validate(shape.members[name], value[name], f"{prefix}{name}")
