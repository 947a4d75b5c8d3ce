"""The provider interface behind aws.py, gcp.py and azure.py, and the checks on disks and mounts.

A snapshot backup takes no copy of the files: between pg_backup_start and pg_backup_stop each
named disk of the database host is snapshotted through the cloud's compute API, and only
`backup_label` and `backup.info` (with `snapshots_info`) go to the object store, in the shape
Barman's `barman-cloud-restore` and `barman-cloud-backup-delete` read. The provider modules
import their SDK only when opened, so a host needs only the one it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import SnapshotConfig, SnapshotError, SnapshotPreconditionError
from .mounts import Mount, MountTable

log = logging.getLogger("pgcloud")


@dataclass
class Volume:
    """A disk attached to the instance, as the compute API describes it, and where this host
    has it mounted once `resolve` has run."""

    name: str  # as given with --snapshot-disk
    devices: tuple[str, ...]  # the host's names for it, best first
    attrs: dict[str, Any] = field(default_factory=dict)  # the provider's own facts
    problem: str | None = None  # why it cannot be found on this host, if known already
    mount: Mount | None = None

    def resolve(self, mounts: MountTable) -> Mount:
        if self.problem:
            raise SnapshotError(self.problem)
        for device in self.devices:
            found = mounts.find_device(device)
            if found is not None:
                self.mount = found
                return found
        raise SnapshotError(
            f"Could not find device {' or '.join(self.devices) or self.name} at any mount point"
        )

    def mount_metadata(self) -> dict[str, Any]:
        """snapshots_info's `mount` entry, as Barman writes it."""
        return {
            "mount_options": self.mount.options if self.mount else None,
            "mount_point": self.mount.mount_point if self.mount else None,
        }


class SnapshotProvider(Protocol):
    """What a snapshot backup needs from a cloud's compute API."""

    name: str

    def instance_exists(self, instance: str) -> bool: ...

    def attached_volumes(
        self, instance: str, disks: Sequence[str], fail_on_missing: bool = True
    ) -> dict[str, Volume]:
        """The named disks attached to the instance, keyed by the name given; with
        `fail_on_missing`, raise SnapshotError if any is not attached."""
        ...

    def take_snapshots(
        self, backup_id: str, instance: str, volumes: dict[str, Volume]
    ) -> dict[str, Any]:
        """Snapshot every volume (named `<disk>-<backup_id lower-cased>`), wait until they are
        complete, and return `snapshots_info` exactly as Barman stores it."""
        ...


def open_provider(config: SnapshotConfig, client: Any = None) -> SnapshotProvider:
    """The provider for `config.cloud_provider`.

    `client` is the SDK client a caller already holds (an Airflow hook's, with a connection's
    credentials): an EC2 client, a `gcp.GcpClients`, or a ComputeManagementClient. Without
    one it is made from the environment (the SDK's default credential chain), as Barman does.
    """
    provider = config.provider
    if provider == "aws":
        from .aws import AwsProvider

        return AwsProvider(
            profile=config.aws_profile, region=config.aws_region,
            await_timeout=config.aws_await_snapshots_timeout,
            lock_mode=config.aws_snapshot_lock_mode,
            lock_duration=config.aws_snapshot_lock_duration,
            lock_cool_off_period=config.aws_snapshot_lock_cool_off_period,
            lock_expiration_date=config.aws_snapshot_lock_expiration_date,
            tags=config.tags, client=client,
        )
    if provider == "gcp":
        from .gcp import GcpProvider

        assert config.gcp_project is not None
        return GcpProvider(config.gcp_project, config.gcp_zone, clients=client)
    from .azure import AzureProvider

    assert config.azure_subscription_id is not None
    return AzureProvider(
        config.azure_subscription_id, config.azure_resource_group,
        credential=config.azure_credential, client=client,
    )


def snapshot_name(disk: str, backup_id: str) -> str:
    """Barman's name, which barman-cloud-backup-delete checks before deleting a snapshot."""
    return f"{disk}-{backup_id.lower()}"


def check_all_attached(
    instance: str, disks: Sequence[str], volumes: Mapping[str, Volume],
    lookup: Callable[[str], object] | None = None,
) -> None:
    """Raise Barman's "Disks not attached" error for any of `disks` missing from `volumes`.

    `lookup` (the provider's disk lookup) runs first on each missing disk, so that a disk
    that does not exist at all is reported as such rather than as unattached."""
    unattached = [disk for disk in disks if disk not in volumes]
    if lookup is not None:
        for disk in unattached:
            lookup(disk)
    if unattached:
        raise SnapshotError(f"Disks not attached to instance {instance}: {', '.join(unattached)}")


def find_volumes(
    provider: SnapshotProvider, instance: str, disks: Sequence[str], mounts: MountTable
) -> dict[str, Volume]:
    """Barman's preconditions: the instance exists, every disk is attached to it and mounted
    on this host. Returns the volumes with their mounts resolved."""
    if not provider.instance_exists(instance):
        raise SnapshotPreconditionError(f"Cannot find compute instance {instance}")
    volumes = provider.attached_volumes(instance, disks, fail_on_missing=False)
    missing = [disk for disk in disks if disk not in volumes]
    if missing:
        raise SnapshotPreconditionError(
            f"Cannot find disks attached to compute instance {instance}: {', '.join(missing)}"
        )
    unmounted = []
    for disk in disks:
        try:
            volumes[disk].resolve(mounts)
        except SnapshotError as exc:
            log.warning("Error resolving mount point: %s", exc)
            unmounted.append(disk)
    if unmounted:
        raise SnapshotPreconditionError(
            f"Cannot find disks mounted on compute instance {instance}: {', '.join(unmounted)}"
        )
    return volumes


def check_cluster_on_disks(
    volumes: dict[str, Volume], locations: Iterable[tuple[str, str]], mounts: MountTable
) -> None:
    """Every location (PGDATA, each tablespace) must be on a filesystem of a snapshotted
    disk, or the snapshots would not hold the cluster."""
    disk_mounts = [v.mount for v in volumes.values() if v.mount is not None]
    where = ", ".join(
        f"{name} at {v.mount.mount_point}" for name, v in volumes.items() if v.mount
    )
    for what, path in locations:
        mount = mounts.containing(path)
        if mount is None or not any(mounts.same_filesystem(mount, d) for d in disk_mounts):
            on = f" (it is on {mount.source} mounted at {mount.mount_point})" if mount else ""
            raise SnapshotPreconditionError(
                f"{what} {path} is not on any of the snapshotted disks ({where}){on}"
            )
