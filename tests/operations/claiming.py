"""A run's claim on some files, as dicom_ingest takes it: the files listed
into an inventory of its own, then one window of all of them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.discover import SourceFile
from tasks.ledger import Holder, Inventory, RunLedger

_listings = itertools.count()


@dataclass(frozen=True)
class Claimed:
    files: list[SourceFile]
    claimed_by_other_runs: int
    skipped_unchanged: int
    holders: tuple[Holder, ...]


def claim(ledger: RunLedger, files: Sequence[SourceFile], skip_unchanged: bool = True) -> Claimed:
    inventory = Inventory(ledger, f"{ledger.run_id}-{next(_listings)}")
    inventory.fill("/landing", files, skip_unchanged, max_attempts=3)
    window = inventory.claim_window(max(len(files), 1))
    left = inventory.leftover()
    return Claimed(window.files, left.claimed_by_other_runs, left.skipped_unchanged, left.holders)
