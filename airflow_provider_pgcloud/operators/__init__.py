"""Airflow operators: thin shells over the engine's steps."""

from __future__ import annotations

from .. import _need_airflow  # noqa: F401  (first: a clear error without Airflow)

# isort: split

from .backup import (
    CHUNK_LABEL,
    StartBackupOperator,
    StopBackupAndUploadLabelOperator,
    TakeDiskSnapshotsOperator,
    UploadTablespaceChunksOperator,
)
from .base import DEFAULT_ASSET_ALIAS, STATE_KEY, backup_asset
from .drill import DEFAULT_DRILL_ALIAS, RestoreDrillOperator, drill_asset
from .retention import ApplyRetentionOperator
from .single import EndStreamedBackupOperator, PgCloudBackupOperator
from .verify import VerifyBackupOperator

__all__ = [
    "CHUNK_LABEL",
    "DEFAULT_ASSET_ALIAS",
    "DEFAULT_DRILL_ALIAS",
    "STATE_KEY",
    "ApplyRetentionOperator",
    "EndStreamedBackupOperator",
    "PgCloudBackupOperator",
    "RestoreDrillOperator",
    "StartBackupOperator",
    "StopBackupAndUploadLabelOperator",
    "TakeDiskSnapshotsOperator",
    "UploadTablespaceChunksOperator",
    "VerifyBackupOperator",
    "backup_asset",
    "drill_asset",
]
