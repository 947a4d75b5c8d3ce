"""Azure Blob Storage, through azure-storage-blob: every archive is a block blob.

Parts map onto blocks: each part is staged with `stage_block` from the PartWriter's threads
(several in flight per blob), under a fixed-width block ID made from its part number, and the
blob appears only when `commit_block_list` names every block in order. So a failed or
abandoned upload never leaves a visible blob; its uncommitted blocks are dropped by the service
(after a week, or at the next commit of that name).

Destination URLs are read as barman-cloud-backup reads them:
  * `https://ACCOUNT.blob.core.windows.net/CONTAINER[/PATH]`;
  * any other host is an emulator (Azurite): `http://HOST:PORT/ACCOUNT/CONTAINER[/PATH]`.

Credentials, first found wins (Barman's order):
  1. `--azure-credential azure-cli|managed-identity|default` (azure-identity);
  2. `AZURE_STORAGE_CONNECTION_STRING` (its endpoint and account; the container and path come
     from the URL);
  3. `AZURE_STORAGE_SAS_TOKEN`;
  4. `AZURE_STORAGE_KEY` (the shared key of the URL's account);
  5. azure-identity's DefaultAzureCredential.
The SDK is imported when this module is, and this module only when the provider is chosen.

Immutability (`--lock-days`): a blob written with `lock` carries a blob-level immutability
policy (Unlocked or Locked, with its expiry) in the request that creates it (Put Blob, or Put
Block List for a blob written in blocks), so its version is protected from the moment it
exists. That takes a container with version-level immutability support (which needs blob
versioning on the account); `check()` reads the container's properties to refuse one without.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ..errors import (
    BackupFailed,
    BucketMissing,
    CloudConnectionError,
    InputError,
    PgCloudError,
    first_line,
    missing_module,
)
from .base import Capabilities, StoreConfig, Upload
from .deletes import BatchDeleter, BulkDeleteRefused
from .locks import ObjectLock, aware, read_locks

try:
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.storage.blob import (
        BlobBlock,
        BlobImmutabilityPolicyMode,
        BlobServiceClient,
        ContainerClient,
        ExponentialRetry,
        ImmutabilityPolicy,
        LinearRetry,
        PartialBatchErrorException,
    )
except ImportError as _exc:  # the `azure` extra is not installed
    raise missing_module("azure-storage-blob", "azure", _exc) from None

AZURE_BLOB_DOMAIN = "blob.core.windows.net"
MIN_PART_SIZE = 64 << 10  # Barman's MIN_CHUNK_SIZE for Azure
MAX_PARTS = 50_000  # blocks per committed blob
MAX_DELETE_BATCH = 256  # sub-requests per blob batch request
DELETE_WORKERS = 4  # batch requests in flight at once
_NO_BATCH_CODES = frozenset({"NotImplemented", "FeatureNotSupported", "UnsupportedHttpVerb"})
_BLOCK_ID_WIDTH = 5  # every block ID of a blob must have the same length: 00001 .. 50000

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
SAS_TOKEN_ENV = "AZURE_STORAGE_SAS_TOKEN"
ACCOUNT_KEY_ENV = "AZURE_STORAGE_KEY"


@dataclass(frozen=True)
class AzureLocation:
    """What a destination URL names."""

    account_url: str  # the service endpoint: https://ACCOUNT.blob... or http://HOST:PORT/ACCOUNT
    account_name: str
    container: str
    path: str
    emulated: bool


def parse_azure_url(url: str) -> AzureLocation:
    """Split an Azure destination URL into endpoint, account, container and path."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(
            f"invalid Azure destination URL {url!r}: expected "
            f"https://ACCOUNT.{AZURE_BLOB_DOMAIN}/CONTAINER[/PATH] or, for an emulator, "
            "http://HOST:PORT/ACCOUNT/CONTAINER[/PATH]"
        )
    segments = parsed.path.split("/")[1:]  # the path starts with "/"
    if parsed.hostname.endswith("." + AZURE_BLOB_DOMAIN):
        # Like Barman, always https: the host alone names the account.
        account = parsed.hostname.split(".", 1)[0]
        container, rest = (segments[0] if segments else ""), segments[1:]
        account_url, emulated = f"https://{parsed.netloc}", False
    else:
        account = segments[0] if segments else ""
        container, rest = (segments[1] if len(segments) > 1 else ""), segments[2:]
        account_url, emulated = f"{parsed.scheme}://{parsed.netloc}/{account}", True
    if not account or not container:
        what = "emulated storage URL" if emulated else "Azure Blob Storage URL"
        missing = "account or container" if emulated else "container"
        raise InputError(f"{what} {url!r} is malformed: no {missing}")
    return AzureLocation(account_url, account, container, "/".join(rest).strip("/"), emulated)


def block_id(number: int) -> str:
    """The block ID of part `number` (1-based): fixed width, so IDs sort like numbers."""
    if not 1 <= number <= MAX_PARTS:
        raise BackupFailed(f"block number {number} is outside 1..{MAX_PARTS}")
    return str(number).zfill(_BLOCK_ID_WIDTH)




def _identity_credential(kind: str) -> Any:
    try:
        from azure.identity import (
            AzureCliCredential,
            DefaultAzureCredential,
            ManagedIdentityCredential,
        )
    except ImportError as exc:
        raise missing_module("azure-identity", "azure", exc) from None
    classes: dict[str, Any] = {
        "azure-cli": AzureCliCredential,
        "managed-identity": ManagedIdentityCredential,
        "default": DefaultAzureCredential,
    }
    if kind not in classes:
        raise InputError(f"unsupported Azure credential {kind!r}: expected one of "
                         f"{', '.join(classes)}")
    return classes[kind]()


def _client_options(read_timeout: int, *, quick: bool) -> dict[str, Any]:
    """Timeouts and retries. `quick` is for -t: one retry, so a dead endpoint fails in seconds
    (the SDK's default waits 15 s and more between its retries)."""
    retry = (LinearRetry(backoff=1, retry_total=1, random_jitter_range=0) if quick
             else ExponentialRetry(initial_backoff=2, increment_base=2, retry_total=5,
                                   random_jitter_range=1))
    return {
        "retry_policy": retry,
        "connection_timeout": 5 if quick else 10,
        "read_timeout": read_timeout,
    }


def _container_client(location: AzureLocation, config: StoreConfig, *,
                      quick: bool = False) -> ContainerClient:
    options = _client_options(config.read_timeout, quick=quick)
    credential: Any
    if config.azure_credential:
        credential = _identity_credential(config.azure_credential)
    elif os.environ.get(CONNECTION_STRING_ENV):
        return ContainerClient.from_connection_string(
            os.environ[CONNECTION_STRING_ENV], location.container, **options
        )
    elif os.environ.get(SAS_TOKEN_ENV):
        credential = os.environ[SAS_TOKEN_ENV]
    elif os.environ.get(ACCOUNT_KEY_ENV):
        credential = AzureNamedKeyCredential(location.account_name, os.environ[ACCOUNT_KEY_ENV])
    elif location.emulated:
        raise PgCloudError(
            f"emulated storage needs {CONNECTION_STRING_ENV}, {SAS_TOKEN_ENV} or "
            f"{ACCOUNT_KEY_ENV} in the environment"
        )
    else:
        credential = _identity_credential("default")
    return ContainerClient(location.account_url, location.container, credential=credential,
                           **options)


class AzureBlockUpload:
    """One block blob written as staged blocks; `upload_part` is safe from several threads."""

    def __init__(self, container: ContainerClient, key: str, extra: dict[str, Any],
                 tags: dict[str, str] | None, locked: dict[str, Any] | None = None) -> None:
        self.key = key
        self._blob = container.get_blob_client(key)
        self._extra, self._tags = extra, tags
        self._locked = locked or {}  # the immutability policy, set by the commit
        self._staged: set[int] = set()
        self._lock = threading.Lock()

    def upload_part(self, number: int, data: bytes) -> None:
        # retry_total=0: one SDK attempt; the engine retries parts (runner/retry.py)
        self._blob.stage_block(block_id(number), data, length=len(data), retry_total=0,
                               **self._extra)
        with self._lock:
            self._staged.add(number)

    def complete(self) -> None:
        with self._lock:
            numbers = sorted(self._staged)
        if numbers != list(range(1, len(numbers) + 1)):
            # committing a list with a hole would silently store a truncated archive
            raise BackupFailed(f"{self.key}: blocks missing before commit")
        self._blob.commit_block_list([BlobBlock(block_id(n)) for n in numbers], tags=self._tags,
                                     **self._extra, **self._locked)

    def abort(self) -> None:
        """Drop the staged blocks when no blob was ever committed under this key.

        Uncommitted blocks are invisible and expire after a week, but are billed until then.
        Barman commits an empty block list and deletes the blob; we do the same only when no
        committed blob exists at the key (an earlier attempt's archive is never destroyed).
        The empty blob is visible for a moment, under a backup that is about to be FAILED.
        """
        with self._lock:
            staged, self._staged = bool(self._staged), set()
        if staged and not self._blob.exists():
            drop_uncommitted(self._blob)


def drop_uncommitted(blob: Any) -> None:
    """Discard a blob's uncommitted blocks: commit an empty block list, then delete it."""
    blob.commit_block_list([])
    blob.delete_blob()


class AzureStore:
    """A container and base path on Azure Blob Storage or Azurite."""

    min_part_size = MIN_PART_SIZE
    max_parts = MAX_PARTS
    max_delete_batch = MAX_DELETE_BATCH
    capabilities = Capabilities(lists_uploads=True, tags="blob index tags", checksum=None)

    def __init__(self, config: StoreConfig,
                 service_client: BlobServiceClient | None = None) -> None:
        """`service_client` lets a caller that holds one (Airflow's WasbHook) supply it;
        otherwise credentials come from --azure-credential or the environment."""
        self._config = config
        self._location = parse_azure_url(config.destination_url)
        self.bucket, self.base_path = self._location.container, self._location.path
        self._supplied = service_client is not None
        if service_client is not None:
            self._container = service_client.get_container_client(self.bucket)
        else:
            self._container = _container_client(self._location, config)
        self._extra: dict[str, Any] = {}
        if config.encryption_scope:
            self._extra["encryption_scope"] = config.encryption_scope
        self._tags = dict(config.tags) if config.tags else None
        self._deleter = BatchDeleter(f"the Azure container {self.bucket}", MAX_DELETE_BATCH,
                                     self._delete_batch, self._delete_if_there,
                                     workers=DELETE_WORKERS)

    def check(self) -> None:
        """List at most one blob under the base path (Barman's probe): it needs only list
        permission, which a container-scoped SAS token has and `exists()` does not."""
        container = (self._container if self._supplied
                     else _container_client(self._location, self._config, quick=True))
        try:
            pages = container.list_blobs(name_starts_with=self.base_path or None,
                                         results_per_page=1).by_page()
            next(pages, None)
            if self._config.lock_days:
                self._check_immutability(container)
        except ResourceNotFoundError as exc:
            code = getattr(exc, "error_code", None) or "not found"
            raise BucketMissing(f"Container {self.bucket} does not exist ({code})") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise CloudConnectionError(
                f"Can't connect to cloud provider: {first_line(exc)}") from None
        except ClientAuthenticationError as exc:
            # Barman counts any service error here as a failed connection (exit 2)
            raise CloudConnectionError(
                f"Can't connect to cloud provider: authentication failed: {first_line(exc)}"
            ) from None
        except HttpResponseError as exc:
            raise CloudConnectionError(
                f"Can't connect to cloud provider: {first_line(exc)}") from None
        finally:
            if container is not self._container:
                container.close()

    def _check_immutability(self, container: ContainerClient) -> None:
        """BackupFailed unless the container has version-level immutability support."""
        try:
            properties = container.get_container_properties()
        except HttpResponseError as exc:  # unreachable endpoints raise to check()
            raise BackupFailed(
                f"cannot read the properties of container {self.bucket} to check its "
                f"version-level immutability support ({first_line(exc)}): --lock-days needs "
                "read access to the container's properties") from None
        if not getattr(properties, "immutable_storage_with_versioning_enabled", False):
            raise BackupFailed(
                f"container {self.bucket} does not have version-level immutability support: "
                "--lock-days needs it enabled on the container (or on the storage account "
                "when the container is created), with blob versioning on")

    def _lock_arguments(self, lock: bool) -> dict[str, Any]:
        """The immutability policy of a write (nothing unless `lock` on a locking store)."""
        until = self._config.retain_until() if lock else None
        if until is None:
            return {}
        mode = (BlobImmutabilityPolicyMode.Locked if self._config.compliance_lock
                else BlobImmutabilityPolicyMode.Unlocked)
        return {"immutability_policy": ImmutabilityPolicy(expiry_time=until, policy_mode=mode)}

    def put(self, key: str, data: bytes, *, lock: bool = False) -> None:
        self._container.upload_blob(key, data, length=len(data), overwrite=True,
                                    tags=self._tags, **self._extra,
                                    **self._lock_arguments(lock))

    def get(self, key: str) -> bytes:
        return self._container.download_blob(key).readall()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        data: bytes = self._container.download_blob(key, offset=start, length=length).readall()
        return data

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for blob in self._container.list_blobs(name_starts_with=prefix):
            yield blob.name, int(blob.size)

    def start_multipart(self, key: str, *, lock: bool = False) -> AzureBlockUpload:
        return AzureBlockUpload(self._container, key, self._extra, self._tags,
                                self._lock_arguments(lock))

    def iter_object(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        yield from self._container.download_blob(key).chunks()

    def delete(self, key: str) -> None:
        self._container.delete_blob(key)

    def object_locks(self, keys: Iterable[str]) -> dict[str, ObjectLock]:
        """The immutability policy and legal hold of each blob's current version."""
        return read_locks(keys, self._object_lock)

    def _object_lock(self, key: str) -> ObjectLock | None:
        try:
            properties = self._container.get_blob_client(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        policy = properties.immutability_policy
        until = policy.expiry_time if policy is not None else None
        hold = bool(properties.has_legal_hold)
        if until is None and not hold:
            return None
        mode = getattr(policy, "policy_mode", None)
        mode = str(getattr(mode, "value", mode)) if mode else None  # an enum or its text
        return ObjectLock(aware(until) if until else None, mode, hold)

    def delete_many(self, keys: Iterable[str], batch_size: int | None = None) -> dict[str, str]:
        return self._deleter.delete(keys, batch_size)

    def _delete_if_there(self, key: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(key)

    def _delete_batch(self, keys: Sequence[str]) -> dict[str, str]:
        """One blob batch request; its answers come back in the order of the keys."""
        try:
            responses = list(self._container.delete_blobs(*keys, raise_on_any_failure=False))
        except PartialBatchErrorException as exc:
            responses = list(exc.parts or ())
        except HttpResponseError as exc:
            if exc.status_code in (405, 501) or getattr(exc, "error_code", None) \
                    in _NO_BATCH_CODES:
                raise BulkDeleteRefused(f"HTTP {exc.status_code}: {first_line(exc)}") \
                    from None
            raise
        if len(responses) != len(keys):
            raise BackupFailed(f"a blob batch of {len(keys)} deletes had {len(responses)} "
                               "answers")
        return {key: f"HTTP {response.status_code}: {response.reason}"
                for key, response in zip(keys, responses, strict=True)
                if response.status_code not in (200, 202, 204, 404)}

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        """Every blob under prefix that has only uncommitted blocks (no upload ID)."""
        committed = {blob.name for blob in self._container.list_blobs(name_starts_with=prefix)}
        for blob in self._container.list_blobs(name_starts_with=prefix,
                                               include=["uncommittedblobs"]):
            if blob.name not in committed:
                when = blob.creation_time or blob.last_modified or dt.datetime.now(dt.UTC)
                yield Upload(blob.name, "", when)

    def abort_upload(self, upload: Upload) -> None:
        blob = self._container.get_blob_client(upload.key)
        if not blob.exists():
            drop_uncommitted(blob)

    def close(self) -> None:
        if not self._supplied:
            self._container.close()
