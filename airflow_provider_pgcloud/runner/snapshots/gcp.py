"""Persistent disk snapshots through the Compute Engine API (google-cloud-compute).

A disk attached to an instance under the device name NAME is `/dev/disk/by-id/google-NAME` on
the instance (a udev symlink to the real block device), which is what the mount table is
searched for. Credentials come from Application Default Credentials, as for GCS.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlparse

from ..errors import first_line, missing_module
from .config import SnapshotError
from .providers import Volume, check_all_attached, snapshot_name

log = logging.getLogger("pgcloud")

DEVICE_PREFIX = "/dev/disk/by-id/google-"


class GcpClients(NamedTuple):
    """compute_v1's InstancesClient, DisksClient and SnapshotsClient (or look-alikes)."""

    instances: Any
    disks: Any
    snapshots: Any




def _disk_name(source: str) -> str:
    """`https://.../zones/Z/disks/NAME` -> `NAME`."""
    return posixpath.split(urlparse(source).path)[-1]


class GcpProvider:
    """Snapshots of persistent disks attached to one Compute Engine instance.

    `clients` replaces the compute_v1 clients made from the environment; `device_prefix` is
    where the host has its disks by device name.
    """

    name = "gcp"

    def __init__(
        self, project: str, zone: str | None, *, clients: GcpClients | None = None,
        device_prefix: str = DEVICE_PREFIX,
    ) -> None:
        if clients is None:
            try:
                from google.cloud import compute_v1
            except ImportError:
                raise missing_module("google-cloud-compute", "google") from None
            try:
                clients = GcpClients(
                    compute_v1.InstancesClient(), compute_v1.DisksClient(),
                    compute_v1.SnapshotsClient(),
                )
            except Exception as exc:  # no Application Default Credentials, typically
                raise SnapshotError(
                    f"cannot open the Compute Engine API: {first_line(exc)}"
                ) from None
        from google.api_core import exceptions

        self._not_found = exceptions.NotFound
        self._api_error = exceptions.GoogleAPIError
        self.project, self.zone = project, zone
        self.clients = clients
        self.device_prefix = device_prefix

    def _instance(self, instance: str) -> Any:
        try:
            return self.clients.instances.get(
                instance=instance, zone=self.zone, project=self.project
            )
        except self._not_found:
            raise SnapshotError(
                f"Cannot find instance with name {instance} in zone {self.zone} for project "
                f"{self.project}"
            ) from None
        except self._api_error as exc:
            raise SnapshotError(f"GCP instances.get failed: {first_line(exc)}") from None

    def _disk(self, disk: str) -> Any:
        try:
            return self.clients.disks.get(disk=disk, zone=self.zone, project=self.project)
        except self._not_found:
            raise SnapshotError(
                f"Cannot find disk with name {disk} in zone {self.zone} for project "
                f"{self.project}"
            ) from None
        except self._api_error as exc:
            raise SnapshotError(f"GCP disks.get failed: {first_line(exc)}") from None

    def instance_exists(self, instance: str) -> bool:
        try:
            self.clients.instances.get(instance=instance, zone=self.zone, project=self.project)
        except self._not_found:
            return False
        except self._api_error as exc:
            raise SnapshotError(f"GCP instances.get failed: {first_line(exc)}") from None
        return True

    def attached_volumes(
        self, instance: str, disks: Sequence[str], fail_on_missing: bool = True
    ) -> dict[str, Volume]:
        meta = self._instance(instance)
        volumes: dict[str, Volume] = {}
        for attached in meta.disks:
            name = _disk_name(attached.source)
            if disks and name not in disks:
                continue
            if not name:
                raise SnapshotError(
                    f"Could not parse disk name for source {attached.source} attached to "
                    f"instance {instance}"
                )
            self._disk(name)
            devices = (self.device_prefix + attached.device_name,) if attached.device_name \
                else ()
            volumes[name] = Volume(
                name=name, devices=devices, attrs={"device_name": attached.device_name},
                problem=None if devices else "Cannot resolve mounted volume: Device path unknown",
            )
        if fail_on_missing:
            check_all_attached(instance, disks, volumes, self._disk)
        return volumes

    def _snapshot(self, backup_id: str, disk: str) -> str:
        name = snapshot_name(disk, backup_id)
        log.info("taking snapshot %s of disk %s", name, disk)
        try:
            operation = self.clients.snapshots.insert({
                "project": self.project,
                "snapshot_resource": {
                    "name": name,
                    "source_disk": f"projects/{self.project}/zones/{self.zone}/disks/{disk}",
                },
            })
            operation.result()
        except self._api_error as exc:
            raise SnapshotError(f"Snapshot '{name}' failed: {first_line(exc)}") from None
        if operation.error_code:
            raise SnapshotError(
                f"Snapshot '{name}' failed with error code {operation.error_code}: "
                f"{operation.error_message}"
            )
        if operation.warnings:
            log.warning("warnings encountered during snapshot %s: %s", name, ", ".join(
                f"{w.code}:{w.message}" for w in operation.warnings
            ))
        log.info("snapshot %s completed", name)
        return name

    def take_snapshots(
        self, backup_id: str, instance: str, volumes: dict[str, Volume]
    ) -> dict[str, Any]:
        meta = self._instance(instance)
        snapshots = []
        for disk, volume in volumes.items():
            name = self._snapshot(backup_id, disk)
            attached = next(d for d in meta.disks if _disk_name(d.source) == disk)
            snapshots.append({
                "mount": volume.mount_metadata(),
                "provider": {
                    "device_name": attached.device_name,
                    "snapshot_name": name,
                    "snapshot_project": self.project,
                },
            })
        return {"provider": "gcp", "provider_info": {"project": self.project},
                "snapshots": snapshots}
