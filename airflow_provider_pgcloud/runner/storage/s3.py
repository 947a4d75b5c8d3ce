"""AWS S3 and S3-compatible stores, through boto3."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlparse

import boto3
import botocore.exceptions
from botocore.config import Config

from ..errors import BackupFailed, BucketMissing, CloudConnectionError, InputError, PgCloudError
from .base import StoreConfig

_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
)

MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10_000


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/path` -> (`bucket`, `some/path`)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InputError(f"invalid S3 destination URL {url!r}: expected s3://BUCKET[/PATH]")
    return parsed.netloc, parsed.path.strip("/")


class S3MultipartUpload:
    """One S3 multipart upload; `upload_part` is safe to call from several threads.

    Parts and the abort go through `part_client`, which makes one attempt per call: the
    engine retries parts itself (runner/retry.py), and an abort that fails is left to the
    cleanup (runner/cleanup.py) rather than delaying the failure.
    """

    # PartWriter may hand over its bytearray part buffers: botocore sends a bytearray body in
    # one piece, where it wraps bytes in a BytesIO that it hashes and sends in small copies
    accepts_buffers = True

    def __init__(self, client: Any, bucket: str, key: str, extra: dict[str, str],
                 part_client: Any = None) -> None:
        self.key = key
        self._client, self._bucket = client, bucket
        self._part_client = part_client or client
        response = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)
        self._upload_id: str = response["UploadId"]
        self._parts: dict[int, str] = {}
        self._lock = threading.Lock()

    def upload_part(self, number: int, data: bytes | bytearray) -> None:
        response = self._part_client.upload_part(
            Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
            Body=data,
        )
        with self._lock:
            self._parts[number] = response["ETag"]

    def complete(self) -> None:
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._parts.items())]
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self.key, UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )

    def abort(self) -> None:
        self._part_client.abort_multipart_upload(
            Bucket=self._bucket, Key=self.key, UploadId=self._upload_id
        )


class S3Store:
    """A bucket and base path on S3 or an S3-compatible endpoint."""

    min_part_size = MIN_PART_SIZE
    max_parts = MAX_PARTS

    def __init__(self, config: StoreConfig, session: boto3.Session | None = None,
                 max_connections: int = 10) -> None:
        self.bucket, self.base_path = parse_s3_url(config.destination_url)
        self._config = config
        if session is None:
            try:
                session = boto3.Session(profile_name=config.aws_profile)
            except botocore.exceptions.ProfileNotFound as exc:
                raise InputError(str(exc)) from None
        options: dict[str, Any] = {
            "read_timeout": config.read_timeout,
            "connect_timeout": 10,
            "retries": {"mode": "standard", "max_attempts": 5},
            "max_pool_connections": max_connections,
        }
        if config.endpoint_url:
            # S3-compatible stores reject the CRC checksums boto3 >= 1.36 adds by default.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        self._session = session
        self._client: Any = session.client(
            "s3", endpoint_url=config.endpoint_url, config=Config(**options)
        )
        options["retries"] = {"mode": "standard", "total_max_attempts": 1}
        self._part_client: Any = session.client(
            "s3", endpoint_url=config.endpoint_url, config=Config(**options)
        )
        self._extra: dict[str, Any] = {}
        if config.encryption:
            self._extra["ServerSideEncryption"] = config.encryption
        if config.sse_kms_key_id:
            self._extra["SSEKMSKeyId"] = config.sse_kms_key_id
        if config.tags:
            self._extra["Tagging"] = urlencode(list(config.tags))

    def check(self) -> None:
        client = self._session.client(
            "s3", endpoint_url=self._config.endpoint_url,
            config=Config(connect_timeout=5, read_timeout=self._config.read_timeout,
                          retries={"mode": "standard", "max_attempts": 2}),
        )
        try:
            client.head_bucket(Bucket=self.bucket)
        except _UNREACHABLE as exc:
            raise CloudConnectionError(f"Can't connect to cloud provider: {exc}") from None
        except botocore.exceptions.NoCredentialsError:
            raise BackupFailed("no AWS credentials found (environment, profile or IAM role)") \
                from None
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketMissing(f"Bucket {self.bucket} does not exist") from None
            raise PgCloudError(f"cannot access bucket {self.bucket}: {exc}") from None

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **self._extra)

    def get(self, key: str) -> bytes:
        body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield item["Key"], item["Size"]

    def start_multipart(self, key: str) -> S3MultipartUpload:
        return S3MultipartUpload(self._client, self.bucket, key, self._extra, self._part_client)

    # --- maintenance (verify and cleanup) ---
    def iter_object(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def list_uploads(self, prefix: str) -> Iterator[tuple[str, str, dt.datetime]]:
        """(key, upload ID, initiated) of every multipart upload in progress under prefix."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Uploads", ()):
                yield item["Key"], item["UploadId"], item["Initiated"]

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def close(self) -> None:
        self._client.close()
        self._part_client.close()
