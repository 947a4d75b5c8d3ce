"""Disk snapshot backups (--snapshot-instance/--snapshot-disk), as Barman 3.20 takes them.

AWS runs end to end: the real command line against the session's PostgreSQL, an EC2 API served
over HTTP by moto on loopback (reached only through AWS_ENDPOINT_URL_EC2, as on a real host
through the default endpoint) and the S3 store. The moto volume is attached under the name of
the block device PGDATA's filesystem really is on in this host's mount table, so the runner
resolves it through the same mount table a cloud VM would have. Barman then reads the result:
its own parser, `barman-cloud-backup-list`, `barman-cloud-restore --snapshot-recovery-instance`
(which checks the recorded mount point and options against `findmnt` and fetches backup_label)
and `barman-cloud-backup-delete` (which deletes the EC2 snapshot and the objects).

GCP and Azure run the engine's flow in-process with fake SDK clients that record each call,
against the same PostgreSQL and S3 store; their disks are found on this host through symlinks
named like the cloud's udev links, pointing at the real device. Mount-table resolution is
checked against mounts the tests make (a loop-mounted ext4 and a bind mount) and against findmnt.
"""

from __future__ import annotations

import ast
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from azure.core.exceptions import ResourceNotFoundError
from google.api_core.exceptions import NotFound

from airflow_provider_pgcloud.runner import backup_info as bi
from airflow_provider_pgcloud.runner.errors import BackupFailed
from airflow_provider_pgcloud.runner.session import LocalSession
from airflow_provider_pgcloud.runner.snapshot_backup import run_snapshot_backup, take_disk_snapshots
from airflow_provider_pgcloud.runner.snapshots import (
    SnapshotConfig,
    SnapshotError,
    SnapshotPreconditionError,
    Volume,
    check_cluster_on_disks,
)
from airflow_provider_pgcloud.runner.snapshots.aws import AwsProvider
from airflow_provider_pgcloud.runner.snapshots.azure import AzureProvider
from airflow_provider_pgcloud.runner.snapshots.gcp import GcpClients, GcpProvider
from airflow_provider_pgcloud.runner.snapshots.mounts import (
    MountTable,
    merge_options,
    parse_mountinfo,
    parse_proc_mounts,
)
from airflow_provider_pgcloud.runner.steps import BackupOptions, BackupState
from airflow_provider_pgcloud.runner.storage import StoreConfig, open_store
from tests.rig.barman import backup_list, run_barman
from tests.rig.moto_ec2 import MotoEc2
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import barman_bin, make_workdir, register_cleanup, remove_workdir
from tests.runner_cli import run_runner

SERVER = "snapdb"

# Barman's own reading of a backup.info: its parser refuses unknown keys (SystemExit), and
# snapshots_info goes through its provider classes and back.
BARMAN_VIEW = """
import json, sys
import barman.output  # imported first: barman.infofile alone is a circular import
from barman.infofile import BackupInfo
info = BackupInfo(backup_id=sys.argv[2])
info.load(filename=sys.argv[1])
snap = info.snapshots_info
print(json.dumps({
    "status": info.status, "server_name": info.server_name, "error": info.error,
    "backup_name": info.backup_name, "backup_label": info.backup_label,
    "copy_stats": info.copy_stats, "end_xlog": info.end_xlog,
    "provider": snap.provider if snap else None,
    "snapshots_info": repr(snap.to_dict()) if snap else None,
    "identifiers": [s.identifier for s in snap.snapshots] if snap else [],
}))
"""

BARMAN_ROUND_TRIP = """
import json, sys
from barman.cloud_providers import snapshots_info_from_dict
print(json.dumps([repr(snapshots_info_from_dict(d).to_dict()) for d in json.loads(sys.argv[1])]))
"""


def barman_view(data: bytes, backup_id: str, tmp: Path) -> dict[str, Any]:
    path = tmp / f"backup-{uuid.uuid4().hex[:8]}.info"
    path.write_bytes(data)
    done = subprocess.run([str(barman_bin("python")), "-c", BARMAN_VIEW, str(path), backup_id],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def info_line(data: bytes, key: str) -> str:
    """The raw text after `key=` in a backup.info."""
    for line in data.decode().splitlines():
        if line.startswith(f"{key}="):
            return line.partition("=")[2]
    raise AssertionError(f"no {key} in backup.info")


def findmnt_options(device: str) -> str:
    out = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", device], capture_output=True,
                         text=True, check=True).stdout
    return out.splitlines()[0].strip()


def one_error_line(stderr: str, text: str) -> None:
    errors = [line for line in stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, stderr
    assert text in errors[0], stderr
    assert "Traceback" not in stderr


# ==================================================================================================
# fixtures
# ==================================================================================================

@pytest.fixture(scope="module")
def pgdata_device(pg: PgCluster) -> str:
    """The block device PGDATA's filesystem is on, as this host's mount table says."""
    mount = MountTable.read().containing(str(pg.pgdata))
    assert mount is not None and mount.source.startswith("/dev/"), (
        f"PGDATA {pg.pgdata} is not on a block device here ({mount}); the snapshot tests map "
        "a cloud disk to the device PGDATA really is on"
    )
    return mount.source


def s3_store(s3: S3Server, url: str) -> Any:
    session = boto3.Session(aws_access_key_id=s3.access_key,
                            aws_secret_access_key=s3.secret_key, region_name=s3.region)
    return open_store(StoreConfig(destination_url=url, endpoint_url=s3.endpoint_url),
                      session=session)


def backup_options(s3: S3Server, url: str, name: str | None = None) -> BackupOptions:
    return BackupOptions(
        server_name=SERVER, store=StoreConfig(destination_url=url, endpoint_url=s3.endpoint_url),
        immediate_checkpoint=True, backup_name=name,
    )


def only_backup(s3: S3Server, bucket: str, path: str) -> tuple[str, dict[str, int]]:
    objects = s3.list_objects(bucket, f"{path}/")
    ids = {key.split("/")[3] for key in objects}
    assert len(ids) == 1, objects
    return ids.pop(), objects


# ==================================================================================================
# AWS, end to end: the command line, moto's EC2 API, the S3 store, Barman reading it back
# ==================================================================================================

@dataclass
class AwsBackup:
    url: str
    bucket: str
    instance: dict[str, Any]
    disk: str
    volume_id: str
    result: subprocess.CompletedProcess[str]
    backup_id: str
    objects: dict[str, int]
    info: bytes


@pytest.fixture(scope="module")
def aws_backup(s3: S3Server, pg: PgCluster, moto: MotoEc2, pgdata_device: str) -> AwsBackup:
    bucket = f"snap-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    url = f"s3://{bucket}/fleet"
    tag = uuid.uuid4().hex[:8]
    instance = moto.instance(f"pg-host-{tag}")
    disk = f"pgdata-{tag}"
    volume_id = moto.volume(disk, instance, pgdata_device)
    result = run_runner(
        "--immediate-checkpoint", "--snapshot-instance", f"pg-host-{tag}",
        "--snapshot-disk", disk, "--aws-region", moto.region, "-n", "nightly-snap",
        url, SERVER, "--tags", "team,db",
        s3=s3, pg=pg, env=moto.env(),
    )
    assert result.returncode == 0, result.stderr
    backup_id, objects = only_backup(s3, bucket, "fleet")
    info = s3.get_object(bucket, f"fleet/{SERVER}/base/{backup_id}/backup.info")
    return AwsBackup(url, bucket, instance, disk, volume_id, result, backup_id, objects, info)


def test_aws_snapshot_backup_stores_only_label_and_info(aws_backup, s3, pg):
    prefix = f"fleet/{SERVER}/base/{aws_backup.backup_id}"
    assert set(aws_backup.objects) == {f"{prefix}/backup.info", f"{prefix}/backup_label"}
    label = s3.get_object(aws_backup.bucket, f"{prefix}/backup_label").decode()
    assert label == ast.literal_eval(info_line(aws_backup.info, "backup_label"))
    assert f"LABEL: Barman backup {SERVER} {aws_backup.backup_id}\n" in label
    assert "BACKUP METHOD: streamed" in label
    tags = s3.client().get_object_tagging(Bucket=aws_backup.bucket, Key=f"{prefix}/backup_label")
    assert {t["Key"]: t["Value"] for t in tags["TagSet"]} == {"team": "db"}
    assert not pg.in_backup()


def test_aws_snapshot_is_taken_and_recorded_as_barman_does(aws_backup, moto, pg, pgdata_device,
                                                           tmp_path):
    view = barman_view(aws_backup.info, aws_backup.backup_id, tmp_path)
    assert view["status"] == "DONE"
    assert view["server_name"] == SERVER  # the real name, unlike object-store backups
    assert view["backup_name"] == "nightly-snap"
    assert set(view["copy_stats"]) == {"copy_time", "total_time"}
    # Written exactly as Barman's classes write it back.
    assert info_line(aws_backup.info, "snapshots_info") == view["snapshots_info"]
    snapshots_info = ast.literal_eval(view["snapshots_info"])
    snapshot_name = f"{aws_backup.disk}-{aws_backup.backup_id.lower()}"
    mount = MountTable.read().containing(str(pg.pgdata))
    assert mount is not None
    [taken] = moto.snapshots(aws_backup.volume_id)
    assert snapshots_info == {
        "provider": "aws",
        "provider_info": {"account_id": taken["OwnerId"], "region": moto.region},
        "snapshots": [{
            "mount": {"mount_options": findmnt_options(pgdata_device),
                      "mount_point": mount.mount_point},
            "provider": {"device_name": pgdata_device, "snapshot_id": taken["SnapshotId"],
                         "snapshot_name": snapshot_name, "snapshot_lock_mode": None},
        }],
    }
    assert view["identifiers"] == [taken["SnapshotId"]]
    assert {t["Key"]: t["Value"] for t in taken["Tags"]} == {"Name": snapshot_name, "team": "db"}
    assert taken["State"] == "completed"


def test_barman_lists_the_snapshot_backup(aws_backup, s3):
    [listed] = [b for b in backup_list(s3, aws_backup.url, SERVER)
                if b["backup_id"] == aws_backup.backup_id]
    assert listed["status"] == "DONE"
    assert listed["backup_name"] == "nightly-snap"
    assert listed["snapshots_info"]["provider"] == "aws"
    shown = run_barman("barman-cloud-backup-show", "--format", "json", aws_backup.url, SERVER,
                       aws_backup.backup_id, s3=s3)
    assert aws_backup.disk in shown.stdout


def test_barman_restores_then_deletes_the_snapshot_backup(aws_backup, s3, moto, pgdata_device,
                                                          tmp_path):
    # Recovery host: a disk made from the snapshot, attached where the original was, so
    # Barman's findmnt sees it mounted at the recorded point with the recorded options.
    [taken] = moto.snapshots(aws_backup.volume_id)
    tag = uuid.uuid4().hex[:8]
    recovery = moto.instance(f"recovery-{tag}")
    moto.volume(f"restored-{tag}", recovery, pgdata_device, snapshot_id=taken["SnapshotId"])
    recovery_dir = tmp_path / "recovery"
    recovery_dir.mkdir()
    run_barman("barman-cloud-restore", "--snapshot-recovery-instance", f"recovery-{tag}",
               "--aws-region", moto.region, aws_backup.url, SERVER, aws_backup.backup_id,
               str(recovery_dir), s3=s3, env=moto.env())
    label = ast.literal_eval(info_line(aws_backup.info, "backup_label"))
    assert (recovery_dir / "backup_label").read_text() == label

    run_barman("barman-cloud-backup-delete", "-b", aws_backup.backup_id, aws_backup.url,
               SERVER, s3=s3, env=moto.env())
    assert moto.snapshots(aws_backup.volume_id) == []
    assert s3.list_objects(aws_backup.bucket, f"fleet/{SERVER}/base/") == {}


# ==================================================================================================
# options and their checks: Barman's messages and exit codes, one line, no traceback
# ==================================================================================================

BARMAN_FIRST_CHECKS = [
    # (args, exit code, message): checks Barman makes before connecting to anything.
    (["--snapshot-disk", "d1", "--snapshot-instance", "i1", "-z"], 4,
     "Compression options cannot be used with snapshot backups"),
    (["--snapshot-disk", "d1", "--zstd"], 4,
     "Compression options cannot be used with snapshot backups"),
    (["--snapshot-instance", "i1", "--aws-snapshot-lock-mode", "governance",
      "--aws-snapshot-lock-cool-off-period", "2"], 4,
     "'aws_snapshot_lock_mode' = 'governance' cannot be used with "
     "'aws_snapshot_lock_cool_off_period'"),
    (["--cloud-provider", "google-cloud-storage", "--kms-key-name", "k",
      "--snapshot-instance", "i1"], 4, "KMS key cannot be specified for snapshot backups"),
    (["--snapshot-instance", "i1", "--aws-snapshot-lock-duration", "0"], 3,
     "--aws-snapshot-lock-duration"),
    (["--snapshot-instance", "i1", "--aws-snapshot-lock-cool-off-period", "73"], 3,
     "--aws-snapshot-lock-cool-off-period"),
    (["--snapshot-instance", "i1", "--aws-snapshot-lock-duration", "1",
      "--aws-snapshot-lock-expiration-date", "2030-01-01T00:00:00.000Z"], 3,
     "not allowed with argument"),
    (["--snapshot-instance", "i1", "--aws-snapshot-lock-expiration-date", "2030-01-01"], 3,
     "--aws-snapshot-lock-expiration-date"),
    (["--snapshot-instance", "i1", "--aws-snapshot-lock-mode", "forever"], 3, "invalid choice"),
    (["--snapshot-instance", "i1", "--aws-await-snapshots-timeout", "0"], 3,
     "--aws-await-snapshots-timeout"),
]


@pytest.mark.parametrize(("args", "code", "message"), BARMAN_FIRST_CHECKS)
def test_option_checks_as_barman(args, code, message, s3):
    url = "gs://b/p" if "google-cloud-storage" in args else "s3://b/p"
    ours = run_runner(*args, url, SERVER)
    assert ours.returncode == code, ours.stderr
    one_error_line(ours.stderr, message)
    theirs = run_barman("barman-cloud-backup", *args, url, SERVER, s3=s3, check=False)
    assert theirs.returncode == code, theirs.stderr
    assert message in theirs.stderr


OUR_PROVIDER_CHECKS = [
    # Barman makes these once connected to PostgreSQL; the runner before it connects.
    (["--snapshot-instance", "i1"], "s3://b/p",
     "Incomplete options for snapshot backup - missing: snapshot_disks"),
    (["--snapshot-disk", "d1"], "s3://b/p",
     "Incomplete options for snapshot backup - missing: snapshot_instance"),
    (["--cloud-provider", "google-cloud-storage", "--snapshot-disk", "d1",
      "--snapshot-instance", "i1", "--gcp-zone", "z"], "gs://b/p",
     "--gcp-project option must be set for snapshot backups when cloud provider is "
     "google-cloud-storage"),
    (["--cloud-provider", "google-cloud-storage", "--snapshot-disk", "d1",
      "--snapshot-gcp-project", "p"], "gs://b/p",
     "Incomplete options for snapshot backup - missing: snapshot_instance, gcp_zone"),
    (["--cloud-provider", "azure-blob-storage", "--snapshot-instance", "i1",
      "--snapshot-disk", "d1"], "https://acct.blob.core.windows.net/c/p",
     "--azure-subscription-id option must be set for snapshot backups when cloud provider "
     "is azure-blob-storage"),
    (["--cloud-provider", "azure-blob-storage", "--snapshot-instance", "i1",
      "--snapshot-disk", "d1", "--azure-subscription-id", "sub"],
     "https://acct.blob.core.windows.net/c/p",
     "Incomplete options for snapshot backup - missing: azure_resource_group"),
]


@pytest.mark.parametrize(("args", "url", "message"), OUR_PROVIDER_CHECKS)
def test_provider_option_checks_exit_4(args, url, message):
    result = run_runner(*args, url, SERVER, "-h", "127.0.0.1", "-p", "1")
    assert result.returncode == 4, result.stderr
    one_error_line(result.stderr, message)


def test_incomplete_options_read_as_barmans(s3, pg, bucket):
    args = ["--snapshot-instance", "i1", f"s3://{bucket}/x", SERVER]
    ours = run_runner(*args, s3=s3, pg=pg)
    theirs = run_barman("barman-cloud-backup", *args, s3=s3, env=pg.env(), check=False)
    assert (ours.returncode, theirs.returncode) == (4, 4), ours.stderr + theirs.stderr
    message = "Incomplete options for snapshot backup - missing: snapshot_disks"
    one_error_line(ours.stderr, message)
    assert message in theirs.stderr


def test_test_mode_ignores_snapshot_options(s3, bucket):
    result = run_runner("-t", "--snapshot-instance", "i1", f"s3://{bucket}/x", SERVER, s3=s3)
    assert result.returncode == 0, result.stderr


# ==================================================================================================
# preconditions: found before the backup starts, so nothing is started or written (exit 4)
# ==================================================================================================

@pytest.mark.parametrize("case", ["no-instance", "not-attached", "not-mounted", "root-volume"])
def test_preconditions_exit_4_and_start_nothing(case, s3, pg, bucket, moto):
    tag = uuid.uuid4().hex[:8]
    instance = moto.instance(f"host-{tag}")
    if case == "not-attached":
        moto.volume(f"disk-{tag}")
        expected = f"Cannot find disks attached to compute instance host-{tag}: disk-{tag}"
    elif case == "not-mounted":
        moto.volume(f"disk-{tag}", instance, "/dev/sdz")
        expected = f"Cannot find disks mounted on compute instance host-{tag}: disk-{tag}"
    elif case == "root-volume":
        moto.volume(f"disk-{tag}", instance, "/dev/xvda")
        expected = f"Cannot find disks mounted on compute instance host-{tag}: disk-{tag}"
    else:
        expected = "Cannot find compute instance nowhere"
    host = "nowhere" if case == "no-instance" else f"host-{tag}"
    result = run_runner("--snapshot-instance", host, "--snapshot-disk", f"disk-{tag}",
                        f"s3://{bucket}/pre", SERVER, s3=s3, pg=pg, env=moto.env())
    assert result.returncode == 4, result.stderr
    one_error_line(result.stderr, expected)
    assert s3.list_objects(bucket) == {}
    assert not pg.in_backup()


@dataclass
class LoopDisk:
    device: str  # /dev/loopN
    mount_point: Path
    image: Path


@contextlib.contextmanager
def mounted(*argv: str) -> Iterator[None]:
    target = argv[-1]
    subprocess.run(["mount", *argv], check=True, capture_output=True, text=True)

    def unmount() -> None:
        subprocess.run(["umount", target], check=False, capture_output=True)

    register_cleanup(unmount)
    try:
        yield
    finally:
        unmount()


@pytest.fixture(scope="module")
def loop_disk() -> Iterator[LoopDisk]:
    """A real ext4 filesystem on a loop device, mounted with noatime under /tmp."""
    workdir = make_workdir("loopdisk")
    image, target = workdir / "disk.img", workdir / "mnt"
    target.mkdir()
    with image.open("wb") as handle:
        handle.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    try:
        with mounted("-o", "loop,noatime", str(image), str(target)):
            table = MountTable.read()
            [mount] = [m for m in table.mounts if m.mount_point == str(target)]
            yield LoopDisk(mount.source, target, image)
    finally:
        remove_workdir(workdir)


def test_pgdata_must_be_on_a_snapshotted_disk(s3, pg, bucket, moto, loop_disk):
    tag = uuid.uuid4().hex[:8]
    instance = moto.instance(f"host-{tag}")
    moto.volume(f"other-{tag}", instance, loop_disk.device)
    result = run_runner("--snapshot-instance", f"host-{tag}", "--snapshot-disk", f"other-{tag}",
                        f"s3://{bucket}/pre", SERVER, s3=s3, pg=pg, env=moto.env())
    assert result.returncode == 4, result.stderr
    one_error_line(result.stderr, f"PGDATA {pg.pgdata} is not on any of the snapshotted disks "
                                  f"(other-{tag} at {loop_disk.mount_point})")
    assert s3.list_objects(bucket) == {}
    assert not pg.in_backup()


def test_every_tablespace_must_be_on_a_snapshotted_disk(loop_disk):
    table = MountTable.read()
    loop = Volume("loop", (loop_disk.device,))
    loop.resolve(table)
    inside = str(loop_disk.mount_point / "tbs")
    check_cluster_on_disks({"loop": loop}, [("tablespace t1", inside)], table)
    with pytest.raises(SnapshotPreconditionError, match="tablespace t2 /tmp is not on any"):
        check_cluster_on_disks({"loop": loop}, [("tablespace t1", inside),
                                                ("tablespace t2", "/tmp")], table)


# ==================================================================================================
# failures once started: backup.info FAILED (with the snapshots if they were taken), exit 1
# ==================================================================================================

class StopFails(LocalSession):
    def stop(self, restore_point: str) -> Any:
        raise BackupFailed("the archiver is stuck")


def test_failure_after_the_snapshots_records_them_for_delete(s3, pg, bucket, moto, pgdata_device,
                                                             tmp_path):
    tag = uuid.uuid4().hex[:8]
    instance = moto.instance(f"host-{tag}")
    volume_id = moto.volume(f"disk-{tag}", instance, pgdata_device)
    url = f"s3://{bucket}/fail"
    config = SnapshotConfig(cloud_provider="aws-s3", instance=f"host-{tag}",
                            disks=(f"disk-{tag}",), aws_region=moto.region)
    provider = AwsProvider(region=moto.region, client=moto.client())
    with pytest.raises(BackupFailed, match="the archiver is stuck"):
        run_snapshot_backup(backup_options(s3, url, "broken"), config,
                            session=StopFails(pg.dsn(), password=pg.password),
                            store=s3_store(s3, url), provider=provider)
    backup_id, objects = only_backup(s3, bucket, "fail")
    assert list(objects) == [f"fail/{SERVER}/base/{backup_id}/backup.info"]
    view = barman_view(s3.get_object(bucket, next(iter(objects))), backup_id, tmp_path)
    assert view["status"] == "FAILED"
    assert view["error"] == "failure stopping the backup (the archiver is stuck)"
    assert view["backup_name"] == "broken"
    [taken] = moto.snapshots(volume_id)
    assert view["identifiers"] == [taken["SnapshotId"]]
    assert not pg.in_backup()
    # so barman-cloud-backup-delete cleans up the snapshot of a failed backup too
    run_barman("barman-cloud-backup-delete", "-b", backup_id, url, SERVER, s3=s3,
               env=moto.env())
    assert moto.snapshots(volume_id) == []


def test_snapshot_failure_fails_the_backup(s3, pg, bucket, moto, pgdata_device, tmp_path):
    class Refusing(AwsProvider):
        def take_snapshots(self, backup_id: str, instance: str,
                           volumes: dict[str, Volume]) -> dict[str, Any]:
            raise SnapshotError("EC2 create_snapshot failed: SnapshotLimitExceeded")

    tag = uuid.uuid4().hex[:8]
    moto.volume(f"disk-{tag}", moto.instance(f"host-{tag}"), pgdata_device)
    url = f"s3://{bucket}/fail"
    config = SnapshotConfig(cloud_provider="aws-s3", instance=f"host-{tag}",
                            disks=(f"disk-{tag}",))
    with pytest.raises(BackupFailed):
        run_snapshot_backup(backup_options(s3, url), config,
                            session=LocalSession(pg.dsn(), password=pg.password),
                            store=s3_store(s3, url),
                            provider=Refusing(region=moto.region, client=moto.client()))
    backup_id, objects = only_backup(s3, bucket, "fail")
    view = barman_view(s3.get_object(bucket, next(iter(objects))), backup_id, tmp_path)
    assert view["status"] == "FAILED"
    assert view["error"] == ("failure taking disk snapshots (EC2 create_snapshot failed: "
                             "SnapshotLimitExceeded)")
    assert view["snapshots_info"] is None
    assert not pg.in_backup()


# ==================================================================================================
# AWS details: snapshot lock and tags, the device names EBS volumes get on a host
# ==================================================================================================

class LockRecorder:
    """moto's EC2 client, plus lock_snapshot (which moto does not implement)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.locks: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def lock_snapshot(self, **kwargs: Any) -> dict[str, Any]:
        self.locks.append(kwargs)
        return {"SnapshotId": kwargs["SnapshotId"], "LockState": kwargs["LockMode"]}


def test_aws_lock_and_tags(moto, loop_disk):
    tag = uuid.uuid4().hex[:8]
    instance = moto.instance(f"host-{tag}")
    volume_id = moto.volume(f"disk-{tag}", instance, loop_disk.device)
    client = LockRecorder(moto.client())
    provider = AwsProvider(region=moto.region, lock_mode="compliance", lock_duration=7,
                           lock_cool_off_period=2, tags=[("k1", "v1")], client=client)
    volumes = provider.attached_volumes(instance["InstanceId"], [volume_id])
    volumes[volume_id].resolve(MountTable.read())
    info = provider.take_snapshots("20300101T000000", instance["InstanceId"], volumes)
    [taken] = moto.snapshots(volume_id)
    assert client.locks == [{"LockMode": "compliance", "SnapshotId": taken["SnapshotId"],
                             "LockDuration": 7, "CoolOffPeriod": 2}]
    assert {t["Key"]: t["Value"] for t in taken["Tags"]} == {
        "Name": f"{volume_id}-20300101t000000", "k1": "v1"}
    assert info["snapshots"][0] == {
        "mount": {"mount_options": "rw,noatime", "mount_point": str(loop_disk.mount_point)},
        "provider": {"device_name": loop_disk.device, "snapshot_id": taken["SnapshotId"],
                     "snapshot_name": f"{volume_id}-20300101t000000",
                     "snapshot_lock_mode": "compliance"},
    }


def test_aws_device_names_on_the_host(tmp_path):
    sys_block = tmp_path / "block"
    for block in ("loop0", "xvdf", "nvme0n1", "nvme1n1", "sdg"):
        (sys_block / block / "device").mkdir(parents=True)
    (sys_block / "nvme0n1" / "device" / "serial").write_text("vol0aaaaaaaaaaaaaaaa  \n")
    (sys_block / "nvme1n1" / "device" / "serial").write_text("vol0123456789abcdef0\n")
    provider = AwsProvider(region="us-east-1", client=SimpleNamespace(), sys_block=str(sys_block))
    # the same name, the Xen rename, the Nitro NVMe device whose serial is the volume ID
    assert provider.host_devices("/dev/sdg", "vol-1", "hvm") == (("/dev/sdg",), None)
    assert provider.host_devices("/dev/sdf", "vol-1", "hvm") == (("/dev/xvdf",), None)
    assert provider.host_devices("/dev/sdh", "vol-0123456789abcdef0", "hvm") == \
        (("/dev/nvme1n1",), None)
    assert provider.host_devices("/dev/sdf", "vol-1", "paravirtual") == (("/dev/sdf",), None)
    devices, problem = provider.host_devices("/dev/xvda", "vol-1", "hvm")
    assert devices == () and problem is not None and "root volume" in problem


# ==================================================================================================
# GCP and Azure through fake SDK clients, the rest real
# ==================================================================================================

class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []


class FakeGcp(Recorder):
    """compute_v1's three clients: one instance with attached disks (name -> device name)."""

    def __init__(self, project: str, zone: str, instance: str, disks: dict[str, str]) -> None:
        super().__init__()
        self.project, self.zone, self.instance, self.disks = project, zone, instance, disks
        self.clients = GcpClients(
            SimpleNamespace(get=self._get_instance), SimpleNamespace(get=self._get_disk),
            SimpleNamespace(insert=self._insert),
        )

    def _source(self, disk: str) -> str:
        return (f"https://www.googleapis.com/compute/v1/projects/{self.project}/zones/"
                f"{self.zone}/disks/{disk}")

    def _get_instance(self, *, instance: str, zone: str, project: str) -> Any:
        self.calls.append(("instances.get", (instance, zone, project)))
        if instance != self.instance:
            raise NotFound(f"instance {instance}")
        return SimpleNamespace(disks=[
            SimpleNamespace(source=self._source("boot"), device_name="persistent-disk-0"),
            *(SimpleNamespace(source=self._source(name), device_name=device)
              for name, device in self.disks.items()),
        ])

    def _get_disk(self, *, disk: str, zone: str, project: str) -> Any:
        self.calls.append(("disks.get", (disk, zone, project)))
        return SimpleNamespace(source_snapshot=None)

    def _insert(self, request: dict[str, Any]) -> Any:
        self.calls.append(("snapshots.insert", request))
        return SimpleNamespace(result=lambda: None, error_code=None, error_message=None,
                               warnings=[])


class FakeAzure(Recorder):
    """ComputeManagementClient: one VM with data disks (name -> lun)."""

    def __init__(self, resource_group: str, vm: str, disks: dict[str, int]) -> None:
        super().__init__()
        self.resource_group, self.vm, self.disks = resource_group, vm, disks
        self.virtual_machines = SimpleNamespace(get=self._get_vm)
        self.disks_ops = SimpleNamespace(get=self._get_disk)
        self.snapshots = SimpleNamespace(begin_create_or_update=self._snapshot)

    def _get_vm(self, resource_group: str, name: str) -> Any:
        self.calls.append(("virtual_machines.get", (resource_group, name)))
        if name != self.vm:
            raise ResourceNotFoundError(f"vm {name}")
        return SimpleNamespace(storage_profile=SimpleNamespace(data_disks=[
            SimpleNamespace(name=disk, lun=lun, managed_disk=SimpleNamespace(
                id=f"/subscriptions/sub-1/resourceGroups/{resource_group}/providers/"
                   f"Microsoft.Compute/disks/{disk}"))
            for disk, lun in self.disks.items()
        ]))

    def _get_disk(self, resource_group: str, name: str) -> Any:
        self.calls.append(("disks.get", (resource_group, name)))
        return SimpleNamespace(name=name, location="uksouth")

    def _snapshot(self, resource_group: str, name: str, body: dict[str, Any]) -> Any:
        self.calls.append(("snapshots.begin_create_or_update", (resource_group, name, body)))
        return SimpleNamespace(wait=lambda: None, status=lambda: "Succeeded",
                               result=lambda: SimpleNamespace(provisioning_state="Succeeded"))


def fake_azure_client(fake: FakeAzure) -> Any:
    return SimpleNamespace(virtual_machines=fake.virtual_machines, disks=fake.disks_ops,
                           snapshots=fake.snapshots)


def run_in_process(s3: S3Server, pg: PgCluster, url: str, config: SnapshotConfig,
                   provider: Any) -> None:
    run_snapshot_backup(backup_options(s3, url), config,
                        session=LocalSession(pg.dsn(), password=pg.password),
                        store=s3_store(s3, url), provider=provider)


def test_gcp_snapshot_backup_with_fake_compute_clients(s3, pg, bucket, pgdata_device, tmp_path):
    # /dev/disk/by-id/google-<device name> is a udev symlink to the disk's block device.
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "google-pgdata").symlink_to(pgdata_device)
    fake = FakeGcp("proj-1", "europe-west2-b", "pg-vm", {"pg-disk": "pgdata"})
    provider = GcpProvider("proj-1", "europe-west2-b", clients=fake.clients,
                           device_prefix=f"{by_id}/google-")
    config = SnapshotConfig(cloud_provider="google-cloud-storage", instance="pg-vm",
                            disks=("pg-disk",), gcp_project="proj-1", gcp_zone="europe-west2-b")
    url = f"s3://{bucket}/gcp"
    run_in_process(s3, pg, url, config, provider)

    backup_id, objects = only_backup(s3, bucket, "gcp")
    assert sorted(k.rsplit("/", 1)[1] for k in objects) == ["backup.info", "backup_label"]
    inserts = [args for name, args in fake.calls if name == "snapshots.insert"]
    assert inserts == [{"project": "proj-1", "snapshot_resource": {
        "name": f"pg-disk-{backup_id.lower()}",
        "source_disk": "projects/proj-1/zones/europe-west2-b/disks/pg-disk"}}]
    info = s3.get_object(bucket, f"gcp/{SERVER}/base/{backup_id}/backup.info")
    view = barman_view(info, backup_id, tmp_path)
    assert view["status"] == "DONE" and view["provider"] == "gcp"
    assert info_line(info, "snapshots_info") == view["snapshots_info"]
    mount = MountTable.read().containing(str(pg.pgdata))
    assert mount is not None
    assert ast.literal_eval(view["snapshots_info"]) == {
        "provider": "gcp", "provider_info": {"project": "proj-1"},
        "snapshots": [{"mount": {"mount_options": findmnt_options(pgdata_device),
                                 "mount_point": mount.mount_point},
                       "provider": {"device_name": "pgdata",
                                    "snapshot_name": f"pg-disk-{backup_id.lower()}",
                                    "snapshot_project": "proj-1"}}],
    }
    [listed] = backup_list(s3, url, SERVER)
    assert listed["status"] == "DONE" and listed["snapshots_info"]["provider"] == "gcp"
    assert not pg.in_backup()


def test_gcp_preconditions_with_fake_compute_clients(s3, pg, bucket):
    fake = FakeGcp("proj-1", "z", "pg-vm", {"pg-disk": "pgdata"})
    config = SnapshotConfig(cloud_provider="google-cloud-storage", instance="other-vm",
                            disks=("pg-disk",), gcp_project="proj-1", gcp_zone="z")
    provider = GcpProvider("proj-1", "z", clients=fake.clients)
    with pytest.raises(SnapshotPreconditionError, match="Cannot find compute instance other-vm"):
        run_in_process(s3, pg, f"s3://{bucket}/gcp", config, provider)
    config = SnapshotConfig(cloud_provider="google-cloud-storage", instance="pg-vm",
                            disks=("pg-disk", "logs"), gcp_project="proj-1", gcp_zone="z")
    with pytest.raises(SnapshotPreconditionError,
                       match="Cannot find disks attached to compute instance pg-vm: logs"):
        run_in_process(s3, pg, f"s3://{bucket}/gcp", config, provider)
    assert s3.list_objects(bucket) == {}
    assert not any(name == "snapshots.insert" for name, _ in fake.calls)
    assert not pg.in_backup()


def test_azure_snapshot_backup_with_fake_compute_client(s3, pg, bucket, pgdata_device, tmp_path):
    # /dev/disk/azure/scsi1/lun<N> is a udev symlink to the data disk at that LUN.
    scsi1 = tmp_path / "scsi1"
    scsi1.mkdir()
    (scsi1 / "lun3").symlink_to(pgdata_device)
    fake = FakeAzure("rg-db", "pg-vm", {"other": 1, "pg-disk": 3})
    provider = AzureProvider("sub-1", "rg-db", client=fake_azure_client(fake),
                             lun_path=f"{scsi1}/lun{{}}")
    config = SnapshotConfig(cloud_provider="azure-blob-storage", instance="pg-vm",
                            disks=("pg-disk",), azure_subscription_id="sub-1",
                            azure_resource_group="rg-db")
    url = f"s3://{bucket}/azure"
    run_in_process(s3, pg, url, config, provider)

    backup_id, objects = only_backup(s3, bucket, "azure")
    assert sorted(k.rsplit("/", 1)[1] for k in objects) == ["backup.info", "backup_label"]
    created = [args for name, args in fake.calls if name == "snapshots.begin_create_or_update"]
    assert created == [("rg-db", f"pg-disk-{backup_id.lower()}", {
        "location": "uksouth",
        "properties": {"creationData": {
            "createOption": "Copy",
            "sourceUri": "/subscriptions/sub-1/resourceGroups/rg-db/providers/"
                         "Microsoft.Compute/disks/pg-disk"},
            "incremental": True}})]
    info = s3.get_object(bucket, f"azure/{SERVER}/base/{backup_id}/backup.info")
    view = barman_view(info, backup_id, tmp_path)
    assert view["status"] == "DONE" and view["provider"] == "azure"
    assert info_line(info, "snapshots_info") == view["snapshots_info"]
    mount = MountTable.read().containing(str(pg.pgdata))
    assert mount is not None
    assert ast.literal_eval(view["snapshots_info"]) == {
        "provider": "azure",
        "provider_info": {"subscription_id": "sub-1", "resource_group": "rg-db"},
        "snapshots": [{"mount": {"mount_options": findmnt_options(pgdata_device),
                                 "mount_point": mount.mount_point},
                       "provider": {"location": "uksouth", "lun": 3,
                                    "snapshot_name": f"pg-disk-{backup_id.lower()}"}}],
    }
    [listed] = backup_list(s3, url, SERVER)
    assert listed["status"] == "DONE" and listed["snapshots_info"]["provider"] == "azure"
    assert not pg.in_backup()


def test_azure_disk_at_a_lun_that_is_not_mounted(s3, pg, bucket, tmp_path):
    fake = FakeAzure("rg-db", "pg-vm", {"pg-disk": 0})
    provider = AzureProvider("sub-1", "rg-db", client=fake_azure_client(fake),
                             lun_path=f"{tmp_path}/lun{{}}")
    config = SnapshotConfig(cloud_provider="azure-blob-storage", instance="pg-vm",
                            disks=("pg-disk",), azure_subscription_id="sub-1",
                            azure_resource_group="rg-db")
    with pytest.raises(SnapshotPreconditionError,
                       match="Cannot find disks mounted on compute instance pg-vm: pg-disk"):
        run_in_process(s3, pg, f"s3://{bucket}/azure", config, provider)
    assert s3.list_objects(bucket) == {}


def test_snapshots_info_is_what_barmans_classes_write():
    samples = [
        {"provider": "aws", "provider_info": {"account_id": "123456789012", "region": "eu-1"},
         "snapshots": [{"mount": {"mount_options": "rw,noatime", "mount_point": "/opt/d0"},
                        "provider": {"device_name": "/dev/sdf", "snapshot_id": "snap-1",
                                     "snapshot_name": "d0-20240101t000000",
                                     "snapshot_lock_mode": None}}]},
        {"provider": "gcp", "provider_info": {"project": "p"},
         "snapshots": [{"mount": {"mount_options": "rw", "mount_point": "/d"},
                        "provider": {"device_name": "pgdata", "snapshot_name": "d-1",
                                     "snapshot_project": "p"}}]},
        {"provider": "azure", "provider_info": {"subscription_id": "s", "resource_group": "r"},
         "snapshots": [{"mount": {"mount_options": "rw", "mount_point": "/d"},
                        "provider": {"location": "uksouth", "lun": 0, "snapshot_name": "d-1"}}]},
    ]
    done = subprocess.run([str(barman_bin("python")), "-c", BARMAN_ROUND_TRIP,
                           json.dumps(samples)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [repr(s) for s in samples]
    # and backup.info carries that repr on one line
    assert bi.encode({"snapshots_info": samples[0]}).decode() == \
        f"snapshots_info={samples[0]!r}\n"


# ==================================================================================================
# the mount table
# ==================================================================================================

def test_options_are_findmnts_for_every_mount_here():
    table = MountTable.read()
    out = subprocess.run(["findmnt", "-r", "-n", "-o", "TARGET,OPTIONS"], capture_output=True,
                         text=True, check=True).stdout
    findmnt = {}
    for line in out.splitlines():
        target, options = line.split(" ")
        findmnt[target.encode().decode("unicode_escape")] = options
    assert table.mounts
    for mount in table.mounts:
        if mount.mount_point in findmnt:  # later mounts on the same point hide earlier ones
            assert mount.options == findmnt[mount.mount_point] or any(
                m.options == findmnt[mount.mount_point] for m in table.mounts
                if m.mount_point == mount.mount_point), mount


def test_merge_options_as_libmount():
    assert merge_options("rw,relatime", "rw,discard") == "rw,relatime,discard"
    assert merge_options("ro,relatime", "rw,errors=remount-ro") == "ro,relatime,errors=remount-ro"
    assert merge_options("rw,nosuid", "ro") == "ro,nosuid"
    assert merge_options("rw", "rw") == "rw"
    assert merge_options("rw,noatime", None) == "rw,noatime"


def test_a_loop_device_and_a_bind_mount_resolve_to_their_mount(loop_disk, tmp_path):
    table = MountTable.read()
    found = table.find_device(loop_disk.device)
    assert found is not None
    assert (found.mount_point, found.options) == (str(loop_disk.mount_point), "rw,noatime")
    assert found.options == findmnt_options(loop_disk.device)
    # a udev-style symlink to the device, and the bare device name, find the same mount
    (tmp_path / "google-data").symlink_to(loop_disk.device)
    assert table.find_device(str(tmp_path / "google-data")) == found
    assert table.find_device(loop_disk.device.removeprefix("/dev/")) == found
    assert table.containing(str(loop_disk.mount_point / "sub" / "file")) == found
    # a bind mount of part of it: the device still resolves to the whole filesystem's mount,
    # and a path under the bind is on the same filesystem
    (loop_disk.mount_point / "sub").mkdir(exist_ok=True)
    target = tmp_path / "bound"
    target.mkdir()
    with mounted("--bind", str(loop_disk.mount_point / "sub"), str(target)):
        table = MountTable.read()
        assert len(table.mounts_of(loop_disk.device)) == 2
        assert table.find_device(loop_disk.device) == found
        bound = table.containing(str(target / "x"))
        assert bound is not None and bound.root == "/sub"
        assert table.same_filesystem(bound, found)
    assert MountTable.read().find_device("/dev/no-such-device") is None


def test_mountinfo_and_proc_mounts_parsing(tmp_path):
    mountinfo = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
        "40 27 259:3 / /var/lib/postgresql\\040data rw,noatime shared:5 - xfs /dev/nvme1n1 "
        "rw,attr2,inode64\n"
        "41 27 0:50 / /run/x rw - tmpfs tmpfs rw,size=10k\n"
    )
    table = MountTable(parse_mountinfo(mountinfo))
    data = table.find_device("/dev/nvme1n1")
    assert data is not None
    assert data.mount_point == "/var/lib/postgresql data"
    assert data.options == "rw,noatime,attr2,inode64"
    assert table.containing("/var/lib/postgresql data/16/main") == data
    assert table.containing("/var/lib/postgresql") == table.find_device("/dev/vda")
    proc_mounts = "/dev/vda / ext4 rw,relatime 0 0\n/dev/sdb /pg\\040x ext4 rw,noatime 0 0\n"
    (tmp_path / "mounts").write_text(proc_mounts)
    table = MountTable.read(str(tmp_path / "missing"), str(tmp_path / "mounts"))
    assert table.mounts == parse_proc_mounts(proc_mounts)
    found = table.find_device("/dev/sdb")
    assert found is not None and (found.mount_point, found.options) == ("/pg x", "rw,noatime")


# ==================================================================================================
# the database session is kept alive while the cloud works
# ==================================================================================================

class SlowProvider:
    name = "aws"

    def __init__(self, mount_point: str) -> None:
        self.mount_point = mount_point

    def instance_exists(self, instance: str) -> bool:
        return True

    def attached_volumes(self, instance: str, disks: Any, fail_on_missing: bool = True
                         ) -> dict[str, Volume]:
        return {disk: Volume(disk, ("/dev/sdq",)) for disk in disks}

    def take_snapshots(self, backup_id: str, instance: str, volumes: dict[str, Volume]
                       ) -> dict[str, Any]:
        time.sleep(0.5)
        return {"provider": "aws", "snapshots": [
            {"mount": v.mount_metadata(), "provider": {"snapshot_name": name}}
            for name, v in volumes.items()]}


class PingCounter:
    def __init__(self, fail: bool = False) -> None:
        self.pings, self.fail = 0, fail

    def ping(self) -> None:
        self.pings += 1
        if self.fail:
            raise BackupFailed("Connection to the Postgres server was lost during the backup")


def test_session_is_pinged_while_snapshots_are_taken():
    table = MountTable(parse_mountinfo("27 1 8:16 / /data rw - ext4 /dev/sdq rw\n"))
    state = BackupState(backup_id="20300101T000000", prefix="p/s/base/20300101T000000",
                        store=StoreConfig("s3://b/p"), compression=None, min_chunk_size=1,
                        backup_name=None, jobs=1, info={}, roots=[], chunks=[])
    config = SnapshotConfig(cloud_provider="aws-s3", instance="vm", disks=("d1",))
    session = PingCounter()
    info = take_disk_snapshots(state, config, provider=SlowProvider("/data"), mounts=table,
                               session=session,  # type: ignore[arg-type]
                               keepalive_interval=0.1)
    assert info["snapshots"][0]["mount"] == {"mount_options": "rw", "mount_point": "/data"}
    assert session.pings >= 3
    with pytest.raises(BackupFailed, match="lost during the backup"):
        take_disk_snapshots(state, config, provider=SlowProvider("/data"), mounts=table,
                            session=PingCounter(fail=True),  # type: ignore[arg-type]
                            keepalive_interval=0.1)
