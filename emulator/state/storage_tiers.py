"""Storage tiers of image sets: Frequent Access until 30 consecutive days pass
without an access, then Archive Instant Access until the next access.

AWS lists what counts as an access: GetImageSetMetadata, GetImageFrame,
DICOMweb retrieval, CopyImageSet (the new image set or the destination) and
UpdateImageSetMetadata; GetImageSet, SearchImageSets, list, tag and data
store operations do not. Choices where AWS is silent, written down here:

* ``lastAccessedAt`` is set when an image set is created (import or copy) and
  on every access; an import that adds a version to an existing set is not an
  access, and neither is the source of a copy (AWS names only the copy).
* The tier is worked out when it is read, from ``lastAccessedAt`` and the
  service's clock (``ServiceConfig.clock``), so moving the clock moves sets
  between tiers at once; an access brings a set back to Frequent Access.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

FREQUENT_ACCESS = "FREQUENT_ACCESS"
ARCHIVE_INSTANT_ACCESS = "ARCHIVE_INSTANT_ACCESS"
ARCHIVE_AFTER = timedelta(days=30)


def last_accessed_at(record: dict[str, Any]) -> float:
    """Records written before tiers existed count from their creation."""
    return float(record.get("lastAccessedAt", record["createdAt"]))


def storage_tier(record: dict[str, Any], now: float) -> str:
    idle = now - last_accessed_at(record)
    return ARCHIVE_INSTANT_ACCESS if idle >= ARCHIVE_AFTER.total_seconds() else FREQUENT_ACCESS


def tier_properties(record: dict[str, Any], now: float) -> dict[str, Any]:
    """The two members GetImageSet and SearchImageSets summaries carry."""
    return {"lastAccessedAt": last_accessed_at(record), "storageTier": storage_tier(record, now)}
