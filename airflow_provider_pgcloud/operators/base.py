"""What every pgcloud operator shares: connection ids, backup options, the XCom shapes, assets."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator, Context

from ..hooks import (
    DEFAULT_AWS_CONN_ID,
    DEFAULT_GCP_CONN_ID,
    DEFAULT_POSTGRES_CONN_ID,
    DEFAULT_WASB_CONN_ID,
    PgCloudHook,
)
from ..runner.backup_info import check_backup_name
from ..runner.codecs import get_codec
from ..runner.steps import DEFAULT_MIN_CHUNK_SIZE, BackupOptions, BackupState
from ..runner.storage import StoreConfig
from . import _values as v

STATE_KEY = "state"
"""XCom key of the started backup (BackupState without its chunk list)."""

DEFAULT_ASSET_ALIAS = "pgcloud_backups"
"""The AssetAlias a successful backup emits `Asset("<destination_url>/<server_name>")` through."""


def state_to_xcom(state: BackupState) -> dict[str, Any]:
    """The state for XCom, minus the chunks: they travel once, as the start task's return value."""
    data = state.to_dict()
    data.pop("chunks")
    return data


def state_from_xcom(state: dict[str, Any], chunks: Sequence[dict[str, Any]] = ()) -> BackupState:
    return BackupState.from_dict({**state, "chunks": list(chunks)})


def server_name_of(state: BackupState) -> str:
    """`<path>/<server>/base/<backup_id>` -> `<server>`."""
    return posixpath.basename(posixpath.dirname(posixpath.dirname(state.prefix)))


def backup_asset(destination_url: str, server_name: str) -> Asset:
    """The Asset a backup updates: one per destination and server, whatever the backup ID."""
    return Asset(f"{destination_url.rstrip('/')}/{server_name}")


class PgCloudBaseOperator(BaseOperator):
    """Cloud connection ids, shared by every pgcloud operator.

    Credentials come only from these Airflow connections (through the official provider
    hooks), never from operator arguments.
    """

    def __init__(
        self,
        *,
        aws_conn_id: str | None = DEFAULT_AWS_CONN_ID,
        wasb_conn_id: str = DEFAULT_WASB_CONN_ID,
        gcp_conn_id: str = DEFAULT_GCP_CONN_ID,
        asset_alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        if asset_alias:
            kwargs["outlets"] = [*(kwargs.get("outlets") or []), AssetAlias(asset_alias)]
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.wasb_conn_id = wasb_conn_id
        self.gcp_conn_id = gcp_conn_id
        self.asset_alias = asset_alias

    @cached_property
    def hook(self) -> PgCloudHook:
        return PgCloudHook(
            aws_conn_id=self.aws_conn_id, wasb_conn_id=self.wasb_conn_id,
            gcp_conn_id=self.gcp_conn_id,
        )

    def emit_backup_asset(
        self, context: Context, destination_url: str, server_name: str, backup_id: str
    ) -> None:
        """Record an asset event for the destination and server through `asset_alias`."""
        if not self.asset_alias:
            return
        asset = backup_asset(destination_url, server_name)
        context["outlet_events"][AssetAlias(self.asset_alias)].add(
            asset,
            extra={"destination_url": destination_url, "server_name": server_name,
                   "backup_id": backup_id},
        )
        self.log.info("asset %s updated with backup %s", asset.uri, backup_id)


class BackupOptionsOperator(PgCloudBaseOperator):
    """The options of a backup, as barman-cloud-backup takes them, all templated.

    Values may be native or rendered text (`"{{ params.jobs }}"` renders as `"2"`); sizes use
    Barman's notation (`"8MB"`). `compression` is `none`, `gzip`, `bzip2`, `snappy`, `lz4` or
    `zstd`. `tags` are KEY,VALUE strings, pairs or a mapping (S3 object tags, Azure blob index
    tags, GCS metadata). `endpoint_url`, `encryption` and `sse_kms_key_id` are for aws-s3,
    `encryption_scope` for azure-blob-storage, `kms_key_name` for google-cloud-storage.
    """

    template_fields: Sequence[str] = (
        "destination_url", "server_name", "cloud_provider", "compression", "jobs",
        "max_archive_size", "min_chunk_size", "immediate_checkpoint", "backup_name", "tags",
        "endpoint_url", "encryption", "sse_kms_key_id", "encryption_scope", "kms_key_name",
    )

    def __init__(
        self,
        *,
        destination_url: str,
        server_name: str,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        cloud_provider: str = "aws-s3",
        compression: str | None = None,
        jobs: int | str = 2,
        max_archive_size: int | str = "100GB",
        min_chunk_size: int | str = DEFAULT_MIN_CHUNK_SIZE,
        immediate_checkpoint: bool | str = False,
        backup_name: str | None = None,
        tags: Any = None,
        endpoint_url: str | None = None,
        encryption: str | None = None,
        sse_kms_key_id: str | None = None,
        encryption_scope: str | None = None,
        kms_key_name: str | None = None,
        read_timeout: int = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.destination_url = destination_url
        self.server_name = server_name
        self.postgres_conn_id = postgres_conn_id
        self.cloud_provider = cloud_provider
        self.compression = compression
        self.jobs = jobs
        self.max_archive_size = max_archive_size
        self.min_chunk_size = min_chunk_size
        self.immediate_checkpoint = immediate_checkpoint
        self.backup_name = backup_name
        self.tags = tags
        self.endpoint_url = endpoint_url
        self.encryption = encryption
        self.sse_kms_key_id = sse_kms_key_id
        self.encryption_scope = encryption_scope
        self.kms_key_name = kms_key_name
        self.read_timeout = read_timeout

    def backup_options(self) -> BackupOptions:
        """The rendered fields as the engine's options; raises ValueError on bad input."""
        cloud_provider = str(self.cloud_provider).strip()
        PgCloudHook.check_provider(cloud_provider)
        compression = v.as_compression(self.compression)
        get_codec(compression)
        backup_name = v.optional_str(self.backup_name)
        encryption = v.optional_str(self.encryption)
        if encryption not in (None, "AES256", "aws:kms"):
            raise ValueError(f"encryption must be AES256 or aws:kms, not {encryption!r}")
        store = StoreConfig(
            destination_url=str(self.destination_url).strip(),
            cloud_provider=cloud_provider,
            endpoint_url=v.optional_str(self.endpoint_url),
            read_timeout=int(self.read_timeout),
            encryption=encryption,
            sse_kms_key_id=v.optional_str(self.sse_kms_key_id),
            tags=v.as_tags(self.tags),
            encryption_scope=v.optional_str(self.encryption_scope),
            kms_key_name=v.optional_str(self.kms_key_name),
        )
        return BackupOptions(
            server_name=str(self.server_name).strip(),
            store=store,
            compression=compression,
            jobs=max(1, v.as_int(self.jobs, "jobs")),
            max_archive_size=v.as_size(self.max_archive_size, "max_archive_size"),
            min_chunk_size=v.as_size(self.min_chunk_size, "min_chunk_size"),
            immediate_checkpoint=v.as_bool(self.immediate_checkpoint, "immediate_checkpoint"),
            backup_name=check_backup_name(backup_name) if backup_name else None,
        )
