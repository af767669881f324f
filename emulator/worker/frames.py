"""Image frames: what an import stores for each frame of an instance.

AWS keeps pixel data in the data store's lossless storage format, HTJ2K
lossless (stored transfer syntax ``1.2.840.10008.1.2.4.202``, served as
``image/jph``) by default or JPEG 2000 lossless (``1.2.840.10008.1.2.4.90``)
when the store was created with ``JPEG_2000_LOSSLESS``, except for syntaxes that
are lossy already (JPEG baseline, JPEG 2000 lossy, HTJ2K lossy) and video, which
it keeps as they came (behaviour doc §3.2). Frames are decoded with pydicom
and encoded with OpenJPH through imagecodecs; both release the GIL, so the
importer runs this in a thread pool.

Choices where AWS documents nothing, written down here:

* Decoding keeps the samples as stored (``as_rgb=False``): YBR pixel data is
  not converted to RGB, so the HTJ2K frame and the checksum describe the values
  in the file. The checksum is ``zlib.crc32`` of the decoded frame as
  little-endian bytes, interleaved samples, for every frame that can be decoded
  (kept-as-is frames too).
* Pixel data that cannot be decoded or encoded is stored as it came (the
  frame's fragments, or its slice of native pixel data) with the source
  transfer syntax and a warning; such frames carry no checksum or min/max and
  an empty ``PixelDataChecksumFromBaseToFullResolution``.
* The JPH 'colr' box says greyscale for one sample per pixel, sRGB for three,
  and sYCC for YBR_FULL / YBR_FULL_422 / YBR_PARTIAL_420, whose samples stay
  YCbCr because they are not colour-converted.
* JPEG 2000 lossless frames are the raw codestream, as DICOM encapsulates it,
  encoded reversibly (5/3 wavelet) without a colour transform, so the samples
  stay those of the file's Photometric Interpretation as with HTJ2K.
* Video is one frame holding the whole bitstream, as DICOM does not split a
  video stream into frames; its checksum is the CRC-32 of that stream (AWS:
  "the original video object").
* Pixel data in a transfer syntax HealthImaging does not support (unknown
  and private ones included) is one frame holding Pixel Data as written, with
  no checksum: AWS stores it as a blob (the file's UNSUPPORTED_TRANSFER_SYNTAX
  warning comes from ``part10``).
* With ``transcode_htj2k`` off (a benchmark setting, not an AWS mode), native
  pixel data is stored as the decoded frame's little-endian bytes under
  Explicit VR Little Endian (bit-packed for BitsAllocated 1) and compressed
  pixel data as it came.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import (
    generate_fragments,
    generate_frames,
    parse_basic_offsets,
    parse_fragments,
)
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MPEGTransferSyntaxes,
)

from emulator.state.imagesets import new_id
from emulator.worker.import_warnings import ImportWarning
from emulator.worker.part10 import (
    attribute_as_written,
    attribute_number,
    attribute_text,
    native_frame_bits,
)
from import_rules.codes import WarningCode
from import_rules.rules import SUPPORTED_TRANSFER_SYNTAXES, stored_frame_count

VIDEO = frozenset(MPEGTransferSyntaxes)
# Lossy already: transcoding would not make them lossless, so AWS keeps them.
KEPT_AS_IS = frozenset({JPEGBaseline8Bit, JPEG2000, HTJ2K}) | VIDEO

# ISO/IEC 15444-1 Annex M enumerated colour spaces used in the 'colr' box.
_SRGB, _GREYSCALE, _SYCC = 16, 17, 18

PutFrame = Callable[[str, bytes, str], None]


@dataclass(frozen=True)
class FrameRecord:
    """One stored frame, as listed in the instance's ImageFrames."""

    frame_id: str
    size: int
    width: int
    height: int
    checksum: int | None = None
    min_value: int | float | None = None
    max_value: int | float | None = None

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"ID": self.frame_id}
        if self.checksum is None:
            entry["PixelDataChecksumFromBaseToFullResolution"] = []
        else:
            entry["PixelDataChecksumFromBaseToFullResolution"] = [
                {"Width": self.width, "Height": self.height, "Checksum": self.checksum}
            ]
        # Not for a video, whose checksum is of the stream, not of pixels.
        if self.min_value is not None:
            entry["MinPixelValue"] = self.min_value
            entry["MaxPixelValue"] = self.max_value
        entry["FrameSizeInBytes"] = self.size
        return entry


@dataclass
class StoredPixelData:
    transfer_syntax_uid: str
    frames: list[FrameRecord] = field(default_factory=list)
    warnings: list[ImportWarning] = field(default_factory=list)


class _KeepAsItCame(Exception):
    """Frames that will be stored as they came; carries the warning to report."""

    def __init__(self, warning: ImportWarning) -> None:
        super().__init__(warning.message)
        self.warning = warning


class _Undecodable(_KeepAsItCame):
    """Decoding failed, so no checksum can be computed either."""


class _Unencodable(_KeepAsItCame):
    """Decoded fine, but lossless encoding failed: checksums are still known."""


def store_pixel_data(
    ds: Dataset,
    source: UID,
    put_frame: PutFrame,
    *,
    transcode: bool,
    lossless_format: str = "HTJ2K",
) -> StoredPixelData:
    """Store every frame of ``ds``, in transfer syntax ``source`` (as the
    import rules read it), through ``put_frame`` and describe them.

    Frames are decoded, encoded and put one at a time so that a long
    multi-frame instance never sits in memory decoded. If a frame fails, the
    instance falls back to its source frames (frames put before that stay
    unreferenced), so an instance never has frames in two stored syntaxes.
    """
    if "PixelData" not in ds:
        return StoredPixelData(source)
    if source in VIDEO:
        pixel_data = BytesIO(ds.PixelData)
        parse_basic_offsets(pixel_data)  # the offset table is no part of the stream
        stream = b"".join(generate_fragments(pixel_data))
        frame_id = new_id()
        put_frame(frame_id, stream, source)
        # AWS: a video's checksum covers the original video object.
        video = FrameRecord(frame_id, len(stream), int(ds.Columns), int(ds.Rows),
                            zlib.crc32(stream))
        return StoredPixelData(source, [video])
    if source not in SUPPORTED_TRANSFER_SYNTAXES:
        return StoredPixelData(source, [_put(put_frame, source, ds.PixelData, None, ds)])

    warnings: list[ImportWarning] = []
    count = _number_of_frames(ds, source)
    fragments = _fragments_short_of(ds, source, count)
    if fragments is not None:
        warnings.append(
            ImportWarning(
                WarningCode.FRAME_NUMBER_MISMATCH,
                f"NumberOfFrames is {count} but the pixel data holds {fragments} "
                f"fragment(s); the fragments are stored as the frames",
            )
        )
        count = fragments
    decodable = True
    if source not in KEPT_AS_IS and (transcode or not source.is_compressed):
        target, encode = (
            LOSSLESS_ENCODERS[lossless_format]
            if transcode
            else (ExplicitVRLittleEndian, _native_bytes)
        )
        try:
            records = [
                _put(put_frame, target, _encoded(encode, pixels, ds, source), pixels, ds)
                for pixels in _decode(ds, source)
            ]
        except _KeepAsItCame as failure:
            warnings.append(failure.warning)
            decodable = isinstance(failure, _Unencodable)
        else:
            return StoredPixelData(target, records, warnings)

    found, frames = _source_frames(ds, source, count, warnings)
    checksums: Iterator[np.ndarray | None] = iter(())
    if decodable and fragments is None and found == count:
        checksums = _decode(ds, source)
    records = []
    for data in frames:
        try:
            pixels = next(checksums, None)
        except _Undecodable as undecodable:
            warnings.append(undecodable.warning)
            checksums, pixels = iter(()), None
        records.append(_put(put_frame, source, data, pixels, ds))
    return StoredPixelData(source, records, warnings)


def _encoded(
    encode: Callable[[np.ndarray, Dataset], bytes], pixels: np.ndarray, ds: Dataset, source: UID
) -> bytes:
    try:
        return encode(pixels, ds)
    except (RuntimeError, ValueError, imagecodecs.Htj2kError, imagecodecs.Jpeg2kError) as error:
        raise _Unencodable(
            ImportWarning(
                WarningCode.TRANSCODING_EXCEPTION,
                f"Lossless encoding failed ({error}); frames stored in {source}",
            )
        ) from None


def _decode(ds: Dataset, source: UID) -> Iterator[np.ndarray]:
    """Decoded frames as contiguous little-endian arrays, samples interleaved."""
    try:
        decoder = get_decoder(source)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise _Undecodable(
            ImportWarning(
                WarningCode.UNSUPPORTED_TRANSFER_SYNTAX,
                f"No decoder for transfer syntax {source}; frames stored as they came",
            )
        )
    try:
        for frame in iter_pixels(ds, as_rgb=False):
            yield np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<"))
    except Exception as error:  # any decoder failure means "keep it as it came"
        raise _Undecodable(
            ImportWarning(
                WarningCode.TRANSCODING_EXCEPTION,
                f"Pixel data could not be decoded ({error}); frames stored as they came",
            )
        ) from error


def _source_frames(
    ds: Dataset, source: UID, count: int, warnings: list[ImportWarning]
) -> tuple[int, Iterator[bytes]]:
    """How many frames the file's bytes give, and each frame's bytes as they
    are in the file, one at a time: a long multi-frame instance is not copied
    whole. Encapsulated frames are told apart once to count them, then again
    as they are stored."""
    data: bytes = ds.PixelData
    if not source.is_encapsulated:
        frame_length = _native_frame_length(ds) or len(data) // count
        return count, (data[i * frame_length : (i + 1) * frame_length] for i in range(count))
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        found = sum(1 for _ in generate_frames(data, number_of_frames=count,
                                               extended_offsets=offsets))
    except (ValueError, struct.error) as error:
        warnings.append(
            ImportWarning(
                WarningCode.FRAMES_EXTRACTION_FAILURE,
                f"The {count} frame(s) could not be told apart ({error}); "
                "the whole pixel data is stored as one frame",
            )
        )
        return 1, iter([b"".join(generate_fragments(data))])
    return found, generate_frames(data, number_of_frames=count, extended_offsets=offsets)


def _fragments_short_of(ds: Dataset, source: UID, declared: int) -> int | None:
    """The number of fragments when it is below NumberOfFrames, else None.

    Every frame needs one fragment at least, so such a file cannot hold the
    frames it declares; AWS imports it with FRAME_NUMBER_MISMATCH (behaviour
    doc §3.2), and its fragments are stored as the frames there are.
    Fragments that cannot even be listed are left to
    FRAMES_EXTRACTION_FAILURE."""
    if not source.is_encapsulated:
        return None
    pixel_data = BytesIO(ds.PixelData)
    try:
        parse_basic_offsets(pixel_data)
        fragments, _ = parse_fragments(pixel_data)
    except (ValueError, struct.error):
        return None
    return fragments if fragments < declared else None


def _native_frame_length(ds: Dataset) -> int | None:
    """Bytes per native frame; None for bit-packed data, whose frames need not
    start on a byte boundary."""
    bits = native_frame_bits(ds)
    return None if bits % 8 else bits // 8


def _number_of_frames(ds: Dataset, source: UID) -> int:
    return stored_frame_count(source, attribute_as_written(ds, "NumberOfFrames"), True)


def _native_bytes(pixels: np.ndarray, ds: Dataset) -> bytes:
    if int(ds.BitsAllocated) == 1:
        return np.packbits(pixels, bitorder="little").tobytes()
    return pixels.tobytes()


def _put(
    put_frame: PutFrame,
    transfer_syntax_uid: str,
    data: bytes,
    pixels: np.ndarray | None,
    ds: Dataset,
) -> FrameRecord:
    frame_id = new_id()
    put_frame(frame_id, data, transfer_syntax_uid)
    width, height = int(ds.Columns), int(ds.Rows)
    if pixels is None:
        return FrameRecord(frame_id, len(data), width, height)
    return FrameRecord(
        frame_id,
        len(data),
        width,
        height,
        zlib.crc32(pixels.data),
        pixels.min().item(),
        pixels.max().item(),
    )


# -- the JPH file format (ISO/IEC 15444-15 Annex D) ---------------------------


def _jph(pixels: np.ndarray, ds: Dataset) -> bytes:
    codestream = bytes(imagecodecs.htj2k_encode(pixels))
    return jph_file(codestream, colourspace=_colourspace(ds))


def _j2k(pixels: np.ndarray, ds: Dataset) -> bytes:
    return bytes(
        imagecodecs.jpeg2k_encode(
            pixels, level=0, codecformat=imagecodecs.JPEG2K.CODEC.J2K, reversible=True, mct=False
        )
    )


# A data store's losslessStorageFormat -> the stored transfer syntax and its encoder.
LOSSLESS_ENCODERS: dict[str, tuple[UID, Callable[[np.ndarray, Dataset], bytes]]] = {
    "HTJ2K": (HTJ2KLosslessRPCL, _jph),
    "JPEG_2000_LOSSLESS": (JPEG2000Lossless, _j2k),
}


def _colourspace(ds: Dataset) -> int:
    photometric = attribute_text(ds, "PhotometricInterpretation")
    if photometric in ("YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420"):
        return _SYCC
    # JPEG 2000 decoders undo YBR_RCT / YBR_ICT, so those frames are RGB.
    if attribute_number(ds, "SamplesPerPixel") == 3:
        return _SRGB
    return _GREYSCALE


def _box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + box_type + payload


def jph_file(codestream: bytes, *, colourspace: int) -> bytes:
    """Wrap a raw HTJ2K codestream in the JPH boxes AWS serves as image/jph.

    The image header is read back from the codestream's SIZ marker so that it
    always agrees with what the encoder wrote (bit depth, signedness).
    """
    width, height, components, bpc = codestream_size(codestream)
    ihdr = struct.pack(">IIHBBBB", height, width, components, bpc, 7, 0, 0)
    colr = struct.pack(">BBBI", 1, 0, 0, colourspace)
    return b"".join(
        (
            _box(b"jP  ", b"\r\n\x87\n"),
            _box(b"ftyp", b"jph " + struct.pack(">I", 0) + b"jph "),
            _box(b"jp2h", _box(b"ihdr", ihdr) + _box(b"colr", colr)),
            _box(b"jp2c", codestream),
        )
    )


def codestream_size(codestream: bytes) -> tuple[int, int, int, int]:
    """(width, height, components, BPC) from the SIZ marker segment that
    follows SOC; BPC is 255 when components differ, as the ihdr box says."""
    if codestream[:4] != b"\xff\x4f\xff\x51":
        raise ValueError("not a JPEG 2000 codestream starting with SOC and SIZ")
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", codestream, 8)
    (components,) = struct.unpack_from(">H", codestream, 40)
    depths = {codestream[42 + 3 * i] for i in range(components)}
    bpc = depths.pop() if len(depths) == 1 else 255
    return xsiz - x0, ysiz - y0, components, bpc
