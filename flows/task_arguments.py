"""Arguments that Prefect hands to a task as they are, without walking them."""

from __future__ import annotations

from typing import TypeVar, cast

from prefect.utilities.annotations import quote as prefect_quote

T = TypeVar("T")


def quote(value: T) -> T:
    """Prefect's ``quote``, typed as the value it wraps.

    Prefect unwraps a quoted argument before the task runs, so the task gets
    the value itself; but a task's call signature is its function's, which
    takes the value and not ``quote[value]``, so a type checker rejects every
    quoted call. Typed as the value, the call keeps every other argument checked.
    """
    return cast(T, prefect_quote(value))
