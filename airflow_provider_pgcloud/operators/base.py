"""What every pgcloud operator shares: connection ids, backup options, the XCom shapes, assets."""

from __future__ import annotations

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
from ..runner import values as v
from ..runner.backup_info import check_backup_name
from ..runner.codecs import get_codec
from ..runner.steps import (
    DEFAULT_MAX_ARCHIVE_SIZE,
    DEFAULT_MIN_CHUNK_SIZE,
    BackupOptions,
    BackupState,
)
from ..runner.storage.base import store_options

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


STORE_OPTIONS: tuple[str, ...] = tuple(
    spec.name for spec, option in store_options() if not option.credential
)
"""The store options an operator takes, as keyword arguments named like StoreConfig's fields
(declared there; the credential options are the connections' business)."""


class BackupOptionsOperator(PgCloudBaseOperator):
    """The options of a backup, as barman-cloud-backup takes them, all templated.

    Values may be native or rendered text (`"{{ params.jobs }}"` renders as `"2"`); sizes use
    Barman's notation (`"8MB"`). `compression` is `none`, `gzip`, `bzip2`, `snappy`, `lz4` or
    `zstd`. The store options are keyword arguments named as in StoreConfig: `cloud_provider`
    (default aws-s3), `read_timeout`, `tags` (KEY,VALUE strings, pairs or a mapping: S3 object
    tags, Azure blob index tags, GCS metadata); `endpoint_url`, `encryption` and
    `sse_kms_key_id` for aws-s3, `encryption_scope` for azure-blob-storage, `kms_key_name` for
    google-cloud-storage; `lock_days` and `lock_mode` (immutable backups) for every store.
    """

    template_fields: Sequence[str] = (
        "destination_url", "server_name", "compression", "jobs", "max_archive_size",
        "min_chunk_size", "immediate_checkpoint", "backup_name", *STORE_OPTIONS,
    )

    def __init__(
        self,
        *,
        destination_url: str,
        server_name: str,
        postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
        compression: str | None = None,
        jobs: int | str = 2,
        max_archive_size: int | str = DEFAULT_MAX_ARCHIVE_SIZE,
        min_chunk_size: int | str = DEFAULT_MIN_CHUNK_SIZE,
        immediate_checkpoint: bool | str = False,
        backup_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        store = {name: kwargs.pop(name, None) for name in STORE_OPTIONS}
        super().__init__(**kwargs)
        for name, value in store.items():
            setattr(self, name, value)
        self.destination_url = destination_url
        self.server_name = server_name
        self.postgres_conn_id = postgres_conn_id
        self.compression = compression
        self.jobs = jobs
        self.max_archive_size = max_archive_size
        self.min_chunk_size = min_chunk_size
        self.immediate_checkpoint = immediate_checkpoint
        self.backup_name = backup_name

    def backup_options(self) -> BackupOptions:
        """The rendered fields as the engine's options; raises ValueError on bad input."""
        store = v.store_config(self.destination_url,
                               {name: getattr(self, name) for name in STORE_OPTIONS})
        compression = v.as_compression(self.compression)
        get_codec(compression)
        backup_name = v.optional_str(self.backup_name)
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
