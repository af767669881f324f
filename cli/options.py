"""Command-line options generated from a flow's parameter model.

The CLI, the Prefect UI form and the settings file share one model per flow,
so they can never disagree on a name, a default or a meaning. Help shows the
default each option takes on this machine (from ``DICOM_IMPORT_*`` or
``dicom-import.toml``) and marks what must be given, and errors name options
as they are typed here (``--staging-prefix``), not as fields.
"""

from __future__ import annotations

import argparse
import re
import sys
from enum import Enum
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

Model = TypeVar("Model", bound=BaseModel)


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _option_type(annotation: Any) -> type:
    kinds: list[type] = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    return kinds[0]


def _choices(kind: type) -> list[str] | None:
    """The words an enum option takes, so that a mistyped one is answered with
    the list (argparse's "invalid choice"), not with the enum's class name."""
    return [member.value for member in kind] if isinstance(kind, type) and issubclass(
        kind, Enum) else None


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        try:
            return field.default_factory()  # type: ignore[call-arg]
        except Exception:  # an unreadable settings file is reported when the run starts
            return None
    return None if field.default is PydanticUndefined else field.default


def _help(field: FieldInfo, needed: bool) -> str:
    # argparse formats help with %: a description saying "2%" must not break it.
    text = (field.description or "").replace("%", "%%")
    default = _default(field)
    if needed and default in (None, ""):
        return f"{text} Required (or set it in the settings)."
    if default not in (None, "") and not isinstance(default, bool):
        return f"{text} Default: {default}."
    return text


def add_model_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    positional: tuple[str, ...] = (),
    needed: tuple[str, ...] = (),
) -> None:
    """One option per field of ``model``; ``positional`` fields become arguments.
    ``needed`` names fields the model only requires in some cases (to import,
    not in a dry run), so help can say so."""
    for name in positional:
        parser.add_argument(name, help=_help(model.model_fields[name], needed=False))
    for name, field in model.model_fields.items():
        if name in positional or _set_by_flows(field):
            continue
        if _option_type(field.annotation) is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=_help(field, name in needed))
        elif choices := _choices(_option_type(field.annotation)):
            parser.add_argument(flag(name), dest=name, choices=choices, default=None,
                                help=_help(field, name in needed))
        else:
            parser.add_argument(flag(name), dest=name, type=_option_type(field.annotation),
                                default=None, help=_help(field, name in needed),
                                metavar=name.upper())


def _set_by_flows(field: FieldInfo) -> bool:
    """Parameters one flow passes another (a migration's listing), never typed."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("set_by_flows"))


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="Also show Prefect's own log lines on the console (they always "
                        "go to the Prefect API and its UI).")


def parameters_or_complain(
    command: str, args: argparse.Namespace, model: type[Model]
) -> Model | None:
    """The model from the options given (fields left out take their defaults),
    or None once the refusal is on stderr as one line naming the command and
    the option as typed: every command ends a mistyped option the same way."""
    given = {
        name: value for name, value in vars(args).items()
        if name in model.model_fields and value is not None
    }
    try:
        return model(**given)
    except ValidationError as error:
        print(f"dicom-import {command}: {_describe(error, model)}", file=sys.stderr)
        return None


def _describe(error: ValidationError, model: type[BaseModel]) -> str:
    problems = []
    for problem in error.errors():
        names = [str(part) for part in problem["loc"] if str(part) in model.model_fields]
        message = problem["msg"].removeprefix("Value error, ")
        if names:
            problems.append(f"{_as_typed(names[0], model)}: {message}")
        else:
            # The model's own rule, whose message names fields (and no value).
            problems.append(_fields_as_typed(message, model))
    return "; ".join(problems)


def _as_typed(name: str, model: type[BaseModel]) -> str:
    """A field as the command line spells it: a field without a default is
    the positional argument (SOURCE), any other an option (--datastore)."""
    return name.upper() if model.model_fields[name].is_required() else flag(name)


def _fields_as_typed(message: str, model: type[BaseModel]) -> str:
    """Field names in a model's message, spelled as on the command line."""
    names = "|".join(sorted((re.escape(n) for n, field in model.model_fields.items()
                             if not _set_by_flows(field)), key=len, reverse=True))
    return re.sub(rf"\b({names})\b", lambda m: _as_typed(m.group(1), model), message)
