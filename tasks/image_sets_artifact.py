"""The run's image sets as a Prefect artifact: for each, whether it is
primary, how many of the run's files it holds and the path under
``dicom-import view`` that opens its study. UIDs and counts only, no PHI:
artifacts are visible to every UI user."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd
from prefect.artifacts import create_table_artifact

IMAGE_SETS_ARTIFACT_KEY = "dicom-ingest-image-sets"
# A run of a million files lands in thousands of image sets: the artifact
# lists the first ones, the report's viewer_path column has them all.
ARTIFACT_ROWS = 500


@dataclass
class ImageSetRow:
    image_set_id: str
    primary: bool
    files: int
    viewer_path: str | None


@dataclass
class LandedImageSets:
    """Image sets by ID, in the order the run's windows reported them."""

    rows: dict[str, ImageSetRow] = field(default_factory=dict)

    def add(self, files: pd.DataFrame) -> None:
        """One window's report rows (those in no image set are left out)."""
        landed = files.dropna(subset=["image_set_id"])
        for image_set_id, group in landed.groupby("image_set_id", sort=False):
            row = self.rows.setdefault(str(image_set_id), ImageSetRow(
                str(image_set_id), bool(group["is_primary"].iloc[0]), 0,
                group["viewer_path"].iloc[0]))
            row.files += len(group)


def publish_image_sets(landed: LandedImageSets) -> None:
    """Every run, once, so the artifact's latest version is this run's."""
    rows = list(landed.rows.values())
    more = len(rows) - ARTIFACT_ROWS
    create_table_artifact(
        key=IMAGE_SETS_ARTIFACT_KEY,
        table=[asdict(row) for row in rows[:ARTIFACT_ROWS]],
        description=(
            f"{len(rows)} image sets this run's files landed in; `dicom-import view` opens "
            "each one's study at its viewer_path, appended to the address it prints."
            + (f" The first {ARTIFACT_ROWS} are listed; the per-file report's viewer_path "
               "column has every one." if more > 0 else "")),
    )
