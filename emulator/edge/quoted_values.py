"""Input values quoted back in error messages, cut to a readable length.

An error that quotes what the client sent helps it find its mistake, but
quoting a 50 MB value whole makes the answer (and any log of it) as large as
the abuse. Every message that quotes input goes through ``quoted``.
"""

from __future__ import annotations

QUOTED_MAX_CHARS = 200


def quoted(value: object) -> str:
    """``value`` as text, at most ``QUOTED_MAX_CHARS`` of it; a longer one
    ends in an ellipsis and says how long it was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= QUOTED_MAX_CHARS:
        return text
    return f"{text[:QUOTED_MAX_CHARS]}… ({len(text)} characters)"
