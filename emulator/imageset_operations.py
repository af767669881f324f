"""Image set operations of the HealthImaging data plane (mixin of the backend)."""

from __future__ import annotations


class ImageSetOperations:
    pass
