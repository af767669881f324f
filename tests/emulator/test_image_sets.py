"""The image set operations of the local service (data plane), through boto3.

Image sets are put in place through the backend repository, the way the
import worker stores them, so these tests do not depend on the importer; the
operations themselves are only ever called over HTTP.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import imagecodecs
import pydicom
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from emulator.state.imagesets import new_id
from emulator.state.store import Store
from tests.emulator.conftest import (
    BUCKET,
    ROLE,
    make_clients,
    wait_datastore_active,
    wait_for,
    wait_job_done,
)

HTJ2K = "1.2.840.10008.1.2.4.202"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.8.498.1"


def document(
    series_uid: str,
    sop_uids: list[str],
    frame_ids: dict[str, list[str]],
    *,
    patient_id: str = "PID-1",
    patient_name: str = "Doe^Jane",
    study_uid: str = STUDY,
    accession: str = "ACC-1",
    study_date: str = "20240102",
    study_time: str = "101500",
) -> dict[str, Any]:
    """A metadata document as the import writes it (behaviour doc §4)."""
    instances = {
        sop: {
            "DICOM": {
                "SOPClassUID": CT_IMAGE,
                "SOPInstanceUID": sop,
                "InstanceNumber": str(number),
                "Rows": 2,
                "Columns": 2,
                "BitsAllocated": 16,
                "PixelData": None,
            },
            "DICOMVRs": {},
            "StoredTransferSyntaxUID": HTJ2K,
            "ChecksumType": "DECOMPRESSED",
            "ImageFrames": [
                {
                    "ID": frame_id,
                    "PixelDataChecksumFromBaseToFullResolution": [
                        {"Width": 2, "Height": 2, "Checksum": zlib.crc32(frame_id.encode())}
                    ],
                    "MinPixelValue": 0,
                    "MaxPixelValue": 100,
                    "FrameSizeInBytes": 8,
                }
                for frame_id in frame_ids[sop]
            ],
        }
        for number, sop in enumerate(sop_uids, start=1)
    }
    return {
        "SchemaVersion": "1.1",
        "Patient": {
            "DICOM": {
                "PatientID": patient_id,
                "PatientName": patient_name,
                "PatientBirthDate": "19700101",
                "PatientSex": "F",
            }
        },
        "Study": {
            "DICOM": {
                "StudyInstanceUID": study_uid,
                "StudyID": "S1",
                "StudyDate": study_date,
                "StudyTime": study_time,
                "StudyDescription": "CT CHEST",
                "AccessionNumber": accession,
            },
            "Series": {
                series_uid: {
                    "DICOM": {
                        "SeriesInstanceUID": series_uid,
                        "Modality": "CT",
                        "SeriesNumber": "3",
                        "BodyPartExamined": "CHEST",
                    },
                    "Instances": instances,
                }
            },
        },
    }


class Seeder:
    """Puts image sets into the local service as an import would."""

    def __init__(self, service: LocalService, datastore_id: str) -> None:
        self.repo = service.backend.image_sets
        self.datastore_id = datastore_id
        self.count = 0

    def image_set(
        self,
        *,
        instances: int = 2,
        frames: int = 1,
        is_primary: bool = True,
        syntax: str = HTJ2K,
        series_uid: str | None = None,
        **doc_fields: Any,
    ) -> dict[str, Any]:
        """Returns {"id", "series", "sops", "frames": {frame_id: bytes}, "doc"}."""
        self.count += 1
        series_uid = series_uid or f"{STUDY}.{self.count}"
        sops = [f"{series_uid}.{i}" for i in range(1, instances + 1)]
        frame_ids = {sop: [new_id() for _ in range(frames)] for sop in sops}
        stored = {}
        for sop_frames in frame_ids.values():
            for frame_id in sop_frames:
                stored[frame_id] = f"pixels of {frame_id}".encode()
                self.repo.put_frame(frame_id, stored[frame_id], syntax, import_job_id="seed")
        doc = document(series_uid, sops, frame_ids, **doc_fields)
        record = self.repo.create(
            self.datastore_id, doc, is_primary=is_primary, workflow_status="IMPORTED"
        )
        return {
            "id": record["imageSetId"],
            "series": series_uid,
            "sops": sops,
            "frames": stored,
            "doc": doc,
        }


@pytest.fixture
def seed(service: LocalService, datastore_id: str) -> Seeder:
    return Seeder(service, datastore_id)


@pytest.fixture
def unchecked_mi(service: LocalService) -> Any:
    """A client that sends what botocore would refuse to, so the service's
    own validation is what the test sees."""
    return boto3.client(
        "medical-imaging",
        endpoint_url=service.endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(
            inject_host_prefix=False,
            parameter_validation=False,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def metadata(mi: Any, ds: str, image_set_id: str, version: str | None = None) -> dict:
    kwargs = {"versionId": version} if version else {}
    response = mi.get_image_set_metadata(datastoreId=ds, imageSetId=image_set_id, **kwargs)
    return json.loads(gzip.decompress(response["imageSetMetadataBlob"].read()))


def wait_active(mi: Any, ds: str, image_set_id: str) -> dict:
    def active() -> dict | None:
        props = mi.get_image_set(datastoreId=ds, imageSetId=image_set_id)
        return props if props["imageSetState"] == "ACTIVE" else None

    return wait_for(active)


def update(
    mi: Any,
    ds: str,
    image_set_id: str,
    latest: str,
    updatable: dict | None = None,
    removable: dict | None = None,
    **kwargs: Any,
) -> dict:
    dicom = {}
    if updatable is not None:
        dicom["updatableAttributes"] = json.dumps(updatable).encode()
    if removable is not None:
        dicom["removableAttributes"] = json.dumps(removable).encode()
    return mi.update_image_set_metadata(
        datastoreId=ds,
        imageSetId=image_set_id,
        latestVersionId=latest,
        updateImageSetMetadataUpdates={"DICOMUpdates": dicom},
        **kwargs,
    )


def search_ids(mi: Any, ds: str, **criteria: Any) -> list[str]:
    response = mi.search_image_sets(datastoreId=ds, searchCriteria=criteria)
    return [s["imageSetId"] for s in response["imageSetsMetadataSummaries"]]


class TestGetImageSet:
    def test_properties(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert props["versionId"] == "1"
        assert props["imageSetState"] == "ACTIVE"
        assert props["imageSetWorkflowStatus"] == "IMPORTED"
        assert props["isPrimary"] is True
        assert props["imageSetArn"] == (
            "arn:aws:medical-imaging:us-east-1:123456789012:"
            f"datastore/{datastore_id}/imageset/{image_set['id']}"
        )
        assert isinstance(props["createdAt"], datetime)
        assert "deletedAt" not in props

    def test_unknown_image_set(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            mi.get_image_set(datastoreId=datastore_id, imageSetId=new_id())
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_unknown_data_store(self, mi: Any, seed: Seeder) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.get_image_set(datastoreId=new_id(), imageSetId=image_set["id"])
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_image_set_of_another_data_store(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        other = mi.create_datastore(datastoreName="other")["datastoreId"]
        image_set = seed.image_set()
        wait_for(
            lambda: (
                mi.get_datastore(datastoreId=other)["datastoreProperties"]["datastoreStatus"]
                == "ACTIVE"
            )
        )
        with pytest.raises(ClientError) as e:
            mi.get_image_set(datastoreId=other, imageSetId=image_set["id"])
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_unknown_version(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"], versionId="2")
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_malformed_id(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            mi.get_image_set(datastoreId=datastore_id, imageSetId="NOT-AN-ID" + "0" * 23)
        assert e.value.response["Error"]["Code"] == "ValidationException"


class TestGetImageSetMetadata:
    def test_gzip_json_whatever_the_client_accepts(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_set = seed.image_set()
        response = mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert response["contentType"] == "application/json"
        assert response["contentEncoding"] == "gzip"
        doc = json.loads(gzip.decompress(response["imageSetMetadataBlob"].read()))
        assert doc["DatastoreID"] == datastore_id
        assert doc["ImageSetID"] == image_set["id"]
        assert doc["Patient"] == image_set["doc"]["Patient"]
        assert doc["Study"]["Series"] == image_set["doc"]["Study"]["Series"]

    def test_unknown_version(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.get_image_set_metadata(
                datastoreId=datastore_id, imageSetId=image_set["id"], versionId="7"
            )
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestGetImageFrame:
    @pytest.mark.parametrize(
        ("syntax", "content_type"),
        [
            ("1.2.840.10008.1.2.4.202", "image/jph"),
            ("1.2.840.10008.1.2.4.203", "image/jphc"),
            ("1.2.840.10008.1.2.4.50", "image/jpeg"),
            ("1.2.840.10008.1.2.4.91", "image/j2c"),
            ("1.2.840.10008.1.2.1", "application/octet-stream"),
        ],
    )
    def test_bytes_and_content_type_by_stored_syntax(
        self, mi: Any, datastore_id: str, seed: Seeder, syntax: str, content_type: str
    ) -> None:
        image_set = seed.image_set(syntax=syntax, frames=2)
        for frame_id, data in image_set["frames"].items():
            response = mi.get_image_frame(
                datastoreId=datastore_id,
                imageSetId=image_set["id"],
                imageFrameInformation={"imageFrameId": frame_id},
            )
            assert response["contentType"] == content_type
            assert response["imageFrameBlob"].read() == data

    def test_unknown_frame(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.get_image_frame(
                datastoreId=datastore_id,
                imageSetId=image_set["id"],
                imageFrameInformation={"imageFrameId": new_id()},
            )
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_frame_of_another_image_set(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        first, second = seed.image_set(), seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.get_image_frame(
                datastoreId=datastore_id,
                imageSetId=first["id"],
                imageFrameInformation={"imageFrameId": next(iter(second["frames"]))},
            )
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestSearchImageSets:
    @pytest.fixture
    def three(self, seed: Seeder) -> list[dict[str, Any]]:
        return [
            seed.image_set(patient_id="P-A", accession="A-1", study_date="20230105"),
            seed.image_set(
                patient_id="P-B",
                accession="A-2",
                study_date="20240310",
                study_time="0830",
                is_primary=False,
            ),
            seed.image_set(patient_id="P-B", accession="A-3", study_date="20240310"),
        ]

    def test_items(self, mi: Any, datastore_id: str, three: list[dict]) -> None:
        response = mi.search_image_sets(
            datastoreId=datastore_id,
            searchCriteria={
                "filters": [{"values": [{"DICOMPatientId": "P-A"}], "operator": "EQUAL"}]
            },
        )
        [item] = response["imageSetsMetadataSummaries"]
        assert item["imageSetId"] == three[0]["id"]
        assert item["version"] == 1
        assert item["isPrimary"] is True
        assert isinstance(item["updatedAt"], datetime)
        assert item["DICOMTags"] == {
            "DICOMPatientId": "P-A",
            "DICOMPatientName": "Doe^Jane",
            "DICOMPatientBirthDate": "19700101",
            "DICOMPatientSex": "F",
            "DICOMStudyInstanceUID": STUDY,
            "DICOMStudyId": "S1",
            "DICOMStudyDescription": "CT CHEST",
            "DICOMNumberOfStudyRelatedSeries": 1,
            "DICOMNumberOfStudyRelatedInstances": 2,
            "DICOMAccessionNumber": "A-1",
            "DICOMSeriesInstanceUID": three[0]["series"],
            "DICOMSeriesModality": "CT",
            "DICOMSeriesBodyPart": "CHEST",
            "DICOMSeriesNumber": 3,
            "DICOMStudyDate": "20230105",
            "DICOMStudyTime": "101500",
        }

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ({"DICOMPatientId": "P-B"}, [1, 2]),
            ({"DICOMAccessionNumber": "A-3"}, [2]),
            ({"DICOMStudyId": "S1"}, [0, 1, 2]),
            ({"DICOMStudyInstanceUID": STUDY}, [0, 1, 2]),
            ({"isPrimary": False}, [1]),
            ({"DICOMStudyDateAndTime": {"DICOMStudyDate": "20240310"}}, [1, 2]),
            (
                {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20240310", "DICOMStudyTime": "0830"}},
                [1],
            ),
            ({"DICOMPatientId": "nobody"}, []),
        ],
    )
    def test_equal(
        self, mi: Any, datastore_id: str, three: list[dict], value: dict, expected: list[int]
    ) -> None:
        found = search_ids(mi, datastore_id, filters=[{"values": [value], "operator": "EQUAL"}])
        assert sorted(found) == sorted(three[i]["id"] for i in expected)

    def test_equal_series_instance_uid(self, mi: Any, datastore_id: str, three: list) -> None:
        found = search_ids(
            mi,
            datastore_id,
            filters=[
                {"values": [{"DICOMSeriesInstanceUID": three[1]["series"]}], "operator": "EQUAL"}
            ],
        )
        assert found == [three[1]["id"]]

    def test_between_study_date(self, mi: Any, datastore_id: str, three: list) -> None:
        found = search_ids(
            mi,
            datastore_id,
            filters=[
                {
                    "values": [
                        {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20240101"}},
                        {
                            "DICOMStudyDateAndTime": {
                                "DICOMStudyDate": "20240310",
                                "DICOMStudyTime": "090000",
                            }
                        },
                    ],
                    "operator": "BETWEEN",
                }
            ],
        )
        assert found == [three[1]["id"]]

    def test_between_created_at_with_a_second_filter(
        self, mi: Any, datastore_id: str, three: list
    ) -> None:
        now = datetime.now(UTC)
        window = [
            {"createdAt": now - timedelta(minutes=5)},
            {"createdAt": now + timedelta(minutes=5)},
        ]
        found = search_ids(
            mi,
            datastore_id,
            filters=[
                {"values": window, "operator": "BETWEEN"},
                {"values": [{"DICOMPatientId": "P-B"}], "operator": "EQUAL"},
            ],
        )
        assert sorted(found) == sorted([three[1]["id"], three[2]["id"]])
        past = [{"createdAt": now - timedelta(days=2)}, {"createdAt": now - timedelta(days=1)}]
        assert search_ids(mi, datastore_id, filters=[{"values": past, "operator": "BETWEEN"}]) == []

    def test_sorting(self, mi: Any, datastore_id: str, three: list) -> None:
        ids = [s["id"] for s in three]
        created_asc = search_ids(
            mi, datastore_id, sort={"sortField": "createdAt", "sortOrder": "ASC"}
        )
        assert created_asc == ids
        by_study = search_ids(
            mi, datastore_id, sort={"sortField": "DICOMStudyDateAndTime", "sortOrder": "DESC"}
        )
        # 20240310 10:15 > 20240310 08:30 > 20230105 10:15
        assert by_study == [ids[2], ids[1], ids[0]]

    def test_default_order_is_updated_at_descending(
        self, mi: Any, datastore_id: str, three: list
    ) -> None:
        assert search_ids(mi, datastore_id) == [s["id"] for s in reversed(three)]
        update(
            mi, datastore_id, three[0]["id"], "1", {"Study": {"DICOM": {"StudyDescription": "X"}}}
        )
        wait_active(mi, datastore_id, three[0]["id"])
        assert search_ids(mi, datastore_id)[0] == three[0]["id"]

    def test_pagination(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        ids = [seed.image_set()["id"] for _ in range(5)]
        first = mi.search_image_sets(datastoreId=datastore_id, maxResults=2)
        assert len(first["imageSetsMetadataSummaries"]) == 2
        assert first["nextToken"]
        pages = mi.get_paginator("search_image_sets").paginate(
            datastoreId=datastore_id,
            searchCriteria={"sort": {"sortField": "createdAt", "sortOrder": "ASC"}},
            PaginationConfig={"PageSize": 2},
        )
        found = [s["imageSetId"] for page in pages for s in page["imageSetsMetadataSummaries"]]
        assert found == ids

    def test_token_of_another_query(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        for _ in range(3):
            seed.image_set()
        token = mi.search_image_sets(datastoreId=datastore_id, maxResults=1)["nextToken"]
        with pytest.raises(ClientError) as e:
            mi.search_image_sets(
                datastoreId=datastore_id,
                maxResults=1,
                nextToken=token,
                searchCriteria={"sort": {"sortField": "createdAt", "sortOrder": "ASC"}},
            )
        assert e.value.response["Error"]["Code"] == "ValidationException"

    @pytest.mark.parametrize(
        "filters",
        [
            [{"values": [{"DICOMPatientId": "a"}, {"DICOMPatientId": "b"}], "operator": "EQUAL"}],
            [{"values": [{"createdAt": datetime(2024, 1, 1)}], "operator": "BETWEEN"}],
            [
                {
                    "values": [
                        {"createdAt": datetime(2024, 1, 1)},
                        {"updatedAt": datetime(2025, 1, 1)},
                    ],
                    "operator": "BETWEEN",
                }
            ],
            [
                {
                    "values": [
                        {"createdAt": datetime(2025, 1, 1)},
                        {"createdAt": datetime(2024, 1, 1)},
                    ],
                    "operator": "BETWEEN",
                }
            ],
            [{"values": [{"DICOMPatientId": "a"}, {"DICOMPatientId": "b"}], "operator": "BETWEEN"}],
            [
                {
                    "values": [{"DICOMStudyDateAndTime": {"DICOMStudyDate": "2024-01-01"}}],
                    "operator": "EQUAL",
                }
            ],
            [{"values": [{"DICOMPatientId": "a"}], "operator": "LIKE"}],
            [{"values": [{"DICOMPatientId": "a", "DICOMStudyId": "b"}], "operator": "EQUAL"}],
            [{"values": [{"DICOMPatientId": "a"}], "operator": "EQUAL"}] * 3,
        ],
        ids=[
            "equal-two-values",
            "between-one-value",
            "between-two-attributes",
            "between-reversed",
            "between-identifier",
            "bad-study-date",
            "unknown-operator",
            "two-attributes-in-one-value",
            "three-filters",
        ],
    )
    def test_invalid_criteria(self, unchecked_mi: Any, datastore_id: str, filters: list) -> None:
        with pytest.raises(ClientError) as e:
            unchecked_mi.search_image_sets(
                datastoreId=datastore_id, searchCriteria={"filters": filters}
            )
        assert e.value.response["Error"]["Code"] == "ValidationException"

    def test_max_results_over_50(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            mi.search_image_sets(datastoreId=datastore_id, maxResults=51)
        assert e.value.response["Error"]["Code"] == "ValidationException"

    def test_unknown_data_store(self, mi: Any) -> None:
        with pytest.raises(ClientError) as e:
            mi.search_image_sets(datastoreId=new_id())
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestUpdateImageSetMetadata:
    def test_update_makes_a_new_version_and_keeps_the_old(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_set = seed.image_set()
        response = update(
            mi,
            datastore_id,
            image_set["id"],
            "1",
            {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "Roe^Rick"}}},
        )
        assert response["latestVersionId"] == "2"
        assert response["imageSetState"] == "LOCKED"
        assert response["imageSetWorkflowStatus"] == "UPDATING"
        props = wait_active(mi, datastore_id, image_set["id"])
        assert (props["versionId"], props["imageSetWorkflowStatus"]) == ("2", "UPDATED")
        assert metadata(mi, datastore_id, image_set["id"])["Patient"]["DICOM"]["PatientName"] == (
            "Roe^Rick"
        )
        old = metadata(mi, datastore_id, image_set["id"], version="1")
        assert old["Patient"]["DICOM"]["PatientName"] == "Doe^Jane"
        summary = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"][0]
        assert summary["version"] == 2
        assert summary["DICOMTags"]["DICOMPatientName"] == "Roe^Rick"

    def test_remove_attribute_and_instance(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set(instances=3)
        series, sops = image_set["series"], image_set["sops"]
        update(
            mi,
            datastore_id,
            image_set["id"],
            "1",
            removable={
                "Study": {
                    "DICOM": {"StudyDescription": "CT CHEST"},
                    "Series": {series: {"Instances": {sops[0]: {}}}},
                }
            },
        )
        wait_active(mi, datastore_id, image_set["id"])
        doc = metadata(mi, datastore_id, image_set["id"])
        assert "StudyDescription" not in doc["Study"]["DICOM"]
        assert sorted(doc["Study"]["Series"][series]["Instances"]) == sops[1:]

    def test_revert(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        update(
            mi,
            datastore_id,
            image_set["id"],
            "1",
            {"Study": {"DICOM": {"StudyID": "S9"}}},
            force=True,
        )
        wait_active(mi, datastore_id, image_set["id"])
        response = mi.update_image_set_metadata(
            datastoreId=datastore_id,
            imageSetId=image_set["id"],
            latestVersionId="2",
            updateImageSetMetadataUpdates={"revertToVersionId": "1"},
        )
        assert response["latestVersionId"] == "3"
        wait_active(mi, datastore_id, image_set["id"])
        assert metadata(mi, datastore_id, image_set["id"])["Study"]["DICOM"]["StudyID"] == "S1"
        assert metadata(mi, datastore_id, image_set["id"], "2")["Study"]["DICOM"]["StudyID"] == "S9"

    def test_forced_update_is_recorded(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        update(
            mi,
            datastore_id,
            image_set["id"],
            "1",
            {"Study": {"DICOM": {"StudyID": "S2"}}},
            force=True,
        )
        props = wait_active(mi, datastore_id, image_set["id"])
        assert props["overrides"] == {"forced": True}
        first = mi.get_image_set(
            datastoreId=datastore_id, imageSetId=image_set["id"], versionId="1"
        )
        assert "overrides" not in first

    def test_uid_change_on_non_primary_set_with_force(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_set = seed.image_set(is_primary=False)
        new_series = "1.2.826.0.1.3680043.8.498.77"
        change = {
            "Study": {"Series": {image_set["series"]: {"DICOM": {"SeriesInstanceUID": new_series}}}}
        }
        with pytest.raises(ClientError) as e:
            update(mi, datastore_id, image_set["id"], "1", change)
        assert e.value.response["Error"]["Code"] == "ValidationException"
        update(mi, datastore_id, image_set["id"], "1", change, force=True)
        wait_active(mi, datastore_id, image_set["id"])
        assert list(metadata(mi, datastore_id, image_set["id"])["Study"]["Series"]) == [new_series]
        found = search_ids(
            mi,
            datastore_id,
            filters=[{"values": [{"DICOMSeriesInstanceUID": new_series}], "operator": "EQUAL"}],
        )
        assert found == [image_set["id"]]

    def test_include_study_image_sets(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        first, second = seed.image_set(), seed.image_set()
        other_study = seed.image_set(study_uid="1.2.826.0.1.3680043.8.498.2")
        update(
            mi,
            datastore_id,
            first["id"],
            "1",
            {"Study": {"DICOM": {"StudyDescription": "RENAMED"}}},
            includeStudyImageSets=True,
        )
        for image_set, version, description in (
            (first, "2", "RENAMED"),
            (second, "2", "RENAMED"),
            (other_study, "1", "CT CHEST"),
        ):
            assert wait_active(mi, datastore_id, image_set["id"])["versionId"] == version
            doc = metadata(mi, datastore_id, image_set["id"])
            assert doc["Study"]["DICOM"]["StudyDescription"] == description

    @pytest.mark.parametrize(
        ("updatable", "force"),
        [
            ({"DatastoreID": new_id()}, True),
            ({"SchemaVersion": "2.0"}, True),
            ({"Patient": {"DICOM": {"PixelData": "AAAA"}}}, True),
            ({"Study": {"DICOM": {"StudyInstanceUID": "1.2.3"}}}, False),
            ({"Study": {"DICOM": {"StudyInstanceUID": "1.2.3"}}}, True),
            ({"Study": {"DICOM": {"StudyID": "S5"}}}, False),
            ({"Patient": {"DICOM": {"00091001": "private"}}}, False),
            ({"Patient": {"DICOM": {"NotADicomKeyword": "x"}}}, False),
            ({"Patient": {"DICOM": {"OtherPatientIDs": ["a", "b"]}}}, False),
            ({"Study": {"DICOM": {"PatientName": "Moved^Level"}}}, True),
            ({"Study": {"Series": {"1.2.3.4": {"DICOM": {"Modality": "MR"}}}}}, True),
            ({"Study": {"Series": {"SERIES": {"Instances": {"x": {"ImageFrames": []}}}}}}, True),
            ({"Hospital": {}}, True),
        ],
        ids=[
            "generated-top-level",
            "schema-version",
            "pixel-data",
            "uid-without-force",
            "uid-on-primary-with-force",
            "study-id-without-force",
            "private-tag-without-force",
            "unknown-keyword-without-force",
            "multi-valued-without-force",
            "wrong-level",
            "unknown-series",
            "image-frames",
            "not-the-document-shape",
        ],
    )
    def test_refused_changes(
        self, mi: Any, datastore_id: str, seed: Seeder, updatable: dict, force: bool
    ) -> None:
        image_set = seed.image_set()
        payload = json.loads(json.dumps(updatable).replace("SERIES", image_set["series"]))
        with pytest.raises(ClientError) as e:
            update(mi, datastore_id, image_set["id"], "1", payload, force=force)
        assert e.value.response["Error"]["Code"] == "ValidationException"
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert (props["versionId"], props["imageSetState"]) == ("1", "ACTIVE")

    def test_not_the_latest_version(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        update(
            mi, datastore_id, image_set["id"], "1", {"Study": {"DICOM": {"StudyDescription": "A"}}}
        )
        wait_active(mi, datastore_id, image_set["id"])
        with pytest.raises(ClientError) as e:
            update(
                mi,
                datastore_id,
                image_set["id"],
                "1",
                {"Study": {"DICOM": {"StudyDescription": "B"}}},
            )
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
        assert e.value.response["Error"]["Message"] == (
            "Requested version(s) of ImageSet(s) is not the latest."
        )

    def test_payload_over_10_kb(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        big = {"Study": {"DICOM": {"StudyDescription": "x" * 11_000}}}
        with pytest.raises(ClientError) as e:
            update(mi, datastore_id, image_set["id"], "1", big)
        assert e.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402

    def test_updates_and_revert_together(
        self, unchecked_mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            unchecked_mi.update_image_set_metadata(
                datastoreId=datastore_id,
                imageSetId=image_set["id"],
                latestVersionId="1",
                updateImageSetMetadataUpdates={
                    "revertToVersionId": "1",
                    "DICOMUpdates": {"updatableAttributes": b"{}"},
                },
            )
        assert e.value.response["Error"]["Code"] == "ValidationException"

    def test_revert_to_unknown_version(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.update_image_set_metadata(
                datastoreId=datastore_id,
                imageSetId=image_set["id"],
                latestVersionId="1",
                updateImageSetMetadataUpdates={"revertToVersionId": "5"},
            )
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_invalid_json(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.update_image_set_metadata(
                datastoreId=datastore_id,
                imageSetId=image_set["id"],
                latestVersionId="1",
                updateImageSetMetadataUpdates={
                    "DICOMUpdates": {"updatableAttributes": b"{not json"}
                },
            )
        assert e.value.response["Error"]["Code"] == "ValidationException"

    def test_unknown_image_set(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            update(mi, datastore_id, new_id(), "1", {"Study": {"DICOM": {"StudyDescription": "A"}}})
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestListImageSetVersions:
    def test_history_newest_first_and_readable(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_set = seed.image_set()
        for version, description in (("1", "first"), ("2", "second")):
            update(
                mi,
                datastore_id,
                image_set["id"],
                version,
                {"Study": {"DICOM": {"StudyDescription": description}}},
            )
            wait_active(mi, datastore_id, image_set["id"])
        pages = mi.get_paginator("list_image_set_versions").paginate(
            datastoreId=datastore_id, imageSetId=image_set["id"], PaginationConfig={"PageSize": 1}
        )
        versions = [v for page in pages for v in page["imageSetPropertiesList"]]
        assert [v["versionId"] for v in versions] == ["3", "2", "1"]
        assert [v["ImageSetWorkflowStatus"] for v in versions] == ["UPDATED", "UPDATED", "IMPORTED"]
        assert {v["imageSetState"] for v in versions} == {"ACTIVE"}
        descriptions = [
            metadata(mi, datastore_id, image_set["id"], v["versionId"])["Study"]["DICOM"][
                "StudyDescription"
            ]
            for v in versions
        ]
        assert descriptions == ["second", "first", "CT CHEST"]

    def test_unknown_image_set(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=new_id())
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def copy(mi: Any, ds: str, source: dict, version: str = "1", **kwargs: Any) -> dict:
    destination = kwargs.pop("destination", None)
    copiable = kwargs.pop("copiable", None)
    source_info: dict[str, Any] = {"latestVersionId": version}
    if copiable is not None:
        source_info["DICOMCopies"] = {"copiableAttributes": json.dumps(copiable)}
    info: dict[str, Any] = {"sourceImageSet": source_info}
    if destination is not None:
        info["destinationImageSet"] = destination
    return mi.copy_image_set(
        datastoreId=ds, sourceImageSetId=source["id"], copyImageSetInformation=info, **kwargs
    )


class TestCopyImageSet:
    def test_copy_into_a_new_image_set(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source = seed.image_set()
        response = copy(mi, datastore_id, source)
        src, dst = response["sourceImageSetProperties"], response["destinationImageSetProperties"]
        assert (src["imageSetState"], src["imageSetWorkflowStatus"]) == (
            "LOCKED",
            "COPYING_WITH_READ_ONLY_ACCESS",
        )
        assert (dst["imageSetState"], dst["imageSetWorkflowStatus"]) == ("LOCKED", "COPYING")
        assert (src["latestVersionId"], dst["latestVersionId"]) == ("1", "1")
        assert dst["imageSetArn"].endswith(f"/imageset/{dst['imageSetId']}")
        for image_set_id in (source["id"], dst["imageSetId"]):
            props = wait_active(mi, datastore_id, image_set_id)
            assert props["imageSetWorkflowStatus"] == "COPIED"
        assert (
            mi.get_image_set(datastoreId=datastore_id, imageSetId=dst["imageSetId"])["isPrimary"]
            is False
        )
        doc = metadata(mi, datastore_id, dst["imageSetId"])
        assert doc["ImageSetID"] == dst["imageSetId"]
        assert doc["Study"]["Series"] == source["doc"]["Study"]["Series"]
        frame_id, data = next(iter(source["frames"].items()))
        frame = mi.get_image_frame(
            datastoreId=datastore_id,
            imageSetId=dst["imageSetId"],
            imageFrameInformation={"imageFrameId": frame_id},
        )
        assert frame["imageFrameBlob"].read() == data

    def test_promote_to_primary(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source = seed.image_set(is_primary=False)
        dst = copy(mi, datastore_id, source, promoteToPrimary=True)["destinationImageSetProperties"]
        assert wait_active(mi, datastore_id, dst["imageSetId"])["isPrimary"] is True

    def test_promotion_never_makes_a_second_primary_set_of_a_series(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        primary = seed.image_set(patient_id="P-1")
        conflicting = seed.image_set(series_uid=primary["series"], patient_id="P-2",
                                     is_primary=False)
        with pytest.raises(ClientError) as e:
            copy(mi, datastore_id, conflicting, promoteToPrimary=True)
        assert e.value.response["Error"]["Code"] == "ConflictException"
        assert primary["id"] in e.value.response["Error"]["Message"]
        other = seed.image_set(is_primary=False)
        with pytest.raises(ClientError) as e:
            copy(mi, datastore_id, conflicting, promoteToPrimary=True,
                 destination={"imageSetId": other["id"], "latestVersionId": "1"})
        assert e.value.response["Error"]["Code"] == "ConflictException"

        mi.delete_image_set(datastoreId=datastore_id, imageSetId=primary["id"])
        wait_for(lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=primary["id"])[
            "imageSetState"] == "DELETED")
        promoted = copy(mi, datastore_id, conflicting, promoteToPrimary=True)
        new_id_ = promoted["destinationImageSetProperties"]["imageSetId"]
        assert wait_active(mi, datastore_id, new_id_)["isPrimary"] is True

    def test_copy_a_subset(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source = seed.image_set(instances=3)
        wanted = source["sops"][1]
        dst = copy(
            mi,
            datastore_id,
            source,
            copiable={
                "SchemaVersion": "1.1",
                "Study": {"Series": {source["series"]: {"Instances": {wanted: {}}}}},
            },
        )["destinationImageSetProperties"]
        wait_active(mi, datastore_id, dst["imageSetId"])
        doc = metadata(mi, datastore_id, dst["imageSetId"])
        assert list(doc["Study"]["Series"][source["series"]]["Instances"]) == [wanted]
        assert doc["Patient"] == source["doc"]["Patient"]

    def test_merge_into_destination(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source, destination = seed.image_set(), seed.image_set()
        response = copy(
            mi,
            datastore_id,
            source,
            destination={"imageSetId": destination["id"], "latestVersionId": "1"},
        )
        assert response["destinationImageSetProperties"]["latestVersionId"] == "2"
        wait_active(mi, datastore_id, destination["id"])
        wait_active(mi, datastore_id, source["id"])
        doc = metadata(mi, datastore_id, destination["id"])
        assert set(doc["Study"]["Series"]) == {source["series"], destination["series"]}
        assert len(metadata(mi, datastore_id, destination["id"], "1")["Study"]["Series"]) == 1
        summary = mi.search_image_sets(
            datastoreId=datastore_id,
            searchCriteria={
                "filters": [
                    {"values": [{"DICOMSeriesInstanceUID": source["series"]}], "operator": "EQUAL"}
                ]
            },
        )["imageSetsMetadataSummaries"]
        assert {s["imageSetId"] for s in summary} == {source["id"], destination["id"]}

    def test_duplicate_sop_instances(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source = seed.image_set()
        destination = seed.image_set(series_uid=source["series"], is_primary=False)
        with pytest.raises(ClientError) as e:
            copy(
                mi,
                datastore_id,
                source,
                destination={"imageSetId": destination["id"], "latestVersionId": "1"},
                force=True,
            )
        assert e.value.response["Error"]["Code"] == "ConflictException"

    def test_mismatched_patient_needs_force(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source = seed.image_set(patient_id="P-1")
        destination = seed.image_set(patient_id="P-2")
        target = {"imageSetId": destination["id"], "latestVersionId": "1"}
        with pytest.raises(ClientError) as e:
            copy(mi, datastore_id, source, destination=target)
        assert e.value.response["Error"]["Code"] == "ValidationException"
        copy(mi, datastore_id, source, destination=target, force=True)
        props = wait_active(mi, datastore_id, destination["id"])
        assert props["overrides"] == {"forced": True}
        assert metadata(mi, datastore_id, destination["id"])["Patient"]["DICOM"]["PatientID"] == (
            "P-2"
        )

    def test_stale_versions(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source, destination = seed.image_set(), seed.image_set()
        with pytest.raises(ClientError) as e:
            copy(mi, datastore_id, source, version="2")
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
        with pytest.raises(ClientError) as e:
            copy(
                mi,
                datastore_id,
                source,
                destination={"imageSetId": destination["id"], "latestVersionId": "3"},
            )
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    @pytest.mark.parametrize(
        "copiable",
        [
            {"Study": {"Series": {"1.2.3.999": {}}}},
            {"Study": {"Series": {"SERIES": {"Instances": {"1.2.3.999": {}}}}}},
            {"Study": {}},
        ],
        ids=["unknown-series", "unknown-instance", "no-series"],
    )
    def test_invalid_copiable_attributes(
        self, mi: Any, datastore_id: str, seed: Seeder, copiable: dict
    ) -> None:
        source = seed.image_set()
        copiable = json.loads(json.dumps(copiable).replace("SERIES", source["series"]))
        with pytest.raises(ClientError) as e:
            copy(mi, datastore_id, source, copiable=copiable)
        assert e.value.response["Error"]["Code"] == "ValidationException"

    def test_into_itself(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        source = seed.image_set()
        with pytest.raises(ClientError) as e:
            copy(
                mi,
                datastore_id,
                source,
                destination={"imageSetId": source["id"], "latestVersionId": "1"},
            )
        assert e.value.response["Error"]["Code"] == "ValidationException"

    def test_frame_quota(
        self, service: LocalService, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        source = seed.image_set(instances=2, frames=2)
        service.config.max_copy_frames = 3
        with pytest.raises(ClientError) as e:
            copy(mi, datastore_id, source)
        assert e.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        one_instance: dict[str, Any] = {
            "Study": {"Series": {source["series"]: {"Instances": {source["sops"][0]: {}}}}}
        }
        assert copy(mi, datastore_id, source, copiable=one_instance)[
            "destinationImageSetProperties"
        ]

    def test_unknown_source(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            copy(mi, datastore_id, {"id": new_id()})
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestDeleteImageSet:
    def test_delete(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set, kept = seed.image_set(), seed.image_set()
        response = mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert (response["imageSetState"], response["imageSetWorkflowStatus"]) == (
            "LOCKED",
            "DELETING",
        )

        def deleted() -> dict | None:
            props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
            return props if props["imageSetState"] == "DELETED" else None

        props = wait_for(deleted)
        assert props["imageSetWorkflowStatus"] == "DELETED"
        assert isinstance(props["deletedAt"], datetime)
        assert search_ids(mi, datastore_id) == [kept["id"]]
        [version] = mi.list_image_set_versions(
            datastoreId=datastore_id, imageSetId=image_set["id"]
        )["imageSetPropertiesList"]
        assert version["imageSetState"] == "DELETED"
        with pytest.raises(ClientError) as e:
            metadata(mi, datastore_id, image_set["id"])
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
        with pytest.raises(ClientError) as e:
            mi.get_image_frame(
                datastoreId=datastore_id,
                imageSetId=image_set["id"],
                imageFrameInformation={"imageFrameId": next(iter(image_set["frames"]))},
            )
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
        with pytest.raises(ClientError) as e:
            mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert e.value.response["Error"]["Code"] == "ConflictException"
        with pytest.raises(ClientError) as e:
            update(mi, datastore_id, image_set["id"], "1", {"Study": {"DICOM": {"StudyID": "x"}}})
        assert e.value.response["Error"]["Code"] == "ConflictException"

    def test_unknown_image_set(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            mi.delete_image_set(datastoreId=datastore_id, imageSetId=new_id())
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"

    def test_data_store_can_be_deleted_once_its_sets_are(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_set = seed.image_set()
        with pytest.raises(ClientError) as e:
            mi.delete_datastore(datastoreId=datastore_id)
        assert e.value.response["Error"]["Code"] == "ConflictException"
        mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        wait_for(
            lambda: (
                mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])[
                    "imageSetState"
                ]
                == "DELETED"
            )
        )
        assert mi.delete_datastore(datastoreId=datastore_id)["datastoreStatus"] == "DELETING"


class TestLockedImageSets:
    """While a write runs, every other write on the sets it holds is a
    ConflictException; reads keep working."""

    @pytest.fixture(autouse=True)
    def slow_writes(self, service: LocalService) -> None:
        service.config.write_seconds = 1.5

    def test_writes_on_a_set_being_updated(self, mi: Any, datastore_id: str, seed: Seeder) -> None:
        image_set = seed.image_set()
        update(
            mi, datastore_id, image_set["id"], "1", {"Study": {"DICOM": {"StudyDescription": "A"}}}
        )
        attempts = [
            lambda: update(
                mi,
                datastore_id,
                image_set["id"],
                "2",
                {"Study": {"DICOM": {"StudyDescription": "B"}}},
            ),
            lambda: mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set["id"]),
            lambda: copy(mi, datastore_id, image_set, version="2"),
        ]
        for attempt in attempts:
            with pytest.raises(ClientError) as e:
                attempt()
            assert e.value.response["Error"]["Code"] == "ConflictException"
        assert (
            metadata(mi, datastore_id, image_set["id"])["Study"]["DICOM"]["StudyDescription"] == "A"
        )
        assert wait_active(mi, datastore_id, image_set["id"])["versionId"] == "2"

    def test_copy_locks_source_and_destination(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        source, destination, bystander = seed.image_set(), seed.image_set(), seed.image_set()
        copy(
            mi,
            datastore_id,
            source,
            destination={"imageSetId": destination["id"], "latestVersionId": "1"},
        )
        with pytest.raises(ClientError) as e:
            copy(
                mi,
                datastore_id,
                bystander,
                destination={"imageSetId": destination["id"], "latestVersionId": "2"},
            )
        assert e.value.response["Error"]["Code"] == "ConflictException"
        with pytest.raises(ClientError) as e:
            mi.delete_image_set(datastoreId=datastore_id, imageSetId=source["id"])
        assert e.value.response["Error"]["Code"] == "ConflictException"
        frame_id, data = next(iter(source["frames"].items()))
        frame = mi.get_image_frame(
            datastoreId=datastore_id,
            imageSetId=source["id"],
            imageFrameInformation={"imageFrameId": frame_id},
        )
        assert frame["imageFrameBlob"].read() == data
        wait_active(mi, datastore_id, destination["id"])

    def test_concurrent_write_quota(
        self, service: LocalService, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        first, second = seed.image_set(), seed.image_set()
        service.config.max_concurrent_writes = 1
        update(mi, datastore_id, first["id"], "1", {"Study": {"DICOM": {"StudyDescription": "A"}}})
        with pytest.raises(ClientError) as e:
            update(
                mi, datastore_id, second["id"], "1", {"Study": {"DICOM": {"StudyDescription": "B"}}}
            )
        assert e.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        wait_active(mi, datastore_id, first["id"])


NEW_DESCRIPTION = {"Study": {"DICOM": {"StudyDescription": "new"}}}


class TestWritesEndWhenDue:
    """A write's sets are ACTIVE once its time has passed, however many
    writes run at once, and a write a restart cut off ends on time too."""

    WRITE_SECONDS = 1.0

    @pytest.fixture(autouse=True)
    def slow_writes(self, service: LocalService) -> None:
        service.config.write_seconds = self.WRITE_SECONDS

    def test_six_writes_at_once_all_end_after_one_write_time(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_sets = [seed.image_set() for _ in range(6)]
        for image_set in image_sets:
            update(mi, datastore_id, image_set["id"], "1", NEW_DESCRIPTION)
        time.sleep(self.WRITE_SECONDS + 0.3)
        states = [
            mi.get_image_set(datastoreId=datastore_id, imageSetId=s["id"])["imageSetState"]
            for s in image_sets
        ]
        assert states == ["ACTIVE"] * 6

    def test_locked_until_due_then_active_with_the_new_version(
        self, mi: Any, datastore_id: str, seed: Seeder
    ) -> None:
        image_set = seed.image_set()
        started = time.monotonic()
        update(mi, datastore_id, image_set["id"], "1", NEW_DESCRIPTION)
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert (props["imageSetState"], props["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING")
        found = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
        assert [s["version"] for s in found if s["imageSetId"] == image_set["id"]] == [2]
        with pytest.raises(ClientError) as e:
            mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert e.value.response["Error"]["Code"] == "ConflictException"
        assert time.monotonic() - started < self.WRITE_SECONDS, "too slow to see the lock"
        time.sleep(max(0.0, started + self.WRITE_SECONDS + 0.1 - time.monotonic()))
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set["id"])
        assert (props["imageSetState"], props["imageSetWorkflowStatus"], props["versionId"]) == (
            "ACTIVE",
            "UPDATED",
            "2",
        )
        versions = mi.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set["id"])
        listed = versions["imageSetPropertiesList"]
        assert [(v["versionId"], v["imageSetState"]) for v in listed] == [
            ("2", "ACTIVE"),
            ("1", "ACTIVE"),
        ]
        document = metadata(mi, datastore_id, image_set["id"])
        assert document["Study"]["DICOM"]["StudyDescription"] == "new"


def _locked_by_an_update(data_dir: Path, config: ServiceConfig) -> tuple[str, str]:
    """(data store, image set) left LOCKED by an update when the service stops."""
    with LocalService(data_dir=data_dir, config=config) as svc:
        mi, _ = make_clients(svc)
        datastore_id = mi.create_datastore()["datastoreId"]
        wait_datastore_active(mi, datastore_id)
        image_set = Seeder(svc, datastore_id).image_set()
        update(mi, datastore_id, image_set["id"], "1", NEW_DESCRIPTION)
    return datastore_id, image_set["id"]


def test_a_write_cut_off_by_a_restart_ends_when_due(tmp_path: Path) -> None:
    write_seconds = 3.0
    config = ServiceConfig(datastore_transition_seconds=0, write_seconds=write_seconds)
    started = time.monotonic()
    datastore_id, image_set_id = _locked_by_an_update(tmp_path, config)
    # The update was asked for between these two moments: it is due by then
    # plus its write time (on a busy machine, well after started plus it).
    updated = time.monotonic()
    with LocalService(data_dir=tmp_path, config=config) as svc:
        mi, _ = make_clients(svc)
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        assert time.monotonic() - started < write_seconds, "too slow to see the lock"
        assert (props["imageSetState"], props["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING")
        time.sleep(max(0.0, updated + write_seconds + 0.1 - time.monotonic()))
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        assert (props["imageSetState"], props["imageSetWorkflowStatus"], props["versionId"]) == (
            "ACTIVE",
            "UPDATED",
            "2",
        )


def test_a_locked_set_stored_without_a_due_time_ends_at_once(tmp_path: Path) -> None:
    """A data directory from before writes kept their due time."""
    config = ServiceConfig(datastore_transition_seconds=0, write_seconds=600)
    datastore_id, image_set_id = _locked_by_an_update(tmp_path, config)
    store = Store(tmp_path)
    record = dict(store.load("imageset"))[image_set_id]
    del record["writeDueAt"]
    store.put("imageset", image_set_id, record)
    store.close()
    with LocalService(data_dir=tmp_path, config=config) as svc:
        mi, _ = make_clients(svc)
        found = mi.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
        assert [s["version"] for s in found] == [2]
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        assert (props["imageSetState"], props["imageSetWorkflowStatus"]) == ("ACTIVE", "UPDATED")


def test_writes_need_an_active_data_store(service: LocalService, mi: Any) -> None:
    service.config.datastore_transition_seconds = 1.0
    creating = mi.create_datastore(datastoreName="creating")["datastoreId"]
    image_set = Seeder(service, creating).image_set()
    assert mi.get_image_set(datastoreId=creating, imageSetId=image_set["id"])["versionId"] == "1"
    with pytest.raises(ClientError) as e:
        mi.delete_image_set(datastoreId=creating, imageSetId=image_set["id"])
    assert e.value.response["Error"]["Code"] == "ConflictException"
    wait_datastore_active(mi, creating)


class TestImportedImageSets:
    """The operations on what a real import job stored, from pydicom's own
    test files (no download)."""

    def test_search_get_update_copy_delete(self, mi: Any, s3: Any, datastore_id: str) -> None:
        test_files = Path(pydicom.__file__).parent / "data" / "test_files"
        for name in ("CT_small.dcm", "MR_small.dcm"):
            s3.upload_file(str(test_files / name), BUCKET, f"real/{name}")
        ct = pydicom.dcmread(test_files / "CT_small.dcm")
        job = mi.start_dicom_import_job(
            datastoreId=datastore_id,
            dataAccessRoleArn=ROLE,
            clientToken="real-data",
            inputS3Uri=f"s3://{BUCKET}/real/",
            outputS3Uri=f"s3://{BUCKET}/out/",
        )
        assert wait_job_done(mi, datastore_id, job["jobId"])["jobStatus"] == "COMPLETED"

        [found] = mi.search_image_sets(
            datastoreId=datastore_id,
            searchCriteria={
                "filters": [{"values": [{"DICOMPatientId": ct.PatientID}], "operator": "EQUAL"}]
            },
        )["imageSetsMetadataSummaries"]
        assert found["DICOMTags"]["DICOMSeriesInstanceUID"] == ct.SeriesInstanceUID
        assert found["DICOMTags"]["DICOMStudyDate"] == ct.StudyDate
        image_set_id = found["imageSetId"]
        props = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        assert (props["imageSetState"], props["imageSetWorkflowStatus"]) == ("ACTIVE", "IMPORTED")
        assert props["isPrimary"] is True

        doc = metadata(mi, datastore_id, image_set_id)
        instance = doc["Study"]["Series"][ct.SeriesInstanceUID]["Instances"][ct.SOPInstanceUID]
        [frame_info] = instance["ImageFrames"]
        frame = mi.get_image_frame(
            datastoreId=datastore_id,
            imageSetId=image_set_id,
            imageFrameInformation={"imageFrameId": frame_info["ID"]},
        )
        assert frame["contentType"] == "image/jph"
        pixels = imagecodecs.jpeg2k_decode(frame["imageFrameBlob"].read())
        full_resolution = frame_info["PixelDataChecksumFromBaseToFullResolution"][-1]
        assert zlib.crc32(pixels.tobytes()) == full_resolution["Checksum"]
        assert (pixels == ct.pixel_array).all()

        update(
            mi,
            datastore_id,
            image_set_id,
            props["versionId"],
            {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "Anonymous"}}},
        )
        updated = wait_active(mi, datastore_id, image_set_id)
        assert updated["imageSetWorkflowStatus"] == "UPDATED"
        assert metadata(mi, datastore_id, image_set_id)["Patient"]["DICOM"]["PatientName"] == (
            "Anonymous"
        )

        copied = copy(mi, datastore_id, {"id": image_set_id}, version=updated["versionId"])
        copy_id = copied["destinationImageSetProperties"]["imageSetId"]
        wait_active(mi, datastore_id, copy_id)
        same_frame = mi.get_image_frame(
            datastoreId=datastore_id,
            imageSetId=copy_id,
            imageFrameInformation={"imageFrameId": frame_info["ID"]},
        )
        assert imagecodecs.jpeg2k_decode(same_frame["imageFrameBlob"].read()).tobytes() == (
            pixels.tobytes()
        )

        wait_active(mi, datastore_id, image_set_id)
        mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        wait_for(
            lambda: (
                mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetState"]
                == "DELETED"
            )
        )
        remaining = search_ids(
            mi,
            datastore_id,
            filters=[{"values": [{"DICOMPatientId": ct.PatientID}], "operator": "EQUAL"}],
        )
        assert remaining == [copy_id]
