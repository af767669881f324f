"""Why a request is refused at the door (its signature, its admin token)."""

from __future__ import annotations


class AuthError(Exception):
    """A refused request. ``reason`` is one of: missing, malformed,
    unknown_key, signature, expired, payload_hash, admin; each service
    renders it as AWS names it (emulator.edge.refusals)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
