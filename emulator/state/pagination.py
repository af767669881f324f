"""nextToken pagination for the data plane list operations.

A token carries the offset and a fingerprint of the query it belongs to, so a
client that mixes up tokens between queries gets a ValidationException rather
than a silently wrong page.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, TypeVar

from emulator.state.exceptions import ValidationException

T = TypeVar("T")
MAX_PAGE = 50


def fingerprint(query: Any) -> str:
    return hashlib.sha256(repr(query).encode()).hexdigest()[:16]


def paginate(
    items: list[T], max_results: int | None, next_token: str | None, query: Any
) -> tuple[list[T], str | None]:
    """One page of ``items`` and the token for the next one (None at the end)."""
    expected = fingerprint(query)
    start = 0
    if next_token:
        try:
            offset, _, owner = base64.urlsafe_b64decode(next_token.encode()).decode().partition(":")
            start = int(offset)
        except ValueError:
            raise ValidationException("nextToken is not a token this service issued") from None
        if owner != expected:
            raise ValidationException("nextToken belongs to another request; repeat that request")
    size = max_results or MAX_PAGE
    page = items[start : start + size]
    if start + size >= len(items):
        return page, None
    return page, base64.urlsafe_b64encode(f"{start + size}:{expected}".encode()).decode()
