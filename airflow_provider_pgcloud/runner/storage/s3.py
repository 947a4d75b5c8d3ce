"""AWS S3 and S3-compatible stores, through boto3.

Integrity on the wire: every body sent (each part, each small object) carries a CRC32C in
`x-amz-checksum-crc32c`, which the store recomputes, refusing the request with `BadDigest` if
the bytes differ (the engine sends a refused part again: runner/retry.py). Parts are signed
with `UNSIGNED-PAYLOAD` instead of SigV4's SHA-256 of the body, because the CRC32C is what
stores check: SeaweedFS, for one, stores a part whose body no longer matches its signed
SHA-256 without a word, and refuses it when the CRC32C does not match (tests/test_reliability.py
corrupts a part on the wire). It also costs far less CPU: hardware CRC32C runs at ~17 GB/s,
SHA-256 at ~1.2 GB/s, and botocore hashes every body over plain HTTP, and over HTTPS too when
no checksum header is sent. AWS SDKs have sent a CRC checksum with every upload by default
since 2025.

Some S3-compatible stores refuse these headers (`400 InvalidArgument: Unsupported header`).
The first refusal is logged once and the store falls back to SigV4-signed payloads without
checksums, as boto3 sends them with `request_checksum_calculation=when_required`.

Object Lock (`--lock-days`): an object written with `lock` carries its mode and retain-until
date in the request that creates it (PutObject, or CreateMultipartUpload, whose object is
locked from the moment it is completed). S3 wants a checksum on such a request: the CRC32C
with `x-amz-sdk-checksum-algorithm` naming it, or Content-MD5 once checksums are off. A bucket
with Object Lock is versioned: a delete without a version ID only adds a delete marker, the
locked version stays until its date, then until a lifecycle rule expires noncurrent versions.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlencode, urlparse

import boto3
import botocore.exceptions
import crc32c
from botocore.config import Config

from ..errors import BackupFailed, BucketMissing, CloudConnectionError, InputError, PgCloudError
from .base import Capabilities, StoreConfig, Upload
from .deletes import BatchDeleter, BulkDeleteRefused
from .locks import ObjectLock, aware, read_locks

_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
)

MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10_000
MAX_DELETE_BATCH = 1000  # keys per DeleteObjects request
DELETE_WORKERS = 4  # DeleteObjects requests in flight at once

log = logging.getLogger("pgcloud")


def crc32c_header(data: bytes | bytearray) -> str:
    """The value of `x-amz-checksum-crc32c` for `data`: base64 of the big-endian CRC32C."""
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode("ascii")


def _refuses_checksums(exc: botocore.exceptions.ClientError) -> bool:
    """True for the answer of a store that does not know the flexible-checksum headers."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = exc.response.get("Error", {}).get("Code", "")
    return status in (400, 501) and code in ("InvalidArgument", "InvalidRequest",
                                             "NotImplemented", "BadRequest")


def _refuses_bulk_delete(exc: botocore.exceptions.ClientError) -> bool:
    """True for the answer of a store that does not do DeleteObjects (or wants it signed with
    a Content-MD5 the SDK no longer sends)."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message") or ""
    return (status == 501 or code in ("NotImplemented", "MissingContentMD5")
            or "content-md5" in message.lower())


def content_md5(data: bytes | bytearray) -> str:
    """The value of `Content-MD5` for `data`: what a locked write carries without checksums."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[int | None, str, str]:
    error = exc.response.get("Error", {})
    return (exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            str(error.get("Code", "")), str(error.get("Message") or ""))


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

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str, part_client: Any,
                 checksums: bool, md5: bool = False) -> None:
        self.key = key
        self._client, self._bucket = client, bucket
        self._part_client = part_client
        self._upload_id = upload_id
        self._checksums = checksums
        self._md5 = md5 and not checksums  # a locked upload without checksums: Content-MD5
        self._parts: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def upload_part(self, number: int, data: bytes | bytearray) -> None:
        checksum = {"ChecksumCRC32C": crc32c_header(data)} if self._checksums else {}
        md5 = {"ContentMD5": content_md5(data)} if self._md5 else {}
        response = self._part_client.upload_part(
            Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
            Body=data, **checksum, **md5,
        )
        with self._lock:
            self._parts[number] = {"PartNumber": number, "ETag": response["ETag"], **checksum}

    def complete(self) -> None:
        parts = [part for _, part in sorted(self._parts.items())]
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
    max_delete_batch = MAX_DELETE_BATCH
    # accepts_buffers: botocore sends a bytearray body in one piece, where it wraps bytes in a
    # BytesIO that it hashes and sends in small copies
    capabilities = Capabilities(lists_uploads=True, tags="object tags",
                                checksum="CRC32C of every part", accepts_buffers=True)

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
        # parts: one attempt per call (the engine retries them), bodies not hashed for SigV4
        self._part_options = {**options, "retries": {"mode": "standard", "total_max_attempts": 1}}
        self._checksums = True
        self._made_part_client: Any = None  # the part client, made on the first multipart upload
        self._fallback_lock = threading.Lock()
        self._extra: dict[str, Any] = {}
        if config.encryption:
            self._extra["ServerSideEncryption"] = config.encryption
        if config.sse_kms_key_id:
            self._extra["SSEKMSKeyId"] = config.sse_kms_key_id
        if config.tags:
            self._extra["Tagging"] = urlencode(list(config.tags))
        self._deleter = BatchDeleter(f"the S3 endpoint of bucket {self.bucket}",
                                     MAX_DELETE_BATCH, self._delete_batch, self.delete,
                                     workers=min(DELETE_WORKERS, max_connections))

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
        if self._config.lock_days:
            self._check_object_lock(client)

    def _check_object_lock(self, client: Any) -> None:
        """BackupFailed unless the bucket has Object Lock enabled (`--lock-days`)."""
        try:
            answer = client.get_object_lock_configuration(Bucket=self.bucket)
        except _UNREACHABLE as exc:
            raise CloudConnectionError(f"Can't connect to cloud provider: {exc}") from None
        except botocore.exceptions.ClientError as exc:
            status, code, message = _error_code(exc)
            if code == "ObjectLockConfigurationNotFoundError":
                answer = {}
            elif status == 501 or code in ("NotImplemented", "MethodNotAllowed"):
                raise BackupFailed(f"the S3 endpoint of bucket {self.bucket} does not "
                                   f"implement Object Lock ({code}): --lock-days cannot be "
                                   "used with it") from None
            else:
                raise BackupFailed(f"cannot read the Object Lock configuration of bucket "
                                   f"{self.bucket} ({code}: {message}): --lock-days needs "
                                   "s3:GetBucketObjectLockConfiguration") from None
        if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise BackupFailed(f"bucket {self.bucket} does not have S3 Object Lock enabled: "
                               "--lock-days needs a bucket with Object Lock (enabled when it "
                               "is created, or later, with versioning on)")

    def _lock_arguments(self, lock: bool) -> dict[str, Any]:
        """The Object Lock parameters of a write (nothing unless `lock` on a locking store)."""
        until = self._config.retain_until() if lock else None
        if until is None:
            return {}
        return {"ObjectLockMode": "COMPLIANCE" if self._config.compliance_lock else "GOVERNANCE",
                "ObjectLockRetainUntilDate": until}

    @property
    def _part_client(self) -> Any:
        """The client for parts: made when first needed (a restore or a delete never needs
        it, and each boto3 client costs tens of milliseconds to make)."""
        if self._made_part_client is None:
            with self._fallback_lock:
                if self._made_part_client is None:
                    self._made_part_client = self._new_part_client()
        return self._made_part_client

    def _new_part_client(self) -> Any:
        options = {**self._part_options, "s3": {"payload_signing_enabled": not self._checksums}}
        return self._session.client(
            "s3", endpoint_url=self._config.endpoint_url, config=Config(**options)
        )

    def _call_with_checksums(self, call: Any, checksum: dict[str, str],
                             unchecked: dict[str, str] | None = None,
                             **kwargs: Any) -> tuple[Any, bool]:
        """`call(**kwargs, **checksum)` and True; on a store that refuses checksum headers,
        switch this store to signed payloads without checksums, call again without them (with
        `unchecked` instead) and return False with the answer."""
        if self._checksums:
            try:
                return call(**kwargs, **checksum), True
            except botocore.exceptions.ClientError as exc:
                if not _refuses_checksums(exc):
                    raise
                self._fall_back(exc)
        return call(**kwargs, **(unchecked or {})), False

    def _fall_back(self, exc: botocore.exceptions.ClientError) -> None:
        with self._fallback_lock:
            if not self._checksums:
                return
            error = exc.response.get("Error", {})
            log.warning("the store refused a CRC32C checksum header (%s: %s); sending "
                        "SigV4-signed payloads without checksums instead",
                        error.get("Code"), error.get("Message"))
            self._checksums = False
            self._made_part_client = self._new_part_client()

    def put(self, key: str, data: bytes, *, lock: bool = False) -> None:
        locked = self._lock_arguments(lock)
        checksum = {"ChecksumCRC32C": crc32c_header(data)}
        unchecked: dict[str, str] = {}
        if locked:  # S3 wants the algorithm named, or Content-MD5, on a locked write
            checksum["ChecksumAlgorithm"] = "CRC32C"
            unchecked["ContentMD5"] = content_md5(data)
        self._call_with_checksums(
            self._client.put_object, checksum, unchecked,
            Bucket=self.bucket, Key=key, Body=data, **self._extra, **locked,
        )

    def get(self, key: str) -> bytes:
        body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def read_range(self, key: str, start: int, length: int) -> bytes:
        body: bytes = self._client.get_object(
            Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"].read()
        return body

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield item["Key"], item["Size"]

    def start_multipart(self, key: str, *, lock: bool = False) -> S3MultipartUpload:
        locked = self._lock_arguments(lock)
        response, checksums = self._call_with_checksums(
            self._client.create_multipart_upload, {"ChecksumAlgorithm": "CRC32C"},
            Bucket=self.bucket, Key=key, **self._extra, **locked,
        )
        return S3MultipartUpload(self._client, self.bucket, key, response["UploadId"],
                                 self._part_client, checksums, md5=bool(locked))

    def iter_object(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def object_locks(self, keys: Iterable[str]) -> dict[str, ObjectLock]:
        """HeadObject's Object Lock fields of each key (they are there only for a caller
        with s3:GetObjectRetention and s3:GetObjectLegalHold)."""
        return read_locks(keys, self._object_lock)

    def _object_lock(self, key: str) -> ObjectLock | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            status, code, _message = _error_code(exc)
            if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        until: dt.datetime | None = head.get("ObjectLockRetainUntilDate")
        hold = head.get("ObjectLockLegalHoldStatus") == "ON"
        if until is None and not hold:
            return None
        return ObjectLock(aware(until) if until else None, head.get("ObjectLockMode"), hold)

    def delete_many(self, keys: Iterable[str], batch_size: int | None = None) -> dict[str, str]:
        return self._deleter.delete(keys, batch_size)

    def _delete_batch(self, keys: Sequence[str]) -> dict[str, str]:
        """One DeleteObjects request (quiet: only failures are listed in the answer)."""
        try:
            response = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        except botocore.exceptions.ClientError as exc:
            if _refuses_bulk_delete(exc):
                error = exc.response.get("Error", {})
                raise BulkDeleteRefused(f"{error.get('Code')}: {error.get('Message')}") \
                    from None
            raise
        return {
            error["Key"]: f"{error.get('Code')}: {error.get('Message')}"
            for error in response.get("Errors", ())
            if error.get("Code") != "NoSuchKey"
        }

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        """Every multipart upload in progress under prefix."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Uploads", ()):
                yield Upload(item["Key"], item["UploadId"], item["Initiated"])

    def abort_upload(self, upload: Upload) -> None:
        self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key,
                                            UploadId=upload.upload_id)

    def close(self) -> None:
        self._client.close()
        if self._made_part_client is not None:
            self._made_part_client.close()
