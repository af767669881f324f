"""A settings file or variable the tool cannot use, said in one line that
names where the mistake is: the file with its line and column, or the
variable. Without this a typo in ``dicom-import.toml`` ended every command
in a traceback of tomllib's internals, and an invalid value there was blamed
on a command-line option the operator never typed."""

from __future__ import annotations

import os
import re
import tomllib

from pydantic import ValidationError

from config.settings import Settings, get_settings, settings_file

# tomllib says where as "(at line 3, column 5)" at the end of its message.
_POSITION = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def settings_problem() -> str | None:
    """Why the settings cannot be read, or None when they can."""
    try:
        get_settings()
    except tomllib.TOMLDecodeError as error:
        return f"settings file {os.path.abspath(settings_file())}: {_where(str(error))}"
    except OSError as error:
        return f"settings file {os.path.abspath(settings_file())}: cannot read it: {error.strerror}"
    except ValidationError as error:
        return _invalid(error)
    return None


def _where(message: str) -> str:
    found = _POSITION.match(message)
    if found is None:
        return message
    return f"line {found['line']}, column {found['column']}: {found['what']}"


def _invalid(error: ValidationError) -> str:
    """Each value named by where it came from: the variable when it is set
    (it wins over the file), else the file's key."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    variables = {key.upper() for key in os.environ}
    from_variables, from_file = [], []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "settings"
        if f"{prefix}{name}".upper() in variables:
            from_variables.append(f"{prefix}{name.upper()}: {problem['msg']}")
        else:
            from_file.append(f"{name}: {problem['msg']}")
    if from_file:
        from_variables.append(f"settings file {os.path.abspath(settings_file())}: "
                              + "; ".join(from_file))
    return "; ".join(from_variables)
