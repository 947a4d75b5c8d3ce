"""Managed disk snapshots through the Azure Compute API (azure-mgmt-compute, azure-identity).

A data disk attached at LUN N is `/dev/disk/azure/scsi1/lunN` on the VM (a symlink the Azure
udev rules create), which is what the mount table is searched for. Snapshots are incremental
copies, as Barman makes them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..errors import first_line, missing_module
from .config import SnapshotConfigError, SnapshotError
from .providers import Volume, check_all_attached, snapshot_name

log = logging.getLogger("pgcloud")

LUN_PATH = "/dev/disk/azure/scsi1/lun{}"
CREDENTIALS = {
    "azure-cli": "AzureCliCredential",
    "managed-identity": "ManagedIdentityCredential",
    "default": "DefaultAzureCredential",
}




def make_client(subscription_id: str, credential: str | None) -> Any:
    """A ComputeManagementClient with the named credential (default: DefaultAzureCredential)."""
    try:
        from azure import identity
    except ImportError:
        raise missing_module("azure-identity", "azure") from None
    try:
        from azure.mgmt.compute import ComputeManagementClient
    except ImportError:
        raise missing_module("azure-mgmt-compute", "azure") from None
    if (credential or "default") not in CREDENTIALS:
        raise SnapshotConfigError(f"Unsupported credential: {credential}")
    credential_class = getattr(identity, CREDENTIALS[credential or "default"])
    return ComputeManagementClient(credential_class(), subscription_id)


class AzureProvider:
    """Snapshots of managed data disks attached to one Azure VM.

    `client` replaces the ComputeManagementClient made from the environment; `lun_path` is
    where the host has its data disks by LUN.
    """

    name = "azure"

    def __init__(
        self, subscription_id: str, resource_group: str | None, *,
        credential: str | None = None, client: Any = None, lun_path: str = LUN_PATH,
    ) -> None:
        self.client = client if client is not None else make_client(subscription_id, credential)
        from azure.core import exceptions

        self._not_found = exceptions.ResourceNotFoundError
        self._api_error = exceptions.AzureError
        self.subscription_id, self.resource_group = subscription_id, resource_group
        self.lun_path = lun_path

    def _where(self) -> str:
        return f"in resource group {self.resource_group} in subscription {self.subscription_id}"

    def _vm(self, instance: str) -> Any:
        try:
            return self.client.virtual_machines.get(self.resource_group, instance)
        except self._not_found:
            raise SnapshotError(f"Cannot find instance with name {instance} {self._where()}") \
                from None
        except self._api_error as exc:
            raise SnapshotError(f"Azure virtual_machines.get failed: {first_line(exc)}") \
                from None

    def _disk(self, disk: str) -> Any:
        try:
            return self.client.disks.get(self.resource_group, disk)
        except self._not_found:
            raise SnapshotError(f"Cannot find disk with name {disk} {self._where()}") from None
        except self._api_error as exc:
            raise SnapshotError(f"Azure disks.get failed: {first_line(exc)}") from None

    def instance_exists(self, instance: str) -> bool:
        try:
            self.client.virtual_machines.get(self.resource_group, instance)
        except self._not_found:
            return False
        except self._api_error as exc:
            raise SnapshotError(f"Azure virtual_machines.get failed: {first_line(exc)}") \
                from None
        return True

    def attached_volumes(
        self, instance: str, disks: Sequence[str], fail_on_missing: bool = True
    ) -> dict[str, Volume]:
        vm = self._vm(instance)
        volumes: dict[str, Volume] = {}
        for attached in vm.storage_profile.data_disks:
            if disks and attached.name not in disks:
                continue
            disk = self._disk(attached.name)
            lun = attached.lun
            volumes[attached.name] = Volume(
                name=attached.name,
                devices=(self.lun_path.format(lun),) if lun is not None else (),
                attrs={"lun": lun, "location": disk.location},
                problem=None if lun is not None else "Cannot resolve mounted volume: LUN unknown",
            )
        if fail_on_missing:
            check_all_attached(instance, disks, volumes, self._disk)
        return volumes

    def _snapshot(self, backup_id: str, disk: str, location: str, disk_id: str) -> str:
        name = snapshot_name(disk, backup_id)
        log.info("taking snapshot %s of disk %s", name, disk)
        try:
            poller = self.client.snapshots.begin_create_or_update(
                self.resource_group,
                name,
                {
                    "location": location,
                    "properties": {
                        "creationData": {"createOption": "Copy", "sourceUri": disk_id},
                        "incremental": True,
                    },
                },
            )
            poller.wait()
            status = str(poller.status())
            state = str(poller.result().provisioning_state)
        except self._api_error as exc:
            raise SnapshotError(f"Snapshot '{name}' failed: {first_line(exc)}") from None
        if status.lower() != "succeeded" or state.lower() != "succeeded":
            raise SnapshotError(
                f"Snapshot '{name}' failed with error code {status}: {state}"
            )
        log.info("snapshot %s completed", name)
        return name

    def take_snapshots(
        self, backup_id: str, instance: str, volumes: dict[str, Volume]
    ) -> dict[str, Any]:
        vm = self._vm(instance)
        snapshots = []
        for disk, volume in volumes.items():
            attached = [d for d in vm.storage_profile.data_disks if d.name == disk]
            if not attached:
                raise SnapshotError(f"Disk {disk} not attached to instance {instance}")
            location = volume.attrs["location"]
            name = self._snapshot(backup_id, disk, location, attached[0].managed_disk.id)
            snapshots.append({
                "mount": volume.mount_metadata(),
                "provider": {"location": location, "lun": attached[0].lun, "snapshot_name": name},
            })
        return {
            "provider": "azure",
            "provider_info": {
                "subscription_id": self.subscription_id,
                "resource_group": self.resource_group,
            },
            "snapshots": snapshots,
        }
