"""The pixel check: each source frame's CRC-32 against HealthImaging's checksum.

HealthImaging computes, at import, a CRC-32 of every frame it stored
(``PixelDataChecksumFromBaseToFullResolution``, the last entry being the
full resolution) and checks its own encoding against it. Comparing that
checksum with one of the source's decoded frame proves the pixels
HealthImaging took in are the source's, without downloading a frame. It
does not re-read the stored frames: that is ``GetImageFrame`` per frame,
the slow way ``bench/verify.py`` compares against.
"""

from __future__ import annotations

from typing import Any

from tasks.statuses import Verification
from tasks.verify.results import FileVerification
from tasks.verify.source import SourceFacts


def check_pixels(entry: dict[str, Any], source: SourceFacts) -> FileVerification | None:
    """None when every frame matches; else what differed, by frame number
    (1-based, as DICOM numbers frames)."""
    if source.checksums is None:
        return FileVerification(source.source_uri, Verification.NOT_CHECKED,
                                source.problem or "source frames not decoded")
    stored = entry.get("ImageFrames") or []
    differing = []
    unchecked = []
    for number, (frame, checksum) in enumerate(zip(stored, source.checksums, strict=False), 1):
        resolutions = frame.get("PixelDataChecksumFromBaseToFullResolution") or []
        if not resolutions:
            unchecked.append(number)
        elif int(resolutions[-1]["Checksum"]) != checksum:
            differing.append(number)
    if differing:
        return FileVerification(source.source_uri, Verification.MISMATCH,
                                f"pixel checksum differs in {_frames(differing)}")
    if unchecked:
        return FileVerification(source.source_uri, Verification.NOT_CHECKED,
                                f"no checksum stored for {_frames(unchecked)}")
    return None


def _frames(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:10])
    more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
    return f"frame{'s' if len(numbers) > 1 else ''} {shown}{more}"
