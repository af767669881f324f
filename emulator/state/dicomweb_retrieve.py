"""WADO-RS: an instance, its metadata, its frames and its bulk data, and a
series' metadata, built from the image set that holds them.

An instance is looked for in the data store's primary image sets, or only in
``imageSetId`` when the request names one (primary or not), as AWS
documents. Every retrieve counts as an access of the image set for its
storage tier (``storage_tiers``), as GetImageSetMetadata and GetImageFrame
do.

Frames are given as stored or decoded to native (Explicit VR Little Endian)
pixel data; the edge chooses which from the request's Accept header. Stored
HTJ2K frames are JPH files (what GetImageFrame serves); DICOMweb and DICOM
files carry the bare codestream (``image/jphc``), so the JPH boxes are
taken off. Frames are decoded by pydicom, the way the import decoded the
file it read, with the samples as stored (no colour conversion).

Choices where AWS is silent:

* A Part 10 file is rebuilt from the metadata document (every level's
  attributes, file meta included) and the frames; its Transfer Syntax UID is
  the one served, and native pixel data is written interleaved
  (PlanarConfiguration 0), YBR_FULL_422 / YBR_PARTIAL_420 as YBR_FULL since
  decoding gives every sample.
* Metadata leaves Pixel Data out and gives TransferSyntaxUID as stored.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels import iter_pixels
from pydicom.uid import UID, ExplicitVRLittleEndian

from emulator.state.dicom_json_model import binary_values, bulk_data_id, dataset_json
from emulator.state.dicomweb_index import DicomWebIndex, IndexedInstance
from emulator.state.exceptions import (
    BadRequestException,
    NotAcceptableException,
    ResourceNotFoundException,
)

if TYPE_CHECKING:
    from emulator.state.imagesets import ImageSetRepository

# Image Pixel attributes a decoder reads.
_PIXEL_KEYWORDS = (
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
)
_SUBSAMPLED = ("YBR_FULL_422", "YBR_PARTIAL_420")
_JPH_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True)
class Instance:
    """One instance as its image set's current version holds it."""

    image_set_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    attributes: Mapping[str, Any]  # Patient, Study, Series and instance levels
    vrs: Mapping[str, str]
    stored_syntax: str
    frames: tuple[Mapping[str, Any], ...]

    @property
    def instance_number(self) -> tuple[int, float, str]:
        try:
            return 0, float(self.attributes.get("InstanceNumber")), self.sop_uid  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return 1, 0.0, self.sop_uid


class DicomWebRetrieval:
    def __init__(
        self,
        image_sets: ImageSetRepository,
        index: DicomWebIndex,
        check_datastore: Callable[[str], None],
    ) -> None:
        self._image_sets = image_sets
        self._index = index
        self._check_datastore = check_datastore

    # -- locating -------------------------------------------------------------
    def instance(
        self, datastore_id: str, study_uid: str, series_uid: str, sop_uid: str,
        image_set_id: str | None,
    ) -> Instance:
        found = self._located(datastore_id, study_uid, series_uid, image_set_id,
                              lambda i: i.sop_uid == sop_uid)
        if not found:
            raise ResourceNotFoundException(
                f"Instance {sop_uid} of series {series_uid} of study {study_uid} is not in "
                + (f"image set {image_set_id}" if image_set_id else
                   f"a primary image set of data store {datastore_id}")
            )
        return found[0]

    def series(
        self, datastore_id: str, study_uid: str, series_uid: str, image_set_id: str | None
    ) -> list[Instance]:
        found = self._located(datastore_id, study_uid, series_uid, image_set_id, lambda _: True)
        if not found:
            raise ResourceNotFoundException(
                f"Series {series_uid} of study {study_uid} is not in "
                + (f"image set {image_set_id}" if image_set_id else
                   f"a primary image set of data store {datastore_id}")
            )
        return sorted(found, key=lambda i: i.instance_number)

    def _located(
        self, datastore_id: str, study_uid: str, series_uid: str, image_set_id: str | None,
        wanted: Callable[[IndexedInstance], bool],
    ) -> list[Instance]:
        """The wanted instances of the series, read from their sets' current
        documents (each read once), each set touched as accessed."""
        self._check_datastore(datastore_id)
        if image_set_id is not None:
            self._image_sets.get(datastore_id, image_set_id)  # 404 for another store's
        hits: dict[str, list[IndexedInstance]] = {}
        seen: set[str] = set()
        for image_set in self._index.image_sets(datastore_id, image_set_id):
            for indexed in image_set.instances:
                if (indexed.study_uid == study_uid and indexed.series_uid == series_uid
                        and indexed.sop_uid not in seen and wanted(indexed)):
                    seen.add(indexed.sop_uid)
                    hits.setdefault(indexed.image_set_id, []).append(indexed)
        found = []
        for set_id, indexed_instances in hits.items():
            doc = self._image_sets.metadata(set_id, indexed_instances[0].version_id)
            found += [_instance(set_id, doc, i) for i in indexed_instances]
            self._image_sets.touch(set_id)
        return found

    # -- frames ----------------------------------------------------------------
    def stored_frames(self, instance: Instance, numbers: list[int]) -> list[bytes]:
        """Frames as stored, HTJ2K as its bare codestream."""
        return [_codestream(self._frame(instance, n)) for n in numbers]

    def native_frames(self, instance: Instance, numbers: list[int]) -> list[bytes]:
        """Frames decoded to native little-endian pixel data, interleaved."""
        syntax = UID(instance.stored_syntax)
        if not syntax.is_encapsulated:
            return [self._frame(instance, n) for n in numbers]
        ds = _pixel_dataset(instance, len(numbers), syntax)
        ds.PixelData = encapsulate(self.stored_frames(instance, numbers))
        try:
            decoded = list(iter_pixels(ds, as_rgb=False))
        except Exception as error:  # any decoder failure: the frames cannot be given so
            raise NotAcceptableException(
                f"Instance {instance.sop_uid} is stored as {syntax}, which this service "
                f"cannot decode ({error}); ask for transfer-syntax=*"
            ) from error
        bits = _number(instance.attributes.get("BitsAllocated")) or 8
        return [_native_bytes(frame, bits) for frame in decoded]

    def frame_numbers(self, instance: Instance, frame_list: str) -> list[int]:
        """A frame list (``1,3``; the first frame is 1) as numbers: 400 for
        one that is not a positive number or repeats, 404 for one past the
        instance's frames."""
        numbers = []
        for part in frame_list.split(","):
            if not part.isdigit() or int(part) < 1:
                raise BadRequestException(f"Frame number {part!r} is not a number from 1")
            if int(part) in numbers:
                raise BadRequestException(f"Frame {part} is asked for more than once")
            numbers.append(int(part))
        for number in numbers:
            if number > len(instance.frames):
                raise ResourceNotFoundException(
                    f"Instance {instance.sop_uid} has {len(instance.frames)} frame(s); "
                    f"there is no frame {number}")
        return numbers

    def _frame(self, instance: Instance, number: int) -> bytes:
        data, _ = self._image_sets.frame(instance.frames[number - 1]["ID"])
        return data

    # -- Part 10 ---------------------------------------------------------------
    def part10(self, instance: Instance, syntax: str) -> bytes:
        """The instance as a DICOM file in ``syntax``: the stored one, or
        Explicit VR Little Endian."""
        ds = Dataset.from_json(dataset_json(instance.attributes, instance.vrs))
        meta = FileMetaDataset()
        for element in list(ds.group_dataset(0x0002)):
            del ds[element.tag]
            if element.tag != 0x00020000:
                meta.add(element)
        meta.MediaStorageSOPClassUID = UID(
            str(ds.get("SOPClassUID", meta.get("MediaStorageSOPClassUID"))))
        meta.MediaStorageSOPInstanceUID = UID(instance.sop_uid)
        meta.TransferSyntaxUID = UID(syntax)
        ds.file_meta = meta
        numbers = list(range(1, len(instance.frames) + 1))
        if numbers:
            self._put_pixel_data(ds, instance, numbers, UID(syntax))
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    def _put_pixel_data(
        self, ds: Dataset, instance: Instance, numbers: list[int], syntax: UID
    ) -> None:
        if syntax.is_encapsulated:
            ds.PixelData = encapsulate(self.stored_frames(instance, numbers))
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            return
        frames = self.native_frames(instance, numbers)
        bits = _number(instance.attributes.get("BitsAllocated")) or 8
        if bits == 1 and UID(instance.stored_syntax).is_encapsulated:
            data = _packed_bits(instance, frames)
        else:
            data = b"".join(frames)
        ds.PixelData = data + b"\x00" * (len(data) % 2)
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
        if "SamplesPerPixel" in ds and ds.SamplesPerPixel > 1:
            ds.PlanarConfiguration = 0
        if ds.get("PhotometricInterpretation") in _SUBSAMPLED:
            ds.PhotometricInterpretation = "YBR_FULL"

    # -- metadata and bulk data ---------------------------------------------
    def metadata(self, instance: Instance, bulk_uri: Callable[[str], str]) -> dict[str, Any]:
        """The instance's DICOM JSON; binary values over 1 MB as BulkDataURIs
        (``bulk_uri`` is given the value's ID)."""
        attributes = dict(instance.attributes)
        attributes["TransferSyntaxUID"] = instance.stored_syntax
        attributes.pop("FileMetaInformationGroupLength", None)  # of the file as it came
        return dataset_json(attributes, instance.vrs,
                            bulk_uri=lambda path: bulk_uri(bulk_data_id(path)))

    def bulk_data(self, instance: Instance, bulk_id: str) -> bytes:
        for path, value in binary_values(instance.attributes, instance.vrs):
            if bulk_data_id(path) == bulk_id:
                return value
        raise ResourceNotFoundException(
            f"Instance {instance.sop_uid} has no bulk data {bulk_id}")


def _instance(image_set_id: str, doc: Mapping[str, Any], indexed: IndexedInstance) -> Instance:
    study = doc.get("Study") or {}
    series = (study.get("Series") or {})[indexed.series_uid]
    entry = series["Instances"][indexed.sop_uid]
    attributes = {
        **((doc.get("Patient") or {}).get("DICOM") or {}),
        **(study.get("DICOM") or {}),
        **(series.get("DICOM") or {}),
        **(entry.get("DICOM") or {}),
    }
    stored = entry.get("StoredTransferSyntaxUID") or attributes.get("TransferSyntaxUID")
    return Instance(
        image_set_id, indexed.study_uid, indexed.series_uid, indexed.sop_uid, attributes,
        entry.get("DICOMVRs") or {}, str(stored or ExplicitVRLittleEndian),
        tuple(entry.get("ImageFrames") or ()),
    )


def _pixel_dataset(instance: Instance, frames: int, syntax: UID) -> Dataset:
    """What a decoder needs to decode ``frames`` frames of the instance."""
    ds = Dataset.from_json(dataset_json(
        {k: instance.attributes[k] for k in _PIXEL_KEYWORDS if k in instance.attributes}, {}))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.NumberOfFrames = frames
    return ds


def _native_bytes(frame: np.ndarray, bits_allocated: int) -> bytes:
    if bits_allocated == 1:
        return np.packbits(frame.astype(np.uint8), bitorder="little").tobytes()
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()


def _packed_bits(instance: Instance, frames: list[bytes]) -> bytes:
    """Bit-packed frames one after the other: a frame need not end on a byte."""
    pixels = int(instance.attributes.get("Rows") or 0) * int(
        instance.attributes.get("Columns") or 0)
    bits = np.concatenate([
        np.unpackbits(np.frombuffer(f, np.uint8), bitorder="little")[:pixels] for f in frames])
    return np.packbits(bits, bitorder="little").tobytes()


def _codestream(frame: bytes) -> bytes:
    """The codestream of a JPH file (its ``jp2c`` box); other data as it is."""
    if not frame.startswith(_JPH_SIGNATURE):
        return frame
    offset = 0
    while offset + 8 <= len(frame):
        length, kind = struct.unpack_from(">I4s", frame, offset)
        if kind == b"jp2c":
            return frame[offset + 8: offset + length if length else len(frame)]
        if length < 8:
            break
        offset += length
    return frame


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
