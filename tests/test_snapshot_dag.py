"""The snapshot backup DAG end to end: dag.test() of dags/pgcloud_snapshot_backup.py.

The run uses the same services as the runner's snapshot tests: the session's PostgreSQL, the S3
store (through the `aws_default` connection) and moto's EC2 API on loopback (through the same
connection, by an `ec2` endpoint in its extra's service_config, as a user would point it
elsewhere). The EBS volume is attached under the name of the block device PGDATA's filesystem
is on here, so the tasks find it in this host's mount table. Barman lists what the DAG wrote.
"""

from __future__ import annotations

import ast
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_pgcloud.runner.snapshots.mounts import MountTable
from tests.airflow_fixtures import (  # sets AIRFLOW_HOME before airflow is imported
    DAGS_FOLDER,
    REPO_ROOT,
    airflow_home,
    connection_env,
)
from tests.rig.barman import backup_list
from tests.rig.moto_ec2 import MotoEc2
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server

__all__ = ["airflow_home"]  # fixtures, used by name

SNAPSHOT_DAG = REPO_ROOT / "dags" / "pgcloud_snapshot_backup.py"
GROUP = "pgcloud_backup"


@pytest.fixture(scope="module")
def snapshot_dag(airflow_home: Path) -> Any:
    """The example snapshot DAG, from the DAGs folder dag.test() runs DAGs from."""
    from airflow.dag_processing.dagbag import DagBag

    link = DAGS_FOLDER / SNAPSHOT_DAG.name
    if not link.exists():
        link.symlink_to(SNAPSHOT_DAG)
    bag = DagBag(dag_folder=str(link))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("pgcloud_snapshot_backup")
    assert dag is not None
    return dag


@pytest.fixture
def connections(pg: PgCluster, s3: S3Server, moto: MotoEc2,
                monkeypatch: pytest.MonkeyPatch) -> None:
    """`pgcloud_postgres` and `aws_default` (S3 endpoint, and EC2 at moto) as AIRFLOW_CONN_*
    variables, with no AWS_*/PG* variables left: credentials come only from the connections."""
    env = connection_env(pg, s3).env
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    aws["extra"]["service_config"] = {"ec2": {"endpoint_url": moto.endpoint_url}}
    env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(aws)
    for key in list(os.environ):
        if key.startswith(("AWS_", "PG")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def task_states(dag_run: Any) -> dict[str, str]:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.run_id == dag_run.run_id,
                                       TaskInstance.dag_id == dag_run.dag_id)
        ).all()
        return {ti.task_id: str(ti.state) for ti in tis}


def test_snapshot_dag_form_and_shape(snapshot_dag: Any) -> None:
    params = snapshot_dag.params
    expected = ["destination_url", "server_name", "backup_name", "cloud_provider",
                "snapshot_instance", "snapshot_disks", "aws_region", "gcp_project", "gcp_zone",
                "azure_subscription_id", "azure_resource_group", "immediate_checkpoint"]
    assert list(params.keys()) == expected
    for name in expected:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    start = snapshot_dag.get_task(f"{GROUP}.start_backup")
    snapshots = snapshot_dag.get_task(f"{GROUP}.take_disk_snapshots")
    stop = snapshot_dag.get_task(f"{GROUP}.stop_backup_and_upload_label")
    assert start.is_setup and stop.is_teardown
    assert snapshots.trigger_rule == "none_failed"  # the uploads are skipped: no chunks
    assert stop.upstream_task_ids == {start.task_id, snapshots.task_id}


def test_snapshot_dag_backup_is_listed_by_barman(
    snapshot_dag: Any, connections: None, s3: S3Server, pg: PgCluster, bucket: str,
    moto: MotoEc2,
) -> None:
    mount = MountTable.read().containing(str(pg.pgdata))
    assert mount is not None and mount.source.startswith("/dev/"), mount
    tag = uuid.uuid4().hex[:8]
    instance = moto.instance(f"pg-vm-{tag}")
    volume_id = moto.volume(f"pgdata-{tag}", instance, mount.source)
    started = time.monotonic()
    dag_run = snapshot_dag.test(run_conf={
        "destination_url": f"s3://{bucket}/snap", "server_name": "pg",
        "backup_name": "dag-snap", "snapshot_instance": f"pg-vm-{tag}",
        "snapshot_disks": [f"pgdata-{tag}"], "aws_region": moto.region,
    })
    elapsed = time.monotonic() - started
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    assert states[f"{GROUP}.upload_chunk"] == "skipped"
    assert states[f"{GROUP}.take_disk_snapshots"] == "success"

    [listed] = backup_list(s3, f"s3://{bucket}/snap", "pg")
    assert listed["status"] == "DONE" and listed["backup_name"] == "dag-snap"
    backup_id = listed["backup_id"]
    prefix = f"snap/pg/base/{backup_id}"
    assert set(s3.list_objects(bucket, "snap/")) == {f"{prefix}/backup.info",
                                                     f"{prefix}/backup_label"}
    info = s3.get_object(bucket, f"{prefix}/backup.info").decode()
    assert "server_name=pg\n" in info
    snapshots_info = next(ast.literal_eval(line.partition("=")[2])
                          for line in info.splitlines() if line.startswith("snapshots_info="))
    [taken] = moto.snapshots(volume_id)
    assert snapshots_info["snapshots"][0]["provider"]["snapshot_id"] == taken["SnapshotId"]
    assert snapshots_info["snapshots"][0]["mount"]["mount_point"] == mount.mount_point
    label = s3.get_object(bucket, f"{prefix}/backup_label").decode()
    assert f"LABEL: Barman backup pg {backup_id}" in label
    deadline = time.monotonic() + 15
    while pg.in_backup() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pg.in_backup()
    print(f"snapshot DAG run took {elapsed:.1f}s")


def test_snapshot_dag_fails_before_starting_when_the_disk_is_missing(
    snapshot_dag: Any, connections: None, s3: S3Server, pg: PgCluster, bucket: str,
    moto: MotoEc2,
) -> None:
    tag = uuid.uuid4().hex[:8]
    moto.instance(f"pg-vm-{tag}")
    dag_run = snapshot_dag.test(run_conf={
        "destination_url": f"s3://{bucket}/snap", "server_name": "pg",
        "snapshot_instance": f"pg-vm-{tag}", "snapshot_disks": ["nowhere"],
        "aws_region": moto.region,
    })
    assert str(dag_run.state) == "failed"
    assert task_states(dag_run)[f"{GROUP}.start_backup"] == "failed"
    assert s3.list_objects(bucket) == {}
    assert not pg.in_backup()


@pytest.mark.parametrize("cloud_provider", ["google-cloud-storage", "azure-blob-storage"])
def test_snapshot_dag_backup_on_gcp_and_azure(
    cloud_provider: str, request: pytest.FixtureRequest, snapshot_dag: Any, connections: None,
    pg: PgCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The DAG takes the snapshot through the provider `cloud_provider` picks: Compute Engine
    or Azure Compute, faked at the SDK client (the recording fakes of test_snapshots), with
    backup_label and backup.info written to the matching store (the GCS emulator through
    google_cloud_default, Azurite through wasb_default)."""
    from airflow_provider_pgcloud.hooks.pgcloud import PgCloudHook
    from airflow_provider_pgcloud.runner.snapshots import SnapshotConfig
    from airflow_provider_pgcloud.runner.snapshots.azure import AzureProvider
    from airflow_provider_pgcloud.runner.snapshots.gcp import GcpProvider
    from tests.test_snapshots import (
        FakeAzure,
        FakeGcp,
        barman_view,
        fake_azure_client,
        info_line,
    )

    mount = MountTable.read().containing(str(pg.pgdata))
    assert mount is not None and mount.source.startswith("/dev/"), mount
    tag = uuid.uuid4().hex[:8]
    instance, disk = f"pg-vm-{tag}", f"pgdata-{tag}"
    links = tmp_path / "udev"
    links.mkdir()
    fake: FakeGcp | FakeAzure
    store: Any
    provider: Any
    if cloud_provider == "google-cloud-storage":
        store = request.getfixturevalue("gcs_emulator")
        container = request.getfixturevalue("gcs_bucket")
        url = store.url(container, "snap")
        conn = {"conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": "pgcloud-test"}}
        monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(conn))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", store.endpoint)  # where, not who
        # /dev/disk/by-id/google-<device name> is a udev symlink to the disk's block device.
        (links / "google-pgdata").symlink_to(mount.source)
        fake = FakeGcp("proj-1", "europe-west2-b", instance, {disk: "pgdata"})
        provider = GcpProvider("proj-1", "europe-west2-b", clients=fake.clients,
                               device_prefix=f"{links}/google-")
        expected_provider, call = "gcp", "snapshots.insert"
        params = {"gcp_project": "proj-1", "gcp_zone": "europe-west2-b"}
    else:
        store = request.getfixturevalue("azurite")
        container = request.getfixturevalue("azure_container")
        url = store.url(container, "snap")
        conn = {"conn_type": "wasb", "extra": {"connection_string": store.connection_string()}}
        monkeypatch.setenv("AIRFLOW_CONN_WASB_DEFAULT", json.dumps(conn))
        # /dev/disk/azure/scsi1/lun<N> is a udev symlink to the data disk at that LUN.
        (links / "lun3").symlink_to(mount.source)
        fake = FakeAzure("rg-db", instance, {"other": 1, disk: 3})
        provider = AzureProvider("sub-1", "rg-db", client=fake_azure_client(fake),
                                 lun_path=f"{links}/lun{{}}")
        expected_provider, call = "azure", "snapshots.begin_create_or_update"
        params = {"azure_subscription_id": "sub-1", "azure_resource_group": "rg-db"}
    for key in [k for k in os.environ if k.startswith(("AZURE_", "GOOGLE_"))]:
        monkeypatch.delenv(key)
    asked: list[SnapshotConfig] = []

    def snapshot_provider(self: PgCloudHook, config: SnapshotConfig) -> Any:
        asked.append(config)
        return provider

    monkeypatch.setattr(PgCloudHook, "snapshot_provider", snapshot_provider)

    dag_run = snapshot_dag.test(run_conf={
        "destination_url": url, "server_name": "pg", "backup_name": "dag-snap",
        "cloud_provider": cloud_provider, "snapshot_instance": instance,
        "snapshot_disks": [disk], **params,
    })
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", states
    assert states[f"{GROUP}.take_disk_snapshots"] == "success"
    assert asked and {c.provider for c in asked} == {expected_provider}
    assert {(c.instance, c.disks) for c in asked} == {(instance, (disk,))}

    objects = store.list_objects(container, "snap/")
    backup_ids = {key.split("/")[3] for key in objects}
    assert len(backup_ids) == 1, objects
    [backup_id] = backup_ids
    prefix = f"snap/pg/base/{backup_id}"
    assert set(objects) == {f"{prefix}/backup.info", f"{prefix}/backup_label"}
    snapshot_name = f"{disk}-{backup_id.lower()}"
    taken = [args for name, args in fake.calls if name == call]
    if expected_provider == "gcp":
        assert [t["snapshot_resource"]["name"] for t in taken] == [snapshot_name]
    else:
        assert [t[:2] for t in taken] == [("rg-db", snapshot_name)]

    info = store.get_object(container, f"{prefix}/backup.info")
    view = barman_view(info, backup_id, tmp_path)
    assert view["status"] == "DONE" and view["server_name"] == "pg"
    assert view["backup_name"] == "dag-snap" and view["provider"] == expected_provider
    assert info_line(info, "snapshots_info") == view["snapshots_info"]
    snapshots_info = ast.literal_eval(view["snapshots_info"])
    [snapshot] = snapshots_info["snapshots"]
    assert snapshot["provider"]["snapshot_name"] == snapshot_name
    assert snapshot["mount"]["mount_point"] == mount.mount_point
    label = store.get_object(container, f"{prefix}/backup_label").decode()
    assert f"LABEL: Barman backup pg {backup_id}" in label
    assert label == view["backup_label"]
    deadline = time.monotonic() + 15
    while pg.in_backup() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pg.in_backup()
