"""A data store created with ``losslessStorageFormat=JPEG_2000_LOSSLESS``
stores lossless frames as JPEG 2000 lossless (1.2.840.10008.1.2.4.90), not
HTJ2K, and says so in the metadata and on GetImageFrame."""

from __future__ import annotations

import io
import zlib
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.pixels import iter_pixels

from tests.emulator.conftest import wait_datastore_active
from tests.emulator.test_import import (
    frame,
    little_endian,
    metadata,
    only_instance,
    pydicom_file,
    run_import,
    signed_slice,
)

JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"

SOURCES = {
    "CT_small.dcm": lambda: pydicom_file("CT_small.dcm"),
    "SC_rgb_rle_2frame.dcm": lambda: pydicom_file("SC_rgb_rle_2frame.dcm"),
    "generated_signed.dcm": signed_slice,
}


@pytest.fixture
def j2k_datastore(mi: Any) -> str:
    ds = mi.create_datastore(datastoreName="j2k", losslessStorageFormat="JPEG_2000_LOSSLESS")
    wait_datastore_active(mi, ds["datastoreId"])
    return ds["datastoreId"]


def test_the_format_is_returned_by_get_datastore(mi: Any, j2k_datastore: str) -> None:
    props = mi.get_datastore(datastoreId=j2k_datastore)["datastoreProperties"]
    assert props["losslessStorageFormat"] == "JPEG_2000_LOSSLESS"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_frames_are_stored_as_jpeg_2000_lossless(
    mi: Any, s3: Any, j2k_datastore: str, name: str
) -> None:
    data = SOURCES[name]()
    run = run_import(mi, s3, j2k_datastore, {name: data}, f"j2k-{name}/")
    set_id = run.succeeded(f"j2k-{name}/{name}")["imageSetId"]
    instance = only_instance(metadata(mi, j2k_datastore, set_id))
    source = pydicom.dcmread(io.BytesIO(data))
    expected = [little_endian(p) for p in iter_pixels(source, as_rgb=False)]

    assert instance["StoredTransferSyntaxUID"] == JPEG_2000_LOSSLESS
    assert len(instance["ImageFrames"]) == len(expected)
    for image_frame, pixels in zip(instance["ImageFrames"], expected, strict=True):
        stored, content_type = frame(mi, j2k_datastore, set_id, image_frame["ID"])
        assert content_type == "image/j2c"
        assert stored[:4] == b"\xff\x4f\xff\x51"  # a raw J2K codestream: SOC, SIZ
        assert image_frame["FrameSizeInBytes"] == len(stored)
        decoded = little_endian(imagecodecs.jpeg2k_decode(stored))
        np.testing.assert_array_equal(decoded, pixels)
        checksum = image_frame["PixelDataChecksumFromBaseToFullResolution"][-1]
        assert checksum["Checksum"] == zlib.crc32(decoded.tobytes())
