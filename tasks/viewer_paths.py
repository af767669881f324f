"""Where ``dicom-import view`` opens an image set's study: a path to append to
the address it prints (its origin, once the token URL has been opened).

A pure function of UIDs, so the report derives it from its own columns and
the ledger keeps nothing more. A primary image set opens as its study (what
HealthImaging's DICOMweb shows of it); a non-primary one by its image set
ID, so a reviewer sees what landed apart before running ``reconcile``.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd

# OHIF's route for a study, and the page parameter the viewer's app-config reads.
STUDY_ROUTE = "/viewer"
IMAGE_SET_PARAMETER = "imageSetId"


def viewer_path(study_instance_uid: str | None, image_set_id: str | None,
                is_primary: bool | None) -> str | None:
    """None when the file landed in no image set."""
    if not study_instance_uid or not image_set_id:
        return None
    query = {"StudyInstanceUIDs": study_instance_uid}
    if is_primary is False:
        query[IMAGE_SET_PARAMETER] = image_set_id
    return f"{STUDY_ROUTE}?{urlencode(query)}"


def viewer_paths(rows: pd.DataFrame) -> pd.Series:
    """:func:`viewer_path` of each report row (object dtype, None where none)."""
    cells = rows[["study_instance_uid", "image_set_id", "is_primary"]].astype(object)
    cells = cells.where(cells.notna(), None)
    paths = [viewer_path(*row) for row in cells.itertuples(index=False, name=None)]
    return pd.Series(paths, index=rows.index, dtype=object)
