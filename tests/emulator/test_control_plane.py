"""Data stores, import job API, tags, validation and errors of the local
service, through boto3 only."""

from __future__ import annotations

import gzip
import json
import time
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError

from emulator.config import ServiceConfig
from emulator.edge.server import LocalService
from emulator.samples import PYDICOM_TEST_FILES
from tests.emulator.conftest import (
    BUCKET,
    ROLE,
    make_clients,
    wait_datastore_active,
    wait_for,
    wait_job_done,
)


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return excinfo.value.response["Error"]["Code"]


def start_job(mi: Any, ds: str, token: str = "token-1", prefix: str = "in/") -> dict:
    return mi.start_dicom_import_job(
        datastoreId=ds,
        dataAccessRoleArn=ROLE,
        clientToken=token,
        inputS3Uri=f"s3://{BUCKET}/{prefix}",
        outputS3Uri=f"s3://{BUCKET}/out/",
    )


class TestDatastores:
    def test_life_cycle(self, mi: Any) -> None:
        created = mi.create_datastore(datastoreName="research/ct-2026", tags={"team": "rad"})
        assert created["datastoreStatus"] == "CREATING"
        ds = created["datastoreId"]
        assert len(ds) == 32 and all(c in "0123456789abcdef" for c in ds)
        wait_datastore_active(mi, ds)
        props = mi.get_datastore(datastoreId=ds)["datastoreProperties"]
        assert props["datastoreName"] == "research/ct-2026"
        assert props["losslessStorageFormat"] == "HTJ2K"
        assert props["datastoreArn"] == (
            f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{ds}"
        )
        assert mi.list_tags_for_resource(resourceArn=props["datastoreArn"])["tags"] == {
            "team": "rad"
        }
        assert mi.delete_datastore(datastoreId=ds)["datastoreStatus"] == "DELETING"
        wait_for(
            lambda: (
                mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"]
                == "DELETED"
            )
        )
        with pytest.raises(ClientError) as e:
            mi.delete_datastore(datastoreId=ds)
        assert error_code(e) == "ResourceNotFoundException"

    def test_same_client_token_returns_same_store(self, mi: Any) -> None:
        first = mi.create_datastore(datastoreName="a", clientToken="tok")["datastoreId"]
        again = mi.create_datastore(datastoreName="a", clientToken="tok")["datastoreId"]
        assert first == again
        assert len(mi.list_datastores()["datastoreSummaries"]) == 1

    def test_list_paginates_and_filters(self, mi: Any) -> None:
        ids = [mi.create_datastore(datastoreName=f"s{i}")["datastoreId"] for i in range(5)]
        for ds in ids:
            wait_datastore_active(mi, ds)
        pages = mi.get_paginator("list_datastores").paginate(PaginationConfig={"PageSize": 2})
        seen = [s["datastoreId"] for page in pages for s in page["datastoreSummaries"]]
        assert seen == ids
        assert mi.list_datastores(datastoreStatus="CREATING")["datastoreSummaries"] == []

    @pytest.mark.parametrize(
        ("call", "field"),
        [
            (lambda mi: mi.create_datastore(datastoreName="bad name!"), "datastoreName"),
            (lambda mi: mi.create_datastore(losslessStorageFormat="PNG"), "losslessStorageFormat"),
            (lambda mi: mi.get_datastore(datastoreId="A" * 32), "datastoreId"),
            (lambda mi: mi.list_datastores(maxResults=51), "maxResults"),
            (lambda mi: mi.create_datastore(tags={"aws:reserved": "x"}), "tags"),
        ],
    )
    def test_server_side_validation_names_the_field(self, mi: Any, call: Any, field: str) -> None:
        with pytest.raises(ClientError) as e:
            call(mi)
        assert error_code(e) == "ValidationException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert field in e.value.response["Error"]["Message"]

    def test_unknown_store(self, mi: Any) -> None:
        with pytest.raises(ClientError) as e:
            mi.get_datastore(datastoreId="0" * 32)
        assert error_code(e) == "ResourceNotFoundException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]

    def test_every_data_store_is_active_once_its_transition_time_passed(self) -> None:
        """However many data stores change at once: a fifth one used to wait
        for one of four timer threads before its own time began to run."""
        with LocalService(config=ServiceConfig(datastore_transition_seconds=2.0)) as svc:
            mi, _ = make_clients(svc)
            ids = [mi.create_datastore()["datastoreId"] for _ in range(8)]
            time.sleep(2.5)
            statuses = [
                mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"]
                for ds in ids
            ]
            assert statuses == ["ACTIVE"] * 8

    def test_quota_of_data_stores(self) -> None:
        with LocalService(config=ServiceConfig(max_datastores=1)) as svc:
            mi, _ = make_clients(svc)
            mi.create_datastore()
            with pytest.raises(ClientError) as e:
                mi.create_datastore()
            assert error_code(e) == "ServiceQuotaExceededException"
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402


class TestImportJobApi:
    def test_store_must_be_active(self) -> None:
        # A store of its own that stays CREATING: the shared service's stores
        # turn ACTIVE in 50 ms, which a busy machine can spend between calls.
        config = ServiceConfig(datastore_transition_seconds=600)
        with LocalService(config=config) as svc:
            mi, _ = make_clients(svc)
            ds = mi.create_datastore()["datastoreId"]
            with pytest.raises(ClientError) as e:
                start_job(mi, ds)
        assert error_code(e) == "ConflictException"

    def test_client_token_is_idempotent(self, mi: Any, s3: Any, datastore_id: str) -> None:
        first = start_job(mi, datastore_id, token="same")
        again = start_job(mi, datastore_id, token="same")
        assert again["jobId"] == first["jobId"]
        with pytest.raises(ClientError) as e:
            start_job(mi, datastore_id, token="same", prefix="other/")
        assert error_code(e) == "ConflictException"
        jobs = mi.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]
        assert len(jobs) == 1

    def test_job_properties_and_summaries(self, mi: Any, s3: Any, datastore_id: str) -> None:
        job = start_job(mi, datastore_id)
        assert job["jobStatus"] == "SUBMITTED"
        props = wait_job_done(mi, datastore_id, job["jobId"])
        assert props["outputS3Uri"] == (
            f"s3://{BUCKET}/out/{datastore_id}-DicomImport-{job['jobId']}/"
        )
        assert props["inputS3Uri"] == f"s3://{BUCKET}/in/"
        assert props["dataAccessRoleArn"] == ROLE
        assert props["endedAt"] >= props["submittedAt"]
        summary = mi.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"][0]
        assert "inputS3Uri" not in summary and "outputS3Uri" not in summary
        assert summary["jobId"] == job["jobId"]

    def test_list_filters_by_status_and_paginates(
        self, mi: Any, s3: Any, datastore_id: str
    ) -> None:
        ids = [start_job(mi, datastore_id, token=f"t{i}")["jobId"] for i in range(3)]
        for job_id in ids:
            wait_job_done(mi, datastore_id, job_id)
        pages = mi.get_paginator("list_dicom_import_jobs").paginate(
            datastoreId=datastore_id, PaginationConfig={"PageSize": 2}
        )
        listed = [j["jobId"] for p in pages for j in p["jobSummaries"]]
        assert sorted(listed) == sorted(ids)
        assert (
            mi.list_dicom_import_jobs(datastoreId=datastore_id, jobStatus="SUBMITTED")[
                "jobSummaries"
            ]
            == []
        )

    def test_unknown_job(self, mi: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as e:
            mi.get_dicom_import_job(datastoreId=datastore_id, jobId="nosuchjob")
        assert error_code(e) == "ResourceNotFoundException"

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"inputS3Uri": "http://bucket/x"}, "inputS3Uri"),
            ({"dataAccessRoleArn": "arn:aws:iam::123:role/short-account"}, "dataAccessRoleArn"),
            ({"clientToken": "bad token"}, "clientToken"),
            ({"jobName": "x" * 65}, "jobName"),
        ],
    )
    def test_request_validation(
        self, mi: Any, datastore_id: str, changes: dict, field: str
    ) -> None:
        request = {
            "datastoreId": datastore_id,
            "dataAccessRoleArn": ROLE,
            "clientToken": "tok",
            "inputS3Uri": f"s3://{BUCKET}/in/",
            "outputS3Uri": f"s3://{BUCKET}/out/",
            **changes,
        }
        with pytest.raises(ClientError) as e:
            mi.start_dicom_import_job(**request)
        assert error_code(e) == "ValidationException"
        assert field in e.value.response["Error"]["Message"]

    def test_file_quota_per_job(self) -> None:
        with LocalService(
            config=ServiceConfig(max_files_per_job=2, datastore_transition_seconds=0)
        ) as svc:
            mi, s3 = make_clients(svc)
            s3.create_bucket(Bucket=BUCKET)
            for i in range(3):
                s3.put_object(Bucket=BUCKET, Key=f"in/{i}.dcm", Body=b"x")
            ds = mi.create_datastore()["datastoreId"]
            wait_datastore_active(mi, ds)
            with pytest.raises(ClientError) as e:
                start_job(mi, ds)
            assert error_code(e) == "ServiceQuotaExceededException"
            assert "at most 2" in e.value.response["Error"]["Message"]

    def test_concurrent_job_quota(self, service: LocalService, s3: Any) -> None:
        service.config.max_concurrent_jobs = 1
        service.faults.job_duration_seconds = 2.0
        mi, _ = make_clients(service)
        ds = mi.create_datastore()["datastoreId"]
        wait_datastore_active(mi, ds)
        start_job(mi, ds, token="one")
        with pytest.raises(ClientError) as e:
            start_job(mi, ds, token="two")
        assert error_code(e) == "ServiceQuotaExceededException"


class TestTags:
    def test_tag_untag_list(self, mi: Any, datastore_id: str) -> None:
        arn = mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreArn"]
        mi.tag_resource(resourceArn=arn, tags={"a": "1", "b": "2", "c": ""})
        mi.untag_resource(resourceArn=arn, tagKeys=["a", "c"])
        assert mi.list_tags_for_resource(resourceArn=arn)["tags"] == {"b": "2"}

    def test_unknown_resource(self, mi: Any) -> None:
        arn = f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{'1' * 32}"
        with pytest.raises(ClientError) as e:
            mi.list_tags_for_resource(resourceArn=arn)
        assert error_code(e) == "ResourceNotFoundException"

    def test_malformed_arn(self, mi: Any) -> None:
        with pytest.raises(ClientError) as e:
            mi.list_tags_for_resource(resourceArn="arn:aws:s3:::bucket")
        assert error_code(e) == "ValidationException"


class TestFaults:
    def test_throttling_at_published_rate(self, service: LocalService, mi: Any) -> None:
        service.faults.throttle = True
        codes = []
        for _ in range(4):
            try:
                mi.create_datastore()
                codes.append("ok")
            except ClientError as error:
                codes.append(error.response["Error"]["Code"])
        # CreateDatastore: 0.085 requests/s with a burst of 1.
        assert codes[0] == "ok"
        assert codes[1:] == ["ThrottlingException"] * 3

    def test_admin_route_injects_internal_errors(self, service: LocalService, mi: Any) -> None:
        body = json.dumps({"error_rate": {"ListDatastores": 1.0}}).encode()
        request = urllib.request.Request(
            f"{service.endpoint}/_emulator/faults", data=body, method="POST",
            headers={"Authorization": f"Bearer {service.admin_token}",
                     "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            assert json.load(response)["error_rate"] == {"ListDatastores": 1.0}
        with pytest.raises(ClientError) as e:
            mi.list_datastores()
        assert error_code(e) == "InternalServerException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        # Other operations are untouched.
        assert mi.create_datastore()["datastoreStatus"] == "CREATING"

    def test_admin_route_rejects_unknown_settings(self, service: LocalService) -> None:
        request = urllib.request.Request(
            f"{service.endpoint}/_emulator/faults", data=b'{"nope": 1}', method="POST",
            headers={"Authorization": f"Bearer {service.admin_token}",
                     "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request)
        assert e.value.code == 400

    def test_job_failed_on_demand(
        self, service: LocalService, mi: Any, s3: Any, datastore_id: str
    ) -> None:
        service.faults.fail_jobs = 1
        failed = wait_job_done(mi, datastore_id, start_job(mi, datastore_id, "a")["jobId"])
        assert failed["jobStatus"] == "FAILED"
        assert "Injected failure" in failed["message"]
        assert service.faults.fail_jobs == 0

    def test_a_poison_key_fails_every_job_that_holds_it(
        self, service: LocalService, mi: Any, s3: Any, datastore_id: str
    ) -> None:
        for key in ("mixed/good.dcm", "mixed/poison.dcm", "clean/good.dcm"):
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        service.faults.fail_jobs_with_key = r"/poison\.dcm$"
        mixed = wait_job_done(mi, datastore_id,
                              start_job(mi, datastore_id, "mixed", "mixed/")["jobId"])
        clean = wait_job_done(mi, datastore_id,
                              start_job(mi, datastore_id, "clean", "clean/")["jobId"])
        assert mixed["jobStatus"] == "FAILED" and "poison" not in mixed["message"]
        assert mixed["message"].startswith("Internal error while importing")
        assert clean["jobStatus"] == "COMPLETED"

    def test_shortened_job_duration_releases_a_running_job(
        self, service: LocalService, mi: Any, s3: Any, datastore_id: str
    ) -> None:
        s3.put_object(Bucket=BUCKET, Key="in/0.dcm", Body=b"x")
        service.faults.job_duration_seconds = 600
        job_id = start_job(mi, datastore_id, "long")["jobId"]
        wait_for(lambda: mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)[
            "jobProperties"]["jobStatus"] == "IN_PROGRESS")
        request = urllib.request.Request(
            f"{service.endpoint}/_emulator/faults", method="POST",
            data=json.dumps({"job_duration_seconds": 0}).encode(),
            headers={"Authorization": f"Bearer {service.admin_token}",
                     "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).close()
        # The job started with 600 s to go; it ends once the duration is read again.
        assert wait_job_done(mi, datastore_id, job_id, timeout=20)["jobStatus"] == "COMPLETED"


class TestRestart:
    def test_state_survives_and_running_job_is_failed(self, tmp_path: Any) -> None:
        config = ServiceConfig(datastore_transition_seconds=0)
        with LocalService(data_dir=tmp_path, config=config) as svc:
            mi, s3 = make_clients(svc)
            s3.create_bucket(Bucket=BUCKET)
            ds = mi.create_datastore(datastoreName="kept")["datastoreId"]
            wait_datastore_active(mi, ds)
            arn = mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreArn"]
            mi.tag_resource(resourceArn=arn, tags={"k": "v"})
            svc.faults.job_duration_seconds = 30
            job = start_job(mi, ds)["jobId"]
            wait_for(
                lambda: (
                    mi.get_dicom_import_job(datastoreId=ds, jobId=job)["jobProperties"]["jobStatus"]
                    == "IN_PROGRESS"
                )
            )
        with LocalService(data_dir=tmp_path, config=config) as svc:
            mi, _ = make_clients(svc)
            assert mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreName"] == (
                "kept"
            )
            assert mi.list_tags_for_resource(resourceArn=arn)["tags"] == {"k": "v"}
            props = mi.get_dicom_import_job(datastoreId=ds, jobId=job)["jobProperties"]
            assert props["jobStatus"] == "FAILED"
            assert "stopped during the import" in props["message"]


def test_unknown_admin_route_is_an_error(service: LocalService) -> None:
    request = urllib.request.Request(f"{service.endpoint}/_emulator/nope")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request)
    assert e.value.code == 404


def test_image_sets_and_frames_survive_a_restart(tmp_path: Any) -> None:
    config = ServiceConfig(datastore_transition_seconds=0)
    data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    with LocalService(data_dir=tmp_path / "state", config=config) as svc:
        mi, s3 = make_clients(svc)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="in/ct.dcm", Body=data)
        ds = mi.create_datastore()["datastoreId"]
        wait_datastore_active(mi, ds)
        assert wait_job_done(mi, ds, start_job(mi, ds)["jobId"])["jobStatus"] == "COMPLETED"
        image_set = mi.search_image_sets(datastoreId=ds)["imageSetsMetadataSummaries"][0]
        before = mi.get_image_set_metadata(datastoreId=ds, imageSetId=image_set["imageSetId"])
        document = before["imageSetMetadataBlob"].read()
    with LocalService(data_dir=tmp_path / "state", config=config) as svc:
        mi, _ = make_clients(svc)
        image_set_id = image_set["imageSetId"]
        after = mi.get_image_set_metadata(datastoreId=ds, imageSetId=image_set_id)
        assert after["imageSetMetadataBlob"].read() == document
        instance = next(iter(json.loads(gzip.decompress(document))["Study"]["Series"].values()))
        frame_id = next(iter(instance["Instances"].values()))["ImageFrames"][0]["ID"]
        frame = mi.get_image_frame(
            datastoreId=ds,
            imageSetId=image_set_id,
            imageFrameInformation={"imageFrameId": frame_id},
        )
        assert frame["contentType"] == "image/jph"
        assert len(frame["imageFrameBlob"].read()) > 0
        versions = mi.list_image_set_versions(datastoreId=ds, imageSetId=image_set_id)
        assert [v["versionId"] for v in versions["imageSetPropertiesList"]] == ["1"]
