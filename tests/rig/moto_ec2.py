"""A real EC2 API on loopback: moto's server, for snapshot backups on AWS.

The runner and Barman reach it as they would reach AWS, over HTTP, pointed there only by
``AWS_ENDPOINT_URL_EC2`` (boto3 honours it); any access key works. Instances, volumes and
snapshots live in the server's memory until it stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from tests.rig.tools import free_port, register_cleanup, tail, unregister_cleanup

START_TIMEOUT_S = 30
REGION = "us-east-1"


@dataclass
class MotoEc2:
    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_file: Path
    region: str = REGION
    _image: str | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """What sends a boto3 client's EC2 calls here (S3 keeps its own endpoint)."""
        return {"AWS_ENDPOINT_URL_EC2": self.endpoint_url}

    def client(self) -> Any:
        return boto3.client(
            "ec2", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id="moto", aws_secret_access_key="moto",
        )

    def image(self) -> str:
        if self._image is None:
            self._image = str(self.client().describe_images(Owners=["amazon"])["Images"][0]
                              ["ImageId"])
        return self._image

    def instance(self, name: str) -> dict[str, Any]:
        """A running instance with that Name tag (its root volume is /dev/sda1)."""
        response = self.client().run_instances(
            ImageId=self.image(), MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": "Name", "Value": name}]}],
        )
        return response["Instances"][0]  # type: ignore[no-any-return]

    def volume(self, name: str, instance: dict[str, Any] | None = None, device: str = "",
               snapshot_id: str | None = None) -> str:
        """A volume with that Name tag, attached to `instance` as `device` if given."""
        zone = instance["Placement"]["AvailabilityZone"] if instance else f"{self.region}a"
        args: dict[str, Any] = {
            "Size": 10, "AvailabilityZone": zone,
            "TagSpecifications": [{"ResourceType": "volume",
                                   "Tags": [{"Key": "Name", "Value": name}]}],
        }
        if snapshot_id:
            args["SnapshotId"] = snapshot_id
        volume_id = str(self.client().create_volume(**args)["VolumeId"])
        if instance is not None:
            self.client().attach_volume(
                Device=device, InstanceId=instance["InstanceId"], VolumeId=volume_id
            )
        return volume_id

    def snapshots(self, volume_id: str) -> list[dict[str, Any]]:
        found = self.client().describe_snapshots(
            Filters=[{"Name": "volume-id", "Values": [volume_id]}]
        )["Snapshots"]
        return list(found)

    def stop(self) -> None:
        unregister_cleanup(self.stop)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_moto_ec2(log_file: Path) -> MotoEc2:
    """moto's server (the `moto[server]` extra) on a free loopback port."""
    port = free_port()
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = MotoEc2(f"http://127.0.0.1:{port}", process, log_file)
    register_cleanup(server.stop)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/", timeout=2):
                return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"moto server did not start on port {port}:\n{tail(log_file)}"
                ) from None
            time.sleep(0.1)
