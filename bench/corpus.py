"""Corpora of a million small files, written in minutes rather than hours.

pydicom writes about 40 files a second here; a million would take most of a
day. Each series is written once by pydicom (the template), and its other
slices are the template's bytes with the SOP Instance UID stamped in: the
placeholder UIDs have a fixed width, so lengths and offsets stay valid and
every file is a real, distinct DICOM instance.
"""

from __future__ import annotations

from pathlib import Path

from emulator.samples import SeriesSpec, ct_slice, write

_ROOT = "1.2.826.0.1.3680043.10.1234"
_DIGITS = 8


def _uid(kind: int, series: int, instance: int = 0) -> str:
    # A leading 1, not 0: UID components have no leading zeros.
    return f"{_ROOT}.{kind}.1{series:0{_DIGITS}d}.1{instance:0{_DIGITS}d}"


def write_stamped_corpus(folder: Path, files: int, series_size: int = 100) -> None:
    """``files`` CT slices of 8x8 pixels, ``series_size`` per series folder."""
    for series, first in enumerate(range(0, files, series_size)):
        count = min(series_size, files - first)
        spec = SeriesSpec(_uid(1, series), _uid(2, series))
        template = ct_slice(spec, 0, rows=8, columns=8)
        placeholder = _uid(3, series)
        template.SOPInstanceUID = placeholder
        template.file_meta.MediaStorageSOPInstanceUID = placeholder
        target = folder / f"s{series:06d}"
        body = write(template, target / "slice_0000.dcm").read_bytes()
        stamp = placeholder.encode()
        for index in range(1, count):
            unique = _uid(3, series, index).encode()
            (target / f"slice_{index:04d}.dcm").write_bytes(body.replace(stamp, unique))
