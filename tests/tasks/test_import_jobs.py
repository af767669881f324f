from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import ANY, Stubber

from tasks.batch import make_batches
from tasks.import_jobs import (
    DatastoreError,
    ImportJobError,
    client_token,
    resolve_datastore,
    start_import_job,
)
from tasks.statuses import FileValidity
from tasks.validate import ValidationRecord

DS = "0123456789abcdef0123456789abcdef"
INPUT = "s3://bucket/staging/run/batch/"
OUTPUT = "s3://bucket/output/"
ROLE = "arn:aws:iam::123456789012:role/ImportRole"


@pytest.fixture
def client() -> Any:
    return boto3.client(
        "medical-imaging",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def batch():
    record = ValidationRecord("/a.dcm", "a.dcm", 10, FileValidity.VALID, sha256="s",
                              study_instance_uid="1", series_instance_uid="2")
    (only,) = make_batches([record])
    return only


def _start_params(batch: Any) -> dict[str, Any]:
    return {
        "jobName": f"dicom-import-{batch.batch_id}",
        "datastoreId": DS,
        "dataAccessRoleArn": ROLE,
        "clientToken": client_token(DS, INPUT, batch.digest),
        "inputS3Uri": INPUT,
        "outputS3Uri": OUTPUT,
    }


_STARTED = {"datastoreId": DS, "jobId": "job1", "jobStatus": "SUBMITTED",
            "submittedAt": 0}


class TestStartImportJob:
    def test_token_is_deterministic_and_64_chars(self, batch: Any) -> None:
        token = client_token(DS, INPUT, batch.digest)
        assert len(token) == 64
        assert token == client_token(DS, INPUT, batch.digest)
        assert token != client_token(DS, INPUT + "x", batch.digest)

    @pytest.mark.parametrize(
        ("code", "status"),
        [("ThrottlingException", 429), ("ServiceQuotaExceededException", 402)],
    )
    def test_waits_out_rate_and_quota_errors_with_the_same_token(
        self, client: Any, stub: Stubber, batch: Any, code: str, status: int
    ) -> None:
        params = _start_params(batch)
        stub.add_client_error("start_dicom_import_job", code, http_status_code=status,
                              expected_params=params)
        stub.add_client_error("start_dicom_import_job", code, http_status_code=status,
                              expected_params=params)
        stub.add_response("start_dicom_import_job", _STARTED, expected_params=params)
        delays: list[float] = []

        job = start_import_job(client, DS, batch, INPUT, OUTPUT, ROLE, base_delay=1.0,
                               sleep=delays.append, rng=random.Random(0))

        assert job.job_id == "job1"
        assert job.client_token == params["clientToken"]
        assert len(delays) == 2
        assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0

    def test_other_errors_fail_at_once(self, client: Any, stub: Stubber, batch: Any) -> None:
        stub.add_client_error("start_dicom_import_job", "AccessDeniedException",
                              http_status_code=403)
        with pytest.raises(ImportJobError, match="AccessDeniedException"):
            start_import_job(client, DS, batch, INPUT, OUTPUT, ROLE, sleep=lambda _: None)

    def test_gives_up_after_max_attempts(self, client: Any, stub: Stubber, batch: Any) -> None:
        for _ in range(3):
            stub.add_client_error("start_dicom_import_job", "ThrottlingException",
                                  http_status_code=429)
        with pytest.raises(ImportJobError, match="after 3 attempts"):
            start_import_job(client, DS, batch, INPUT, OUTPUT, ROLE, max_attempts=3,
                             sleep=lambda _: None)


def _properties(status: str, ds: str = DS) -> dict[str, Any]:
    return {"datastoreProperties": {"datastoreId": ds, "datastoreName": "n",
                                    "datastoreStatus": status, "datastoreArn": "arn"}}


def _summary(ds: str, name: str, status: str = "ACTIVE") -> dict[str, Any]:
    return {"datastoreId": ds, "datastoreName": name, "datastoreStatus": status,
            "datastoreArn": f"arn:{ds}"}


class TestResolveDatastore:
    def test_an_id_is_checked_not_listed(self, client: Any, stub: Stubber) -> None:
        stub.add_response("get_datastore", _properties("ACTIVE"), {"datastoreId": DS})
        assert resolve_datastore(client, DS).datastore_id == DS

    def test_a_name_is_found_across_pages(self, client: Any, stub: Stubber) -> None:
        other = "f" * 32
        stub.add_response("list_datastores", {"datastoreSummaries": [_summary(other, "x")],
                                              "nextToken": "t"})
        stub.add_response("list_datastores", {"datastoreSummaries": [_summary(DS, "mine")]},
                          {"nextToken": "t"})
        stub.add_response("get_datastore", _properties("ACTIVE"), {"datastoreId": DS})

        assert resolve_datastore(client, "mine").datastore_id == DS

    def test_an_unknown_name_is_created_and_awaited(self, client: Any, stub: Stubber) -> None:
        stub.add_response("list_datastores", {"datastoreSummaries": []})
        stub.add_response("create_datastore", {"datastoreId": DS, "datastoreStatus": "CREATING"},
                          {"datastoreName": "new", "clientToken": ANY})
        stub.add_response("get_datastore", _properties("CREATING"), {"datastoreId": DS})
        stub.add_response("get_datastore", _properties("ACTIVE"), {"datastoreId": DS})
        sleeps: list[float] = []

        assert resolve_datastore(client, "new", create=True,
                                 sleep=sleeps.append).datastore_id == DS
        assert len(sleeps) == 1

    def test_a_created_store_is_logged(self, client: Any, stub: Stubber,
                                       caplog: pytest.LogCaptureFixture) -> None:
        stub.add_response("list_datastores", {"datastoreSummaries": []})
        stub.add_response("create_datastore", {"datastoreId": DS, "datastoreStatus": "CREATING"},
                          {"datastoreName": "new", "clientToken": ANY})
        stub.add_response("get_datastore", _properties("ACTIVE"), {"datastoreId": DS})

        with caplog.at_level("INFO", logger="tasks.import_jobs"):
            resolve_datastore(client, "new", create=True)

        assert f"Created data store new ({DS})" in caplog.messages

    def test_unknown_name_is_an_error_by_default(self, client: Any, stub: Stubber) -> None:
        stub.add_response("list_datastores", {"datastoreSummaries": []})
        with pytest.raises(DatastoreError, match="--datastore new: no data store has this name"):
            resolve_datastore(client, "new")

    def test_deleted_stores_are_ignored_and_failed_ones_refused(
        self, client: Any, stub: Stubber
    ) -> None:
        stub.add_response("list_datastores", {"datastoreSummaries": [
            _summary("a" * 32, "n", "DELETED"), _summary(DS, "n", "CREATING")]})
        stub.add_response("get_datastore", _properties("CREATE_FAILED"), {"datastoreId": DS})
        with pytest.raises(DatastoreError, match="CREATE_FAILED"):
            resolve_datastore(client, "n", sleep=lambda _: None)

    def test_missing_id_is_an_error(self, client: Any, stub: Stubber) -> None:
        stub.add_client_error("get_datastore", "ResourceNotFoundException",
                              http_status_code=404)
        with pytest.raises(DatastoreError, match="does not exist"):
            resolve_datastore(client, DS)
