"""Google Cloud Storage, through google-cloud-storage: archives stream into resumable uploads.

Why a resumable upload session, and not XML multipart (Barman 3.20's way) or compose:
  * XML multipart is not served by GCS emulators (they answer 501), and the client library has
    no public API for it (Barman imports private classes, pinning google-cloud-storage < 3.14).
  * compose would upload each part as a temporary object and stitch them together (32 sources
    per call, so a multi-level tree past 32 parts), then delete the parts. The temporaries are
    real objects: they are billed, caught by retention policies and soft delete, and left behind
    by a crash, where barman-cloud-backup-delete never removes them. Named under the backup's
    prefix they could even be taken by barman-cloud-restore for archive parts.
  * A resumable session is GCS's own streaming upload: the object appears, whole and atomically,
    only when the last chunk arrives; a session that is abandoned leaves nothing visible and
    expires by itself (and is cancelled at once on abort). Metadata (tags) and the KMS key are
    fixed when the session is created, through the public `create_resumable_upload_session`.

The trade-off is that one object's chunks travel in sequence: `upload_part` calls wait for
their turn, so the PartWriter's second thread holds the next part ready while the first sends
(compression never waits for the network unless the network is slower). Parallelism comes from
the engine, which uploads -J archive objects at once, one per worker process. Chunks must be
multiples of 256 KiB except the last, so bytes past the last 256 KiB boundary of a part are
carried into the next chunk: any part size works. A chunk that fails is resumed from the
offset the service says it has persisted, after a backoff. The CRC32C of the whole stream is
computed on the fly and compared with the stored object's at the end.

Destination URLs are `gs://BUCKET[/PATH]` (or Barman's console form,
`https://console.cloud.google.com/storage/browser/BUCKET[/PATH]`). Credentials are the client
library's defaults (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the metadata server); with
STORAGE_EMULATOR_HOST set the client talks to that emulator anonymously.

Object retention (`--lock-days`): an object written with `lock` carries its `retention` (mode
Unlocked or Locked, retainUntilTime) in the metadata of the request that creates it (the
resumable session, or the one-request upload), so it is protected from the moment it exists;
that takes a bucket with object retention enabled, which `check()` reads (storage.buckets.get).
GCS refuses to delete or overwrite such an object until the date, versioned or not.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from ..errors import (
    BackupFailed,
    BucketMissing,
    CloudConnectionError,
    InputError,
    first_line,
    missing_module,
)
from .base import Capabilities, StoreConfig, Upload
from .deletes import BatchDeleter, BulkDeleteRefused
from .locks import ObjectLock, aware, read_locks

try:
    import google_crc32c
    import requests
    from google.api_core import exceptions as api_exceptions
    from google.auth.exceptions import DefaultCredentialsError
    from google.auth.exceptions import TransportError as AuthTransportError
    from google.cloud.storage import Blob, Client
    from google.cloud.storage.retry import DEFAULT_RETRY
except ImportError as _exc:  # the `google` extra is not installed
    raise missing_module("google-cloud-storage", "google", _exc) from None

CONSOLE_URL = "https://console.cloud.google.com/storage/browser/"
CHUNK_ALIGNMENT = 256 << 10  # every resumable chunk but the last is a multiple of this
MIN_PART_SIZE = CHUNK_ALIGNMENT
MAX_PARTS = 10_000  # no limit for resumable uploads; Barman's GCS value keeps its part sizes
MAX_DELETE_BATCH = 100  # requests per batch request
MAX_ATTEMPTS = 6  # per chunk: the first try and 5 resumptions (1+2+4+8+16 s of backoff)
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT = (requests.ConnectionError, requests.Timeout,
              requests.exceptions.ChunkedEncodingError)
_UNREACHABLE = (*_TRANSIENT, AuthTransportError, api_exceptions.ServiceUnavailable,
                api_exceptions.GatewayTimeout, api_exceptions.RetryError)


def parse_gcs_url(url: str) -> tuple[str, str]:
    """`gs://bucket/some/path` -> (`bucket`, `some/path`)."""
    if url.startswith(CONSOLE_URL):
        url = "gs://" + url[len(CONSOLE_URL):]
    parsed = urlparse(url)
    if parsed.scheme != "gs" or not parsed.netloc:
        raise InputError(f"invalid Google Cloud Storage destination URL {url!r}: expected "
                         "gs://BUCKET[/PATH]")
    return parsed.netloc, parsed.path.strip("/")




def _make_client() -> Client:
    options: dict[str, Any] | None = None
    universe = os.environ.get("GOOGLE_CLOUD_UNIVERSE_DOMAIN")
    if universe:
        options = {"universe_domain": universe}
    try:
        try:
            return Client(client_options=options)
        except OSError:
            # no project in the credentials or the environment: bucket and object calls need
            # none, and project=None tells the client not to look for one
            return Client(project=None, client_options=options)
    except DefaultCredentialsError as exc:
        raise BackupFailed(f"no Google Cloud credentials found (GOOGLE_APPLICATION_CREDENTIALS, "
                           f"gcloud or the metadata server): {first_line(exc)}") from None


def _persisted(response: requests.Response) -> int:
    """Bytes the service holds, from a 308 answer's `Range: bytes=0-N` (none: 0)."""
    value = response.headers.get("Range", "")
    if not value.startswith("bytes=0-"):
        return 0
    return int(value[len("bytes=0-"):]) + 1


class GCSResumableUpload:
    """One object written through a resumable upload session, chunk after chunk.

    `upload_part` may be called from several threads; calls proceed in part-number order.
    A failed chunk is resumed here (`_send`), never re-sent by the engine (the store's
    `capabilities.engine_retries_parts` is False).
    """

    def __init__(self, blob: Blob, key: str, timeout: tuple[float, float]) -> None:
        self.key = key
        self._blob, self._timeout = blob, timeout
        self._url: str = blob.create_resumable_upload_session(
            content_type="application/octet-stream", timeout=timeout, retry=DEFAULT_RETRY
        )
        # the session URL is the credential for its chunks: no Authorization header needed
        self._http = requests.Session()
        self._turn = 1
        self._turns = threading.Condition()
        self._failed = False
        self._offset = 0  # bytes the service has persisted
        self._carry = b""  # bytes past the last 256 KiB boundary, sent with the next chunk
        self._crc = google_crc32c.Checksum()

    def upload_part(self, number: int, data: bytes) -> None:
        with self._turns:
            while self._turn != number and not self._failed:
                self._turns.wait()
            if self._failed:
                raise BackupFailed(f"{self.key}: upload abandoned after an earlier failure")
        try:
            self._crc.update(data)
            buffer = self._carry + data if self._carry else data
            aligned = len(buffer) - len(buffer) % CHUNK_ALIGNMENT
            if aligned:
                self._send(memoryview(buffer)[:aligned], final=False)
            self._carry = buffer[aligned:]
        except BaseException:
            self._fail()
            raise
        with self._turns:
            self._turn += 1
            self._turns.notify_all()

    def complete(self) -> None:
        if self._failed:
            raise BackupFailed(f"{self.key}: upload abandoned after an earlier failure")
        try:
            resource = self._send(memoryview(self._carry), final=True)
        except BaseException:
            self._fail()
            raise
        finally:
            self._http.close()
        self._carry = b""
        expected = base64.b64encode(self._crc.digest()).decode()
        stored = resource.get("crc32c") if resource else None
        size = int(resource.get("size", -1)) if resource else -1
        if (stored is not None and stored != expected) or size not in (-1, self._offset):
            self._blob.delete(timeout=self._timeout, retry=DEFAULT_RETRY)
            raise BackupFailed(f"{self.key}: stored object does not match what was sent "
                               f"(crc32c {stored} != {expected}, size {size})")

    def abort(self) -> None:
        """Cancel the session; the object was never visible. Errors are ignored by the caller
        (the emulator answers 501, GCS 499)."""
        self._fail()
        try:
            self._http.delete(self._url, timeout=self._timeout)
        finally:
            self._http.close()

    def _fail(self) -> None:
        with self._turns:
            self._failed = True
            self._turns.notify_all()

    def _send(self, chunk: memoryview, *, final: bool) -> dict[str, Any] | None:
        """PUT `chunk` at the current offset, resuming after transient failures. Returns the
        object resource when the upload is finalized."""
        start = self._offset
        end = start + len(chunk)
        total = str(end) if final else "*"
        problem = ""
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                time.sleep(min(2 ** (attempt - 1), 16))
                try:
                    finished = self._query(total)
                except _TRANSIENT as exc:
                    problem = first_line(exc)
                    continue
                if finished is not None:
                    return finished
                if not start <= self._offset <= end:
                    raise BackupFailed(f"{self.key}: the upload session lost data (has "
                                       f"{self._offset} bytes, expected {start}..{end})")
            piece = chunk[self._offset - start:]
            headers = {"Content-Range": (f"bytes {self._offset}-{end - 1}/{total}" if piece
                                         else f"bytes */{total}")}
            try:
                response = self._http.put(self._url, data=bytes(piece), headers=headers,
                                          timeout=self._timeout)
            except _TRANSIENT as exc:
                problem = first_line(exc)
                continue
            if response.status_code in (200, 201):
                self._offset = end
                resource: dict[str, Any] = response.json()
                return resource
            if response.status_code == 308:
                self._offset = _persisted(response)
                if not final and self._offset == end:
                    return None
                problem = f"the service kept {self._offset - start} of {end - start} bytes"
                continue
            problem = f"HTTP {response.status_code}: {first_line(Exception(response.text))}"
            if response.status_code not in _RETRYABLE_STATUS:
                raise BackupFailed(f"upload of {self.key} failed: {problem}")
        raise BackupFailed(f"upload of {self.key} failed after {MAX_ATTEMPTS} attempts: "
                           f"{problem}")

    def _query(self, total: str) -> dict[str, Any] | None:
        """Ask the session how much it holds; returns the object if it is already finalized."""
        response = self._http.put(self._url, headers={"Content-Range": f"bytes */{total}"},
                                  timeout=self._timeout)
        if response.status_code in (200, 201):
            resource: dict[str, Any] = response.json()
            self._offset = int(resource.get("size", self._offset))
            return resource
        if response.status_code == 308:
            self._offset = _persisted(response)
            return None
        if response.status_code in _RETRYABLE_STATUS:
            raise requests.ConnectionError(f"HTTP {response.status_code} on status query")
        raise BackupFailed(f"upload session of {self.key} is gone: HTTP {response.status_code}")


class GCSStore:
    """A bucket and base path on Google Cloud Storage or a GCS emulator."""

    min_part_size = MIN_PART_SIZE
    max_parts = MAX_PARTS
    max_delete_batch = MAX_DELETE_BATCH
    capabilities = Capabilities(lists_uploads=False, tags="object metadata",
                                checksum="CRC32C of the whole object",
                                engine_retries_parts=False)

    def __init__(self, config: StoreConfig, client: Client | None = None) -> None:
        """`client` lets a caller that holds one (Airflow's GCSHook) supply it; otherwise the
        library's default credentials are used."""
        self.bucket, self.base_path = parse_gcs_url(config.destination_url)
        self._config = config
        self._supplied = client is not None
        self._client = client if client is not None else _make_client()
        self._bucket = self._client.bucket(self.bucket)
        self._timeout: tuple[float, float] = (10.0, float(config.read_timeout))
        self._metadata = dict(config.tags) if config.tags else None
        # one batch at a time: a client collects the requests of one batch at a time
        self._deleter = BatchDeleter(f"the GCS endpoint of bucket {self.bucket}",
                                     MAX_DELETE_BATCH, self._delete_batch, self._delete_if_there)

    def _blob(self, key: str, lock: bool = False) -> Blob:
        """A blob to write: tags as metadata, the KMS key, and with `lock` on a locking store
        the object's retention (sent with the metadata when the object is created)."""
        blob = self._bucket.blob(key, kms_key_name=self._config.kms_key_name)
        if self._metadata:
            blob.metadata = self._metadata
        until = self._config.retain_until() if lock else None
        if until is not None:
            retention = blob.retention
            retention.mode = "Locked" if self._config.compliance_lock else "Unlocked"
            retention.retain_until_time = until
        return blob

    def check(self) -> None:
        """List at most one object under the base path: that needs only the object-list
        permission a backup needs anyway (`bucket.exists()` needs storage.buckets.get)."""
        for attempt in range(2):
            try:
                pages = self._client.list_blobs(
                    self._bucket, prefix=self.base_path or None, max_results=1,
                    timeout=(5.0, float(self._config.read_timeout)), retry=None,
                ).pages
                next(pages, None)
                break
            except api_exceptions.NotFound:
                raise BucketMissing(f"Bucket {self.bucket} does not exist") from None
            except _UNREACHABLE as exc:
                if attempt:
                    raise CloudConnectionError(
                        f"Can't connect to cloud provider: {first_line(exc)}") from None
                time.sleep(1)
            except api_exceptions.GoogleAPIError as exc:
                # Barman counts any service error here as a failed connection (exit 2)
                raise CloudConnectionError(
                    f"Can't connect to cloud provider: {first_line(exc)}") from None
        if self._config.lock_days:
            self._check_object_retention()

    def _check_object_retention(self) -> None:
        """BackupFailed unless the bucket has object retention enabled."""
        try:
            bucket = self._client.get_bucket(
                self.bucket, timeout=(5.0, float(self._config.read_timeout)), retry=None)
        except _UNREACHABLE as exc:
            raise CloudConnectionError(
                f"Can't connect to cloud provider: {first_line(exc)}") from None
        except api_exceptions.GoogleAPIError as exc:
            raise BackupFailed(
                f"cannot read the settings of bucket {self.bucket} to check that it has "
                f"object retention ({first_line(exc)}): --lock-days needs "
                "storage.buckets.get") from None
        if bucket.object_retention_mode != "Enabled":
            raise BackupFailed(
                f"bucket {self.bucket} does not have object retention enabled: --lock-days "
                "needs a bucket created with it (--enable-per-object-retention), or one it "
                "was enabled on later")

    def put(self, key: str, data: bytes, *, lock: bool = False) -> None:
        self._blob(key, lock).upload_from_string(
            data, content_type="application/octet-stream", timeout=self._timeout,
            retry=DEFAULT_RETRY,
        )

    def get(self, key: str) -> bytes:
        data: bytes = self._bucket.blob(key).download_as_bytes(timeout=self._timeout)
        return data

    def read_range(self, key: str, start: int, length: int) -> bytes:
        data: bytes = self._bucket.blob(key).download_as_bytes(
            start=start, end=start + length - 1, timeout=self._timeout)  # end is inclusive
        return data

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for blob in self._client.list_blobs(self._bucket, prefix=prefix, timeout=self._timeout):
            yield blob.name, int(blob.size or 0)

    def start_multipart(self, key: str, *, lock: bool = False) -> GCSResumableUpload:
        return GCSResumableUpload(self._blob(key, lock), key, self._timeout)

    def iter_object(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self._bucket.blob(key, chunk_size=chunk_size).open(
                "rb", timeout=self._timeout) as reader:
            while data := reader.read(chunk_size):
                yield data

    def delete(self, key: str) -> None:
        self._bucket.blob(key).delete(timeout=self._timeout, retry=DEFAULT_RETRY)

    def object_locks(self, keys: Iterable[str]) -> dict[str, ObjectLock]:
        """Each object's retention, its bucket retention policy's expiry (`retention
        expiration time`) and its temporary or event-based hold."""
        return read_locks(keys, self._object_lock)

    def _object_lock(self, key: str) -> ObjectLock | None:
        blob = self._bucket.get_blob(key, timeout=self._timeout, retry=DEFAULT_RETRY)
        if blob is None:
            return None
        retention = blob.retention
        dates = [(aware(when), mode) for when, mode in (
            (retention.retain_until_time, retention.mode),
            (blob.retention_expiration_time, "bucket retention policy")) if when is not None]
        hold = bool(blob.temporary_hold or blob.event_based_hold)
        if not dates and not hold:
            return None
        until, mode = max(dates) if dates else (None, None)
        return ObjectLock(until, mode, hold)

    def delete_many(self, keys: Iterable[str], batch_size: int | None = None) -> dict[str, str]:
        return self._deleter.delete(keys, batch_size)

    def _delete_if_there(self, key: str) -> None:
        with contextlib.suppress(api_exceptions.NotFound):
            self.delete(key)

    def _delete_batch(self, keys: Sequence[str]) -> dict[str, str]:
        """One batch request (multipart/mixed) of object deletes; its answers come back in
        the order of the keys."""
        try:
            with self._client.batch(raise_exception=False) as batch:
                for key in keys:
                    self._bucket.blob(key).delete(timeout=self._timeout, retry=None)
        except (api_exceptions.MethodNotImplemented, api_exceptions.MethodNotAllowed,
                api_exceptions.NotFound) as exc:
            # the batch request itself was refused: the endpoint has no batch API
            raise BulkDeleteRefused(first_line(exc)) from None
        except ValueError as exc:  # an answer that is not multipart: no batch API either
            raise BulkDeleteRefused(first_line(exc)) from None
        responses: Sequence[requests.Response] = batch._responses
        if len(responses) != len(keys):
            raise BackupFailed(f"a batch of {len(keys)} deletes had {len(responses)} answers")
        return {key: f"HTTP {response.status_code}: {first_line(response.text or '')}"
                for key, response in zip(keys, responses, strict=True)
                if not 200 <= response.status_code < 300 and response.status_code != 404}

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        """Resumable upload sessions cannot be listed; they expire by themselves after a week."""
        return iter(())

    def abort_upload(self, upload: Upload) -> None:
        """Cancel a resumable session: its `upload_id` is the session URL."""
        with requests.Session() as http:
            http.delete(upload.upload_id, timeout=self._timeout)

    def close(self) -> None:
        if not self._supplied:
            close = getattr(self._client, "close", None)
            if close is not None:
                close()
