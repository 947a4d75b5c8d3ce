"""The same backup through Airflow: the example DAG `pgcloud_backup` under a real scheduler.

`Airflow` (used by run.py) is the rig's AirflowDeployment (tests/rig/airflow_deployment.py) with
the LocalExecutor and a DAGs folder holding only the example backup DAG (the restore drill,
which every backup triggers, would run between measurements): a PostgreSQL metadata database, the
execution API server, a DAG processor and a scheduler, with the settings the README recommends
for backup DAGs. Each measured run is then

    python -m benchmarks.dag DESTINATION_URL COMPRESSION JOBS

which sets `default_pool` to JOBS slots (the uploads run JOBS at a time, as the runner's -J),
triggers the DAG with `airflow dags trigger`, waits for the run to finish and prints one JSON
line: its state and seconds, from the run's start to its end as the scheduler records them (the
duration Airflow's UI shows; triggering and queueing are not counted). Credentials reach the
tasks only through the `pgcloud_postgres` and `aws_default` connections (AIRFLOW_CONN_*).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from tests.rig.airflow_deployment import (
    AIRFLOW_BIN,
    AirflowDeployment,
    aws_connection,
    postgres_connection,
    run_dag,
)
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import REPO_ROOT, make_workdir, remove_workdir

DAG_ID = "pgcloud_backup"
MAX_PARALLELISM = 4
"""LocalExecutor worker processes: the largest -J measured; default_pool narrows it per run."""

RUN_TIMEOUT_S = 3600


class Airflow(AirflowDeployment):
    """The benchmark's deployment: the example DAG against the benchmark's cluster and store."""

    def __init__(self, pg: PgCluster, s3: S3Server) -> None:
        self._dags = make_workdir("bench-dags")
        (self._dags / f"{DAG_ID}.py").symlink_to(REPO_ROOT / "dags" / f"{DAG_ID}.py")
        super().__init__(
            dags_folder=self._dags, dag_ids=[DAG_ID], parallelism=MAX_PARALLELISM,
            connections={"pgcloud_postgres": postgres_connection(pg),
                         "aws_default": aws_connection(s3)},
        )

    def stop(self) -> None:
        super().stop()
        remove_workdir(self._dags)

    def argv(self, url: str, compression: str, jobs: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.dag", url, compression, str(jobs)]


def main(argv: Sequence[str] | None = None) -> int:
    url, compression, jobs = (sys.argv[1:] if argv is None else list(argv))[:3]
    env = dict(os.environ)
    pool = subprocess.run([str(AIRFLOW_BIN), "pools", "set", "default_pool", jobs,
                           "uploads run -J at a time"], env=env, capture_output=True, text=True,
                          check=False)
    if pool.returncode != 0:
        print(json.dumps({"ok": False, "error": pool.stderr[-2000:]}))
        return 1
    conf = {"destination_url": url, "server_name": "pg", "compression": compression,
            "jobs": int(jobs), "immediate_checkpoint": True}
    try:
        result = run_dag(env, DAG_ID, conf, RUN_TIMEOUT_S)
    except RuntimeError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    if result.seconds is None:
        print(json.dumps({"ok": False, "error": f"run {result.run_id}: {result.state}"}))
        return 1
    print(json.dumps({"ok": result.ok, "state": result.state, "seconds": result.seconds}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
