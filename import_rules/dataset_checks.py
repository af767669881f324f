"""The rules that look at a whole dataset as pydicom read it, for the local
service and for validation's pydicom path alike, so that both judge it the
same way."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset

from import_rules.rules import MAX_SEQUENCE_DEPTH, too_deep, truncated_element

_UNDEFINED_LENGTH = 0xFFFFFFFF


def check_values_complete(ds: Dataset) -> None:
    """pydicom keeps what there is of a value the end of the file cuts short:
    the first such value refuses the file."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (isinstance(raw, RawDataElement) and raw.length != _UNDEFINED_LENGTH
                and raw.value is not None and len(raw.value) < raw.length):
            raise truncated_element(int(tag), raw.length, len(raw.value))


def check_nesting(ds: Dataset) -> None:
    """Refuse ``ds`` when its sequences nest past MAX_SEQUENCE_DEPTH.

    The walk keeps a stack, so no depth makes it recurse. pydicom reads a
    sequence of defined length when it is first used, and recurses per level
    as it reads: a RecursionError on the way is a nesting far past the limit.
    A sequence whose bytes pydicom cannot read is not counted: it holds no
    items to nest.
    """
    pending = [(ds, 0)]
    while pending:
        dataset, depth = pending.pop()
        for tag in list(dataset.keys()):
            if not _is_sequence(dataset, int(tag)):
                continue
            if depth == MAX_SEQUENCE_DEPTH:
                raise too_deep()
            element = dataset.get_item(tag)
            try:
                # Converted here, not in the dataset: the checks after this
                # one see the element as written.
                if isinstance(element, RawDataElement):
                    element = convert_raw_data_element(element)
                items = element.value
            except RecursionError:
                raise too_deep() from None
            except Exception:  # unreadable bytes: whatever reads them next says so
                continue
            pending.extend((item, depth + 1) for item in items if isinstance(item, Dataset))


def _is_sequence(dataset: Dataset, tag: int) -> bool:
    vr = dataset.get_item(tag).VR
    if vr in (None, "UN"):  # implicit, or unknown to the writer: pydicom takes the dictionary's
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return vr == "SQ"
