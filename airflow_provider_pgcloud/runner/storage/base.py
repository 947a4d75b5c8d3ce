"""The one interface every object store implements (pgBackRest's storage-layer shape).

The engine speaks only this protocol; each backend (S3, Azure, GCS) lives in its own module and
is imported lazily (registry.py), so a database host needs only the SDK of the store it uses.
What a backend can or cannot do is declared in its `capabilities`, never guessed.

`StoreConfig` is also where the store's options are declared: each field that a user may set
carries its command-line spelling and help (`option`), which the command line
(runner/cli/common.py) and the Airflow operators (operators/base.py) read. Adding a store option
is adding a field here and using it in the backend.

Retention locks (`--lock-days`, `--lock-mode`): a store opened with `lock_days` writes every
object that a caller marks final (`put(..., lock=True)`, `start_multipart(..., lock=True)`)
under the store's own write-once lock, in the same request that creates it: S3 Object Lock,
an Azure version-level immutability policy, GCS object retention. `check()` refuses a bucket
that cannot hold such locks, and `object_locks` reads them back for the deletes (locks.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from .locks import LOCK_MODES, ObjectLock
from .registry import PROVIDERS

OptionKind = Literal["text", "positive", "tags"]


@dataclass(frozen=True)
class StoreOption:
    """How a user sets one StoreConfig field: its flags, help and the help section it is in.

    `writes`: only commands that write a backup take it (encryption, tags), not verify or
    cleanup. `credential`: it says how to authenticate, which in Airflow a connection does,
    so operators do not take it.
    """

    flags: tuple[str, ...]
    help: str
    group: str = "general"  # the help section: "general", "backup" or a cloud provider
    kind: OptionKind = "text"
    choices: tuple[str, ...] | None = None
    writes: bool = False
    credential: bool = False


def option(default: Any, *flags: str, help: str, **declared: Any) -> Any:
    """A StoreConfig field that users set with `flags`."""
    return field(default=default, metadata={"option": StoreOption(flags, help, **declared)})


TAG_OPTION = StoreOption(("--tags",), "tags to be added to all uploaded files in cloud storage",
                         group="backup", kind="tags", writes=True)


@dataclass(frozen=True)
class StoreConfig:
    """Everything needed to open a store, minus secrets: credentials come from the environment,
    a profile, or (in Airflow) a connection hook, never from here. Safe to log and to put in XCom.
    """

    destination_url: str
    cloud_provider: str = option(
        "aws-s3", "--cloud-provider", help="the cloud provider to use as a storage backend",
        choices=PROVIDERS,
    )
    endpoint_url: str | None = option(
        None, "--endpoint-url", help="override default S3 endpoint URL with the given one",
        group="aws-s3",
    )
    aws_profile: str | None = option(
        None, "-P", "--aws-profile", "--profile", group="aws-s3", credential=True,
        help="profile name (e.g. INI section in the AWS credentials file); --profile is "
        "deprecated",
    )
    read_timeout: int = option(
        60, "--read-timeout", group="aws-s3", kind="positive",
        help="seconds until a timeout is raised when waiting to read from a connection "
        "(default: 60)",
    )
    encryption: str | None = option(
        None, "-e", "--encryption", group="aws-s3", choices=("AES256", "aws:kms"), writes=True,
        help="server-side encryption of the uploaded data in S3",
    )
    sse_kms_key_id: str | None = option(
        None, "--sse-kms-key-id", group="aws-s3", writes=True,
        help="the AWS KMS key ID used to encrypt the data; only with -e aws:kms",
    )
    tags: tuple[tuple[str, str], ...] = field(default=(), metadata={"option": TAG_OPTION})
    azure_credential: str | None = option(
        None, "--azure-credential", "--credential", group="azure-blob-storage",
        choices=("azure-cli", "managed-identity", "default"), credential=True,
        help="type of credential to use when authenticating with Azure; if omitted, "
        "credentials come from the environment (connection string, account key or SAS "
        "token); --credential is deprecated",
    )
    encryption_scope: str | None = option(
        None, "--encryption-scope", group="azure-blob-storage", writes=True,
        help="the name of an encryption scope defined in the Azure Blob Storage service, used "
        "to encrypt the data in Azure",
    )
    kms_key_name: str | None = option(
        None, "--kms-key-name", group="google-cloud-storage", writes=True,
        help="the name of the GCP KMS key used to encrypt the data in GCS",
    )
    lock_days: int | None = option(
        None, "--lock-days", group="backup", kind="positive", writes=True,
        help="store every object of the backup under a retention lock for this many days "
        "(S3 Object Lock, Azure version-level immutability policies, GCS object retention): "
        "until then nobody can delete or overwrite it, and pgcloud-backup-delete keeps the "
        "backup; the bucket or container must have the feature enabled",
    )
    lock_mode: str | None = option(
        None, "--lock-mode", group="backup", choices=LOCK_MODES, writes=True,
        help="with --lock-days: governance (S3 GOVERNANCE, Azure and GCS Unlocked: a user "
        "with the permission to bypass or change it can still remove the lock) or "
        "compliance (S3 COMPLIANCE, Azure and GCS Locked: nobody can shorten or remove it, "
        "not even the account's owner) (default: governance)",
    )

    def retain_until(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """Until when an object written `now` is locked (`lock_days` on, rounded up to the
        second, as the stores keep it); None when this store locks nothing."""
        if not self.lock_days:
            return None
        until = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(days=self.lock_days)
        return until.replace(microsecond=0) + dt.timedelta(seconds=1 if until.microsecond else 0)

    @property
    def compliance_lock(self) -> bool:
        """The lock may not be shortened or removed by anyone (`--lock-mode compliance`)."""
        return self.lock_mode == "compliance"

    def to_dict(self) -> dict[str, object]:
        values = dataclasses.asdict(self)
        values["tags"] = [list(tag) for tag in self.tags]
        return values

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> StoreConfig:
        values = dict(data)
        values["tags"] = tuple(tuple(tag) for tag in values.get("tags") or ())  # type: ignore[attr-defined]
        return cls(**values)  # type: ignore[arg-type]


def store_options() -> list[tuple[dataclasses.Field[Any], StoreOption]]:
    """The StoreConfig fields users set, in declaration order, with their declarations."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(StoreConfig)
            if "option" in f.metadata]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by it so the engine never probes.

    lists_uploads: `list_uploads` finds uploads in progress (S3 multipart uploads, Azure blobs
        with only uncommitted blocks); GCS resumable sessions cannot be listed and expire alone.
    tags: what `--tags` become in this store.
    checksum: what the store itself verifies of the bytes uploaded (None: only the transport).
    engine_retries_parts: the engine re-sends a failed part (runner/retry.py); False where the
        upload resumes a part itself (a GCS session cannot re-send a part from its start).
    accepts_buffers: `upload_part` takes the PartWriter's bytearray as it is; others get bytes.
    """

    lists_uploads: bool
    tags: str
    checksum: str | None
    engine_retries_parts: bool = True
    accepts_buffers: bool = False


class Upload(NamedTuple):
    """An upload in progress that never completed: `upload_id` is "" where the store has none."""

    key: str
    upload_id: str
    initiated: dt.datetime


class MultipartUpload(Protocol):
    """An object written in numbered parts; parts may be uploaded concurrently from threads."""

    key: str

    def upload_part(self, number: int, data: bytes) -> None: ...

    def complete(self) -> None: ...

    def abort(self) -> None: ...


class ObjectStore(Protocol):
    """A bucket (or container) plus the base path of the destination URL."""

    bucket: str
    base_path: str
    capabilities: Capabilities

    def check(self) -> None:
        """Raise CloudConnectionError if the endpoint is unreachable, BucketMissing if the bucket
        does not exist; with `lock_days`, BackupFailed if the bucket cannot lock objects."""
        ...

    def put(self, key: str, data: bytes, *, lock: bool = False) -> None:
        """Store `data` at `key`. `lock`: the object is final, so it is written under the
        store's retention lock when it has one (`lock_days`); without `lock`, never locked
        (an object that will be written again, such as a STARTED backup.info)."""
        ...

    def get(self, key: str) -> bytes: ...

    def iter_object(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes as a stream of chunks, in memory bounded by `chunk_size`."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from offset `start` (fewer at its end): restore
        fetches one large object as several ranges at once."""
        ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under prefix."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Iterable[str], batch_size: int | None = None) -> dict[str, str]:
        """Delete every key, in the store's bulk requests of at most `batch_size` keys (None:
        `max_delete_batch`; clamped to 1..max_delete_batch): S3 DeleteObjects, an Azure blob
        batch, a GCS batch request. A store that refuses bulk deletes gets one request per
        object from then on, with one warning logged. Returns {key: reason} for every key that
        could not be deleted; a key that is already gone is not an error."""
        ...

    @property
    def max_delete_batch(self) -> int:
        """The most keys one bulk delete request of this store takes (1000 S3, 256 Azure,
        100 GCS)."""
        ...

    def start_multipart(self, key: str, *, lock: bool = False) -> MultipartUpload:
        """An object written in parts; `lock` as for `put` (the lock is set when the upload
        starts, so it holds from the moment the object appears)."""
        ...

    def object_locks(self, keys: Iterable[str]) -> dict[str, ObjectLock]:
        """The locks the store holds on `keys` (expired ones too; keys without any, or that
        do not exist, are left out): retention dates, legal or temporary holds, and a bucket
        retention policy where the store reports one per object."""
        ...

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        """Uploads in progress under prefix; nothing where `capabilities.lists_uploads` is
        False."""
        ...

    def abort_upload(self, upload: Upload) -> None: ...

    @property
    def min_part_size(self) -> int: ...

    @property
    def max_parts(self) -> int: ...

    def close(self) -> None: ...
