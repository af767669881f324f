"""Reading an import job's input objects.

When S3 is this service's own (moto, in this process), objects are read
straight from moto's store. Through HTTP, each GetObject cost the service
twice, once as the client and once as the server: in a py-spy profile of an
import of 2,000 small files, about half the service's CPU.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.exceptions import MissingBucket
from moto.s3.models import s3_backends


def read_input_object(s3: Any, bucket: str, key: str, in_process: bool) -> bytes:
    """The object's bytes; a missing bucket or key raises ClientError either way."""
    if not in_process:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body
    try:
        found = s3_backends[DEFAULT_ACCOUNT_ID]["global"].get_object(bucket, key)
    except MissingBucket:
        raise _not_found("NoSuchBucket", "The specified bucket does not exist") from None
    if found is None:
        raise _not_found("NoSuchKey", "The specified key does not exist.")
    return found.value


def _not_found(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "GetObject")
