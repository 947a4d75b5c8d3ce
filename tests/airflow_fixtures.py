"""Airflow for the DAG tests: a throwaway AIRFLOW_HOME, a DAGs folder, and the rig's services as
Airflow connections.

Why at import time: Airflow reads its configuration (AIRFLOW_HOME, the DAGs folder, the
metadata DB) when it is first imported, so this module points it at a fresh temporary home
before anything imports ``airflow``. The DAGs folder holds the real example DAGs (symlinks to
``dags/pgcloud_backup.py`` and ``dags/pgcloud_restore_drill.py``) plus small test DAGs built
with the same TaskGroup factory and operators; ``dag.test()`` only runs DAGs it can find there.

Connections come from ``AIRFLOW_CONN_*`` environment variables, exactly as a user would set
them; no AWS or PG* variables are left in the environment, so the connections are the only
place credentials can come from.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server

if TYPE_CHECKING:
    from airflow.sdk import DAG

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DAG = REPO_ROOT / "dags" / "pgcloud_backup.py"
DRILL_DAG = REPO_ROOT / "dags" / "pgcloud_restore_drill.py"
AIRFLOW_BIN = Path(sys.executable).parent / "airflow"

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pgcloud-airflow-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
DAGS_FOLDER = AIRFLOW_HOME / "dags"
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    # signs the task tokens of the execution API (a throwaway; Airflow's generated one is short)
    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
}
if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(AIRFLOW_HOME):
    raise RuntimeError("tests/airflow_fixtures.py must be imported before anything imports airflow")
os.environ.update(AIRFLOW_ENV)

DEADLINE_SECONDS = 8
"""The keeper deadline of the ``pgcloud_test_deadline`` DAG."""

TEST_DAGS = f'''
"""DAGs for tests/test_dag.py, built with the same factory and operators as the example."""
import datetime as dt

from airflow.sdk import DAG, Param

from airflow_provider_pgcloud.operators import PgCloudBackupOperator, VerifyBackupOperator
from airflow_provider_pgcloud.taskgroup import pg_cloud_backup_group

PARAMS = {{
    "destination_url": Param("s3://unset/path", type="string"),
    "server_name": Param("pg", type="string"),
}}
COMMON = dict(
    destination_url="{{{{ params.destination_url }}}}", server_name="{{{{ params.server_name }}}}",
    compression="gzip", jobs=2, max_archive_size="8MB", immediate_checkpoint=True,
)
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

with DAG("pgcloud_test_retry", schedule=None, start_date=START, params=PARAMS):
    pg_cloud_backup_group(**COMMON, upload_retries=1, upload_retry_delay=dt.timedelta(0))

with DAG("pgcloud_test_no_retry", schedule=None, start_date=START, params=PARAMS):
    pg_cloud_backup_group(**{{**COMMON, "compression": "lz4"}}, upload_retries=0)

with DAG("pgcloud_test_deadline", schedule=None, start_date=START, params=PARAMS):
    pg_cloud_backup_group(
        **COMMON, upload_retries=0, session_deadline=dt.timedelta(seconds={DEADLINE_SECONDS}),
    )

with DAG("pgcloud_test_snapshot", schedule=None, start_date=START, params=PARAMS):
    pg_cloud_backup_group(**COMMON, snapshot_instance="vm-1", snapshot_disks=["disk-1"])

with DAG("pgcloud_test_verify", schedule=None, start_date=START, params=PARAMS):
    pg_cloud_backup_group(**COMMON, upload_retries=0, verify=True)

with DAG("pgcloud_test_verify_only", schedule=None, start_date=START,
         params={{**PARAMS, "backup_id": Param("latest", type="string")}}):
    VerifyBackupOperator(
        task_id="verify", destination_url="{{{{ params.destination_url }}}}",
        server_name="{{{{ params.server_name }}}}", backup_id="{{{{ params.backup_id }}}}",
    )

with DAG("pgcloud_test_streaming", schedule=None, start_date=START, params=PARAMS):
    pg_cloud_backup_group(**{{**COMMON, "compression": "zstd"}}, source="streaming", verify=True)

with DAG("pgcloud_test_retention", schedule=None, start_date=START,
         params={{**PARAMS, "retention_policy": Param("REDUNDANCY 1", type="string")}}):
    pg_cloud_backup_group(**COMMON, upload_retries=0,
                          retention_policy="{{{{ params.retention_policy }}}}")

with DAG("pgcloud_test_single", schedule=None, start_date=START, params=PARAMS):
    PgCloudBackupOperator(
        task_id="backup", asset_alias="pgcloud_backups",
        **{{**COMMON, "compression": "zstd", "tags": ["team,db", "kind,nightly"]}},
    )
'''


def _write_dags_folder() -> None:
    DAGS_FOLDER.mkdir(parents=True, exist_ok=True)
    for example in (EXAMPLE_DAG, DRILL_DAG):
        link = DAGS_FOLDER / example.name
        if not link.exists():
            link.symlink_to(example)
    (DAGS_FOLDER / "pgcloud_test_dags.py").write_text(TEST_DAGS)


_write_dags_folder()


def airflow_cli(*args: str, env: dict[str, str], timeout: float = 300
                ) -> subprocess.CompletedProcess[str]:
    """Run the ``airflow`` command of this venv with exactly ``env``."""
    return subprocess.run(
        [str(AIRFLOW_BIN), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def base_env() -> dict[str, str]:
    """This process's environment without any credentials or libpq defaults."""
    return {
        k: val for k, val in os.environ.items()
        if not k.startswith(("AWS_", "PG", "AIRFLOW_CONN_", "AZURE_", "GOOGLE_"))
    }


def migrate(env: dict[str, str]) -> None:
    result = airflow_cli("db", "migrate", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """This session's AIRFLOW_HOME with a migrated metadata DB (removed at exit)."""
    migrate({**base_env(), **AIRFLOW_ENV})
    return AIRFLOW_HOME


@dataclass(frozen=True)
class Connections:
    """The Airflow connection variables for the rig's services, and the secrets in them."""

    env: dict[str, str]
    secrets: tuple[str, ...]


def connection_env(pg: PgCluster, s3: S3Server) -> Connections:
    assert pg.password, "the rig cluster must require a password over TCP"
    postgres: dict[str, Any] = {
        "conn_type": "postgres", "host": pg.host, "port": pg.port, "login": pg.user,
        "password": pg.password, "schema": "postgres",
    }
    aws: dict[str, Any] = {
        "conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
        "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region},
    }
    return Connections(
        env={"AIRFLOW_CONN_PGCLOUD_POSTGRES": json.dumps(postgres),
             "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws)},
        secrets=(pg.password, s3.secret_key),
    )


@pytest.fixture(scope="session")
def airflow_connections(airflow_home: Path, pg: PgCluster, s3: S3Server) -> Connections:
    """``pgcloud_postgres`` and ``aws_default`` (endpoint_url in extra) for the rig's services."""
    return connection_env(pg, s3)


@pytest.fixture
def connections_in_env(
    airflow_connections: Connections, monkeypatch: pytest.MonkeyPatch
) -> Connections:
    """The connections as ``AIRFLOW_CONN_*`` variables for this test, and no AWS_*/PG*
    variables, so the connections are the only place credentials can come from."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "PG")):
            monkeypatch.delenv(key)
    for key, value in airflow_connections.env.items():
        monkeypatch.setenv(key, value)
    return airflow_connections


@pytest.fixture(scope="session")
def dagbag(airflow_home: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert not bag.import_errors, bag.import_errors
    return bag


def get_dag(dagbag: Any, dag_id: str) -> DAG:
    dag = dagbag.get_dag(dag_id)
    assert dag is not None, f"{dag_id} not in {sorted(dagbag.dag_ids)}"
    return dag  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def execution_api(airflow_connections: Connections) -> Iterator[str]:
    """An ``airflow api-server`` (execution API only) on a free loopback port.

    Needed to run tasks the way a deployment does, each in its own supervised process (the
    LocalExecutor), rather than in this process as plain ``dag.test()`` does.
    """
    import signal
    import time
    import urllib.error
    import urllib.request

    from tests.rig.tools import free_port, register_cleanup, unregister_cleanup

    port = free_port()
    url = f"http://127.0.0.1:{port}/execution/"
    log = AIRFLOW_HOME / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(AIRFLOW_BIN), "api-server", "--host", "127.0.0.1", "--port", str(port),
             "--apps", "execution", "--workers", "1"],
            env={**base_env(), **AIRFLOW_ENV, **airflow_connections.env},
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop() -> None:
        unregister_cleanup(stop)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    register_cleanup(stop)
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}health", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        yield url
    finally:
        stop()
