"""Disk snapshot backups: their options (config.py), the provider interface and its checks
(providers.py), one module per cloud (aws.py, gcp.py, azure.py) and the host's mounts
(mounts.py)."""

from __future__ import annotations

from .config import (
    SnapshotConfig,
    SnapshotConfigError,
    SnapshotError,
    SnapshotPreconditionError,
    check_general,
    check_provider_options,
    config_from_values,
)
from .mounts import Mount, MountTable
from .providers import (
    SnapshotProvider,
    Volume,
    check_cluster_on_disks,
    find_volumes,
    open_provider,
    snapshot_name,
)

__all__ = [
    "Mount",
    "MountTable",
    "SnapshotConfig",
    "SnapshotConfigError",
    "SnapshotError",
    "SnapshotPreconditionError",
    "SnapshotProvider",
    "Volume",
    "check_cluster_on_disks",
    "check_general",
    "check_provider_options",
    "config_from_values",
    "find_volumes",
    "open_provider",
    "snapshot_name",
]
