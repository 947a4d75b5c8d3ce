"""EBS snapshots through the EC2 API (boto3), as Barman takes them.

Instances and volumes are named by ID or by their `Name` tag. The device an EBS volume is
attached as (`/dev/sdf`) is found on the host as Barman finds it from `/sys/block`: the same
name, the Xen rename (`/dev/xvdf`, `/dev/hdf` on paravirtual instances), or on Nitro instances
the NVMe block device whose serial is the volume ID (`vol0123...` for `vol-0123...`).
boto3 honours `AWS_ENDPOINT_URL_EC2` (and `AWS_ENDPOINT_URL`) for another EC2 endpoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from ..errors import first_line
from .config import LOCK_EXPIRATION_FORMAT, SnapshotConfigError, SnapshotError
from .providers import Volume, check_all_attached, snapshot_name

log = logging.getLogger("pgcloud")

SYS_BLOCK = "/sys/block"
ROOT_DEVICES = ("/dev/sda1", "/dev/xvda")
ALLOWED_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
WAITER_DELAY = 15


class InstanceNotFound(SnapshotError):
    pass




class AwsProvider:
    """Snapshots of EBS volumes attached to one EC2 instance.

    `client` is an EC2 client to use instead of one made from the profile and region;
    `sys_block` is where the host's block devices are listed.
    """

    name = "aws"

    def __init__(
        self,
        profile: str | None = None,
        region: str | None = None,
        await_timeout: int = 3600,
        lock_mode: str | None = None,
        lock_duration: int | None = None,
        lock_cool_off_period: int | None = None,
        lock_expiration_date: str | None = None,
        tags: Sequence[tuple[str, str]] = (),
        *,
        client: Any = None,
        sys_block: str = SYS_BLOCK,
    ) -> None:
        if client is None:
            import boto3
            import botocore.exceptions

            try:
                session = boto3.Session(profile_name=profile)
                region = region or session.region_name
                client = session.client("ec2", region_name=region)
            except botocore.exceptions.BotoCoreError as exc:
                raise SnapshotConfigError(first_line(exc)) from None
        self.client = client
        self.region = region or client.meta.region_name
        self.await_timeout = await_timeout
        self.lock_mode = lock_mode
        self.lock_duration = lock_duration
        self.lock_cool_off_period = lock_cool_off_period
        self.lock_expiration_date = lock_expiration_date
        self.tags = list(tags)
        self.sys_block = sys_block

    def _call(self, operation: str, **kwargs: Any) -> Any:
        import botocore.exceptions

        try:
            return getattr(self.client, operation)(**kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise SnapshotError(f"EC2 {operation} failed: {first_line(exc)}") from None

    # --- look-ups -------------------------------------------------------------------------

    def _instance(self, identifier: str) -> dict[str, Any]:
        """describe_instances of the instance with that ID or `Name` tag (not terminated)."""
        import botocore.exceptions

        state = {"Name": "instance-state-name", "Values": ALLOWED_STATES}
        response = None
        if identifier.startswith("i-"):
            try:
                response = self.client.describe_instances(
                    InstanceIds=[identifier], Filters=[state]
                )
            except botocore.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "InvalidInstanceID.NotFound":
                    raise InstanceNotFound(f"Cannot find instance {identifier}") from None
                if code != "InvalidInstanceID.Malformed":
                    raise SnapshotError(
                        f"EC2 describe_instances failed: {first_line(exc)}"
                    ) from None
        if response is None:
            response = self._call(
                "describe_instances",
                Filters=[{"Name": "tag:Name", "Values": [identifier]}, state],
            )
        reservations = response["Reservations"]
        if len(reservations) > 1:
            raise SnapshotError(
                f"Cannot find a unique EC2 reservation containing instance {identifier}"
            )
        if reservations and len(reservations[0]["Instances"]) > 1:
            raise SnapshotError(f"Cannot find a unique EC2 instance matching {identifier}")
        if reservations and reservations[0]["Instances"]:
            return reservations[0]["Instances"][0]  # type: ignore[no-any-return]
        raise InstanceNotFound(f"Cannot find instance {identifier}")

    def instance_exists(self, instance: str) -> bool:
        try:
            self._instance(instance)
        except InstanceNotFound:
            return False
        return True

    @staticmethod
    def _lookup(volumes: list[dict[str, Any]], identifier: str) -> dict[str, Any] | None:
        """A volume by ID, else by a unique `Name` tag."""
        found = [v for v in volumes if v["VolumeId"] == identifier] or [
            v for v in volumes
            if any(t["Key"] == "Name" and t["Value"] == identifier for t in v.get("Tags", []))
        ]
        if len(found) > 1:
            raise SnapshotError(
                f"Duplicate volumes found matching {identifier}: "
                + ", ".join(v["VolumeId"] for v in found)
            )
        return found[0] if found else None

    def host_devices(self, device_name: str, volume_id: str, virtualization: str | None
                     ) -> tuple[tuple[str, ...], str | None]:
        """The host's device for an EBS attachment, and why there is none if so."""
        if device_name in ROOT_DEVICES:
            return (), (f"'{device_name}' is a root volume. EBS volumes involved in the "
                        "snapshot backup must be non-root.")
        renamed_prefix = "/dev/hd" if virtualization == "paravirtual" else "/dev/xvd"
        try:
            blocks = sorted(os.listdir(self.sys_block))
        except OSError:
            blocks = []
        name = device_name
        for block in blocks:
            device = f"/dev/{block}"
            if name == device:
                break
            if name.startswith("/dev/sd") and name.replace("/dev/sd", renamed_prefix, 1) == device:
                name = device
                break
            serial_path = os.path.join(self.sys_block, block, "device", "serial")
            if "nvme" in block and os.path.exists(serial_path):
                try:
                    with open(serial_path, encoding="ascii", errors="replace") as handle:
                        serial = handle.read().strip()
                except OSError:
                    continue
                if serial.replace("vol", "vol-", 1) == volume_id:
                    name = device
                    break
        return (name,), None

    def attached_volumes(
        self, instance: str, disks: Sequence[str], fail_on_missing: bool = True
    ) -> dict[str, Volume]:
        meta = self._instance(instance)
        attached = self._call(
            "describe_volumes",
            Filters=[{"Name": "attachment.instance-id", "Values": [meta["InstanceId"]]}],
        )["Volumes"]
        volumes: dict[str, Volume] = {}
        for identifier in disks:
            volume = self._lookup(attached, identifier)
            if volume is None:
                continue
            attachment = next(
                (a for a in volume["Attachments"] if a["InstanceId"] == meta["InstanceId"]),
                None,
            )
            if attachment is None or attachment["Device"] == meta.get("RootDeviceName"):
                continue
            devices, problem = self.host_devices(
                attachment["Device"], volume["VolumeId"], meta.get("VirtualizationType")
            )
            volumes[identifier] = Volume(
                name=identifier, devices=devices, problem=problem,
                attrs={"volume_id": volume["VolumeId"], "device_name": attachment["Device"]},
            )
        if fail_on_missing:
            check_all_attached(instance, disks, volumes)
        return volumes

    # --- the snapshots --------------------------------------------------------------------

    def _lock(self, snapshot_id: str) -> None:
        args: dict[str, Any] = {"LockMode": self.lock_mode, "SnapshotId": snapshot_id}
        if self.lock_duration:
            args["LockDuration"] = self.lock_duration
        if self.lock_cool_off_period:
            args["CoolOffPeriod"] = self.lock_cool_off_period
        if self.lock_expiration_date:
            args["ExpirationDate"] = dt.datetime.strptime(
                self.lock_expiration_date, LOCK_EXPIRATION_FORMAT
            )
        response = self._call("lock_snapshot", **args)
        log.info("snapshot %s locked: %s", snapshot_id,
                 {k: str(v) for k, v in response.items() if k != "ResponseMetadata"})

    def take_snapshots(
        self, backup_id: str, instance: str, volumes: dict[str, Volume]
    ) -> dict[str, Any]:
        meta = self._instance(instance)
        mappings = meta.get("BlockDeviceMappings", [])
        outpost = meta.get("OutpostArn")
        if outpost and self.lock_mode:
            raise SnapshotError(
                f"Cannot use aws_snapshot_lock_mode with instance {instance}: it is attached "
                f"to Outpost {outpost}, and AWS does not support locking local EBS snapshots "
                "on Outposts"
            )
        snapshots = []
        owner = None
        for disk, volume in volumes.items():
            mapping = [m for m in mappings
                       if m.get("Ebs", {}).get("VolumeId") == volume.attrs["volume_id"]]
            if not mapping:
                raise SnapshotError(f"Disk {disk} not attached to instance {instance}")
            name = snapshot_name(disk, backup_id)
            log.info("taking snapshot %s of disk %s (%s)", name, disk, volume.attrs["volume_id"])
            tags = [{"Key": "Name", "Value": name}]
            tags += [{"Key": key, "Value": value} for key, value in self.tags]
            args: dict[str, Any] = {
                "TagSpecifications": [{"ResourceType": "snapshot", "Tags": tags}],
                "VolumeId": volume.attrs["volume_id"],
            }
            if outpost:
                args["OutpostArn"] = outpost
            response = self._call("create_snapshot", **args)
            if response.get("State") == "error":
                raise SnapshotError(f"Snapshot '{name}' failed: {response}")
            if self.lock_mode:
                self._lock(response["SnapshotId"])
            owner = response.get("OwnerId")
            snapshots.append({
                "mount": volume.mount_metadata(),
                "provider": {
                    "device_name": mapping[0]["DeviceName"],
                    "snapshot_id": response["SnapshotId"],
                    "snapshot_name": name,
                    "snapshot_lock_mode": self.lock_mode,
                },
            })
        ids = [s["provider"]["snapshot_id"] for s in snapshots]
        log.info("waiting for completion of snapshots: %s", ", ".join(ids))
        self._wait(ids)
        return {
            "provider": "aws",
            "provider_info": {"account_id": owner, "region": self.region},
            "snapshots": snapshots,
        }

    def _wait(self, snapshot_ids: list[str]) -> None:
        import botocore.exceptions

        attempts = max(math.ceil(self.await_timeout / WAITER_DELAY), 1)
        try:
            self.client.get_waiter("snapshot_completed").wait(
                SnapshotIds=snapshot_ids,
                WaiterConfig={"Delay": WAITER_DELAY, "MaxAttempts": attempts},
            )
        except botocore.exceptions.WaiterError as exc:
            raise SnapshotError(
                f"snapshots {', '.join(snapshot_ids)} did not complete: {first_line(exc)}"
            ) from None
