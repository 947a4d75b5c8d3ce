"""The fleet DAGs under a real CeleryExecutor, with two workers standing for two hosts.

The deployment is what a small production one runs, on loopback: Redis as the broker, a
PostgreSQL metadata database, the scheduler, the DAG processor and the API server
(tests/rig/airflow_deployment.py). The example DAG `dags/pgcloud_fleet.py` reads a fleet file
with two clusters:

- cluster A, `source: local`, on the queue of a worker whose OS user (`postgres`) can read A's
  data directory: the database host's worker;
- cluster B, `source: streaming`, on the queue of a worker whose OS user (`nobody`) can read no
  data directory at all: any worker, reaching B only over TCP.

Both runs succeed, every task ran where its queue put it, and Barman restores both backups
with the rows of their clusters.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PgClusterFactory, RestoreAndCheck
from tests.rig.airflow_deployment import (
    AirflowDeployment,
    CeleryWorker,
    DagRunResult,
    aws_connection,
    postgres_connection,
    trigger_dag,
    wait_for_run,
)
from tests.rig.barman import backup_list
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import REPO_ROOT, make_workdir, remove_workdir

DATABASE_HOST = CeleryWorker(name="dbhost-a", queue="dbhost-a", user="postgres")
ANY_WORKER = CeleryWorker(name="anywhere", queue="anywhere", user="nobody")
DAG_A, DAG_B = "pgcloud_fleet_cluster-a", "pgcloud_fleet_cluster-b"


def _fleet_file(url: str) -> str:
    return f"""\
clusters:
  - server_name: cluster-a
    postgres_conn_id: pg_a
    destination_url: {url}
    schedule: null
    source: local
    queue: {DATABASE_HOST.queue}
    compression: zstd
    jobs: 2
    options:
      immediate_checkpoint: true
      max_archive_size: 2MB
  - server_name: cluster-b
    postgres_conn_id: pg_b
    destination_url: {url}
    schedule: null
    source: streaming
    queue: {ANY_WORKER.queue}
    compression: gzip
    jobs: 2
    options:
      immediate_checkpoint: true
      max_archive_size: 2MB
"""


@pytest.fixture
def deployment(s3: S3Server, pg: PgCluster, pg_cluster_factory: PgClusterFactory,
               bucket: str) -> Iterator[AirflowDeployment]:
    dags = make_workdir("fleet-dags")
    (dags / "pgcloud_fleet.py").symlink_to(REPO_ROOT / "dags" / "pgcloud_fleet.py")
    fleet = dags / "fleet.yaml"
    fleet.write_text(_fleet_file(f"s3://{bucket}/fleet"))
    fleet.chmod(0o644)
    airflow = AirflowDeployment(
        dags_folder=dags, dag_ids=[DAG_A, DAG_B], executor="CeleryExecutor",
        celery_workers=[DATABASE_HOST, ANY_WORKER],
        connections={"pg_a": postgres_connection(pg),
                     "pg_b": postgres_connection(pg_cluster_factory(17)),
                     "aws_default": aws_connection(s3)},
        environment={"PGCLOUD_FLEET_FILE": str(fleet)},
    )
    try:
        yield airflow
    finally:
        airflow.stop()
        remove_workdir(dags)


def _task_logs(airflow: AirflowDeployment, worker: CeleryWorker, dag_id: str) -> list[Path]:
    return sorted(airflow.worker_log_folder(worker).glob(f"dag_id={dag_id}/**/*.log"))


def _explain(airflow: AirflowDeployment, result: DagRunResult) -> str:
    """What to read when a run failed: its tasks, and the end of every task log and worker log."""
    parts = [f"run {result.run_id}: {result.state}; tasks {result.tasks}"]
    for worker in airflow.workers:
        for log in airflow.worker_log_folder(worker).glob("**/*.log"):
            parts.append(f"--- {log}\n{log.read_text(errors='replace')[-2500:]}")
        parts.append(f"--- worker {worker.name}\n{airflow.log_tail('worker-' + worker.name)}")
    parts.append(f"--- scheduler\n{airflow.log_tail('scheduler', 1500)}")
    return "\n".join(parts)


def test_fleet_backs_up_from_the_database_host_and_from_any_worker(
    deployment: AirflowDeployment, s3: S3Server, pg: PgCluster,
    pg_cluster_factory: PgClusterFactory, bucket: str, restore_and_check: RestoreAndCheck,
) -> None:
    cluster_a, cluster_b = pg, pg_cluster_factory(17)
    for cluster in (cluster_a, cluster_b):
        data_directory = cluster.execute("SHOW data_directory")[0][0]
        denied = subprocess.run(["runuser", "-u", ANY_WORKER.user, "--", "ls", data_directory],
                                capture_output=True, check=False)
        assert denied.returncode != 0  # the second worker's user reads no data directory
    runs = {dag_id: trigger_dag(deployment.env, dag_id) for dag_id in (DAG_A, DAG_B)}
    results = {dag_id: wait_for_run(deployment.env, run_id, timeout=600)
               for dag_id, run_id in runs.items()}
    for result in results.values():
        assert result.ok, _explain(deployment, result)

    # every task went to its cluster's queue, and ran on the worker listening there, as its
    # OS user (the owner of the task's log file)
    for dag_id, worker, other in ((DAG_A, DATABASE_HOST, ANY_WORKER),
                                  (DAG_B, ANY_WORKER, DATABASE_HOST)):
        assert {queue for _, queue in results[dag_id].tasks.values()} == {worker.queue}
        logs = _task_logs(deployment, worker, dag_id)
        assert logs and {log.owner() for log in logs} == {worker.user}
        assert not _task_logs(deployment, other, dag_id)
    assert any(task.startswith("pgcloud_backup.upload_chunk")
               for task in results[DAG_A].tasks)  # the local-files shape: mapped uploads
    assert set(results[DAG_B].tasks) == {"pgcloud_backup.backup", "pgcloud_backup.end_backup"}

    url = f"s3://{bucket}/fleet"
    for server, cluster in (("cluster-a", cluster_a), ("cluster-b", cluster_b)):
        [backup] = backup_list(s3, url, server)
        assert backup["status"] == "DONE"
        # a row written after the backup reaches the restore only through the WAL archive
        cluster.execute("CREATE TABLE IF NOT EXISTS after_fleet (id int)", dbname="app")
        cluster.execute("INSERT INTO after_fleet VALUES (1)", dbname="app")
        restore_and_check(url, server, backup["backup_id"], cluster)
