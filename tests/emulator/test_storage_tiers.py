"""Storage tiers: image sets carry storageTier and lastAccessedAt, move to
Archive Instant Access after 30 days without an access and come back on one.
The service's clock is moved through ``ServiceConfig.clock``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator.edge.server import LocalService
from tests.emulator.test_image_sets import Seeder, metadata, update, wait_active

FREQUENT = "FREQUENT_ACCESS"
ARCHIVE = "ARCHIVE_INSTANT_ACCESS"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, days: int) -> None:
        self.now += timedelta(days=days)


@pytest.fixture
def seeder(service: LocalService, datastore_id: str) -> Seeder:
    return Seeder(service, datastore_id)


@pytest.fixture
def clock(service: LocalService) -> Clock:
    clock = Clock()
    service.config.clock = clock
    return clock


def tier(mi: Any, ds: str, image_set_id: str) -> tuple[str, datetime]:
    props = mi.get_image_set(datastoreId=ds, imageSetId=image_set_id)
    return props["storageTier"], props["lastAccessedAt"]


def summary(mi: Any, ds: str, image_set_id: str) -> dict[str, Any]:
    found = mi.search_image_sets(datastoreId=ds)["imageSetsMetadataSummaries"]
    return next(s for s in found if s["imageSetId"] == image_set_id)


def test_new_image_sets_are_frequent_access(
    mi: Any, datastore_id: str, seeder: Seeder, clock: Clock
) -> None:
    image_set = seeder.image_set()
    storage_tier, last_accessed = tier(mi, datastore_id, image_set["id"])
    assert storage_tier == FREQUENT
    assert abs((last_accessed - clock.now).total_seconds()) < 1
    found = summary(mi, datastore_id, image_set["id"])
    assert found["storageTier"] == FREQUENT
    assert found["lastAccessedAt"] == last_accessed


def test_thirty_days_without_access_archive_and_reads_alone_do_not_count(
    mi: Any, datastore_id: str, seeder: Seeder, clock: Clock
) -> None:
    image_set = seeder.image_set()
    clock.advance(29)
    mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
    mi.search_image_sets(datastoreId=datastore_id)
    mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set["id"])
    assert tier(mi, datastore_id, image_set["id"])[0] == FREQUENT
    clock.advance(2)
    assert tier(mi, datastore_id, image_set["id"])[0] == ARCHIVE
    assert summary(mi, datastore_id, image_set["id"])["storageTier"] == ARCHIVE


@pytest.mark.parametrize("access", ["metadata", "frame", "update"])
def test_an_access_brings_an_archived_set_back(
    mi: Any, datastore_id: str, seeder: Seeder, clock: Clock, access: str
) -> None:
    image_set = seeder.image_set()
    clock.advance(31)
    assert tier(mi, datastore_id, image_set["id"])[0] == ARCHIVE
    if access == "metadata":
        metadata(mi, datastore_id, image_set["id"])
    elif access == "frame":
        mi.get_image_frame(
            datastoreId=datastore_id,
            imageSetId=image_set["id"],
            imageFrameInformation={"imageFrameId": next(iter(image_set["frames"]))},
        )["imageFrameBlob"].read()
    else:
        update(mi, datastore_id, image_set["id"], "1", {"Patient": {"DICOM": {"PatientID": "X"}}},
               force=True)
    storage_tier, last_accessed = tier(mi, datastore_id, image_set["id"])
    assert storage_tier == FREQUENT
    assert abs((last_accessed - clock.now).total_seconds()) < 1


def test_a_copy_is_frequent_access_and_its_source_stays_archived(
    mi: Any, datastore_id: str, seeder: Seeder, clock: Clock
) -> None:
    source = seeder.image_set()
    clock.advance(31)
    copied = mi.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=source["id"],
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}},
    )
    new_id = copied["destinationImageSetProperties"]["imageSetId"]
    wait_active(mi, datastore_id, new_id)
    assert tier(mi, datastore_id, new_id)[0] == FREQUENT
    assert tier(mi, datastore_id, source["id"])[0] == ARCHIVE


def admin_clock(service: LocalService, body: bytes | None, token: str | None = None) -> Any:
    request = urllib.request.Request(
        f"{service.endpoint}/_emulator/clock", data=body, method="POST" if body else "GET",
        headers={"Authorization": f"Bearer {token or service.admin_token}",
                 "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_admin_route_moves_the_clock(
    service: LocalService, mi: Any, datastore_id: str, seeder: Seeder
) -> None:
    image_set = seeder.image_set()
    before = datetime.fromisoformat(admin_clock(service, None)["now"])
    moved = admin_clock(service, json.dumps({"advanceSeconds": 31 * 86400}).encode())
    assert datetime.fromisoformat(moved["now"]) - before >= timedelta(days=31)
    assert tier(mi, datastore_id, image_set["id"])[0] == ARCHIVE
    with pytest.raises(urllib.error.HTTPError) as refused:
        admin_clock(service, b'{"advanceSeconds": 1}', token="wrong")
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as invalid:
        admin_clock(service, b'{"advanceDays": 1}')
    assert invalid.value.code == 400
