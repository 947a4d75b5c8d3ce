"""The one interface every object store implements (pgBackRest's storage-layer shape).

The engine speaks only this protocol; each backend (S3, Azure, GCS) lives in its own module and
is imported lazily, so a database host needs only the SDK of the store it writes to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class StoreConfig:
    """Everything needed to open a store, minus secrets: credentials come from the environment,
    a profile, or (in Airflow) a connection hook, never from here. Safe to log and to put in XCom.
    """

    destination_url: str
    cloud_provider: str = "aws-s3"
    endpoint_url: str | None = None
    aws_profile: str | None = None
    read_timeout: int = 60
    encryption: str | None = None
    sse_kms_key_id: str | None = None
    tags: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    azure_credential: str | None = None  # azure-cli | managed-identity | default
    encryption_scope: str | None = None
    kms_key_name: str | None = None

    def to_dict(self) -> dict[str, object]:
        values = dataclasses.asdict(self)
        values["tags"] = [list(tag) for tag in self.tags]
        return values

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> StoreConfig:
        values = dict(data)
        values["tags"] = tuple(tuple(tag) for tag in values.get("tags") or ())  # type: ignore[attr-defined]
        return cls(**values)  # type: ignore[arg-type]


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

    def check(self) -> None:
        """Raise CloudConnectionError if the endpoint is unreachable, BucketMissing if the bucket
        does not exist."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under prefix."""
        ...

    def start_multipart(self, key: str) -> MultipartUpload: ...

    @property
    def min_part_size(self) -> int: ...

    @property
    def max_parts(self) -> int: ...

    def close(self) -> None: ...
