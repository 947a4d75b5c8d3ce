"""The restore drill DAG end to end: dag.test() of dags/pgcloud_restore_drill.py.

A cluster archives its WAL where its backups go (Barman's layout); the runner backs it up; the
drill restores the backup on this host, fetches its WAL, starts PostgreSQL 15 (as `postgres`:
the test runs as root), runs pg_amcheck and the SQL checks, and removes everything. Failing
drills fail the run with the step and its reason, and leave nothing behind either.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_fixtures import (  # sets AIRFLOW_HOME before airflow is imported
    Connections,
    airflow_connections,
    airflow_home,
    connections_in_env,
    dagbag,
    get_dag,
)
from tests.rig.pgcluster import PgCluster, WalArchive, init_cluster
from tests.rig.s3server import S3Server
from tests.rig.tools import make_workdir
from tests.runner_cli import run_runner, runner_env
from tests.test_dag import asset_events, xcom_values

__all__ = ["airflow_connections", "airflow_home", "connections_in_env", "dagbag"]

DAG_ID = "pgcloud_restore_drill"


@pytest.fixture(scope="module")
def drilled(s3: S3Server) -> Iterator[tuple[PgCluster, str]]:
    """A cluster whose WAL goes to `url` (server pg), backed up there once."""
    bucket = f"drill-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    url = f"s3://{bucket}/fleet"
    cluster = init_cluster(make_workdir("drill"), 15, tablespace=True,
                           wal_archive=WalArchive(s3, url, "pg"), remove_workdir_on_stop=True)
    try:
        cluster.execute("CREATE TABLE drill_rows (id int)", dbname="app")
        cluster.execute("INSERT INTO drill_rows VALUES (1)", dbname="app")
        result = run_runner("-z", "-S", "2MB", "--immediate-checkpoint", "-n", "drilled", url,
                            "pg", s3=s3, pg=cluster)
        assert result.returncode == 0, result.stderr
        yield cluster, url
    finally:
        cluster.stop()


@pytest.fixture
def bag(dagbag: Any, connections_in_env: Connections) -> Any:
    return dagbag


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    """Every drill removes its scratch directory, whatever happened."""
    before = set(Path(tempfile.gettempdir()).glob("pgcloud-drill-*"))
    yield
    assert set(Path(tempfile.gettempdir()).glob("pgcloud-drill-*")) == before


def _conf(url: str, **extra: Any) -> dict[str, Any]:
    return {"source_url": url, "server_name": "pg", "run_as": "postgres",
            "sql_database": "app", **extra}


def _run(bag: Any, conf: dict[str, Any]) -> Any:
    return get_dag(bag, DAG_ID).test(run_conf=conf)


def test_drill_restores_starts_and_checks_the_backup(bag: Any, drilled: tuple[PgCluster, str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgcloud")
    _, url = drilled
    dag_run = _run(bag, _conf(url, backup_id="drilled",
                              sql_checks=["SELECT count(*) = 1 FROM drill_rows",
                                          "SELECT 1 FROM pg_tablespace WHERE spcname = 'tbs1'"]))
    assert str(dag_run.state) == "success", caplog.text[-5000:]
    [figures] = [json.loads(value) for value in xcom_values(dag_run)
                 if "recovery_seconds" in value]
    assert figures["server_name"] == "pg" and figures["major"] == 15
    assert figures["bytes"] > 10_000_000
    assert figures["recovery_seconds"] >= figures["replay_seconds"] > 0
    assert figures["checks"] == ["pg_amcheck", "sql: SELECT count(*) = 1 FROM drill_rows",
                                 "sql: SELECT 1 FROM pg_tablespace WHERE spcname = 'tbs1'"]
    events = asset_events(f"{url}/pg/drill")
    assert events and events[-1][0] == dag_run.run_id
    assert events[-1][1]["backup_id"] == figures["backup_id"]


def test_a_failing_sql_check_fails_the_drill_naming_it(
    bag: Any, drilled: tuple[PgCluster, str], caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _, url = drilled
    dag_run = _run(bag, _conf(url, sql_checks=["SELECT count(*) = 2 FROM drill_rows"]))
    output = capfd.readouterr()
    assert str(dag_run.state) == "failed"
    assert ("restore drill failed at SQL check 'SELECT count(*) = 2 FROM drill_rows': "
            "returned False") in caplog.text + output.out + output.err


def test_a_damaged_backup_fails_the_drill_naming_what_broke(
    bag: Any, s3: S3Server, drilled: tuple[PgCluster, str], caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    cluster, url = drilled
    bucket = url.split("/")[2]
    result = run_runner("-S", "2MB", "--immediate-checkpoint", "-n", "damaged", url, "pg",
                        s3=s3, pg=cluster)
    assert result.returncode == 0, result.stderr
    [key] = [k for k in s3.list_objects(bucket, "fleet/pg/base/") if k.endswith("/data.tar")]
    data = bytearray(s3.get_object(bucket, key))
    content = data.index(b"PG_VERSION\x00")
    content += 512 - content % 512
    data[content:content + 3] = b"16\n"
    s3.put_object(bucket, key, bytes(data))

    dag_run = _run(bag, _conf(url, backup_id="damaged"))
    output = capfd.readouterr()
    assert str(dag_run.state) == "failed"
    assert ("restore drill failed at restoring the backup: data.tar: PG_VERSION: CRC32C "
            "checksum") in caplog.text + output.out + output.err


def test_missing_binaries_are_named(bag: Any, drilled: tuple[PgCluster, str],
                                    caplog: pytest.LogCaptureFixture,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    _, url = drilled
    dag_run = _run(bag, _conf(url, pg_bin_dir="/opt/nowhere/{major}/bin"))
    output = capfd.readouterr()
    assert str(dag_run.state) == "failed"
    assert ("postgres, pg_ctl, pg_amcheck of PostgreSQL 15 not found in /opt/nowhere/15/bin"
            in caplog.text + output.out + output.err)


def test_the_runner_runs_the_same_drill(s3: S3Server, drilled: tuple[PgCluster, str]) -> None:
    _, url = drilled
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_pgcloud.runner.cli.drill", "--endpoint-url",
         s3.endpoint_url, "--run-as", "postgres", "--sql-database", "app",
         "--sql-check", "SELECT count(*) = 1 FROM drill_rows", url, "pg", "drilled"],
        env=runner_env(s3), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["checks"] == ["pg_amcheck", "sql: SELECT count(*) = 1 FROM drill_rows"]
    assert s3.secret_key not in done.stdout + done.stderr
