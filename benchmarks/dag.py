"""The same backup through Airflow: the example DAG `pgcloud_backup`, run with the LocalExecutor.

`Airflow` (used by run.py) prepares a throwaway AIRFLOW_HOME with the repository's dags/ folder,
migrates its metadata database and starts an execution API server; each measured run is then

    python -m benchmarks.dag DESTINATION_URL COMPRESSION JOBS

in a fresh process that runs `dag.test(use_executor=True)`: every task (start, each mapped
upload, stop) in its own supervised process, uploads in parallel up to `core.parallelism`.
Credentials reach the tasks only through the `pgcloud_postgres` and `aws_default` connections
(AIRFLOW_CONN_* variables). It prints one JSON line: the DAG run's state and seconds (from
dag.test() to its return, without the Airflow import and DAG parsing that a running scheduler
has already done).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import REPO_ROOT, free_port, make_workdir, remove_workdir

AIRFLOW_BIN = Path(sys.executable).parent / "airflow"
DAG_ID = "pgcloud_backup"


class Airflow:
    """A throwaway Airflow home, its metadata database and an execution API server."""

    def __init__(self, pg: PgCluster, s3: S3Server, parallelism: int = 4) -> None:
        self.home = make_workdir("bench-airflow")
        port = free_port()
        assert pg.password, "the rig cluster requires a password over TCP"
        postgres = {"conn_type": "postgres", "host": pg.host, "port": pg.port,
                    "login": pg.user, "password": pg.password, "schema": "postgres"}
        aws = {"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
               "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}
        self.env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "PG", "AIRFLOW", "AZURE_", "GOOGLE_"))},
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW_CONN_PGCLOUD_POSTGRES": json.dumps(postgres),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
            "PYTHONPATH": str(REPO_ROOT),
        }
        self._server: subprocess.Popen[bytes] | None = None
        try:
            self._start(port)
        except BaseException:
            self.stop()
            raise

    def _start(self, port: int) -> None:
        migrate = subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], env=self.env,
                                 cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")
        log = self.home / "api-server.log"
        with log.open("wb") as out:
            self._server = subprocess.Popen(
                [str(AIRFLOW_BIN), "api-server", "--host", "127.0.0.1", "--port", str(port),
                 "--apps", "execution", "--workers", "1"],
                env=self.env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 120
        url = self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] + "health"
        while True:
            if self._server.poll() is not None:
                raise RuntimeError(f"airflow api-server exited:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"airflow api-server not up:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)

    def argv(self, url: str, compression: str, jobs: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.dag", url, compression, str(jobs)]

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            os.killpg(self._server.pid, signal.SIGTERM)
            try:
                self._server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait(timeout=10)
        remove_workdir(self.home)


def main(argv: Sequence[str] | None = None) -> int:
    url, compression, jobs = (sys.argv[1:] if argv is None else list(argv))[:3]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag = bag.get_dag(DAG_ID)
    if dag is None:
        print(json.dumps({"ok": False, "error": str(bag.import_errors)}))
        return 1
    conf: dict[str, Any] = {"destination_url": url, "server_name": "pg",
                            "compression": compression, "jobs": int(jobs),
                            "immediate_checkpoint": True}
    started = time.perf_counter()
    dag_run = dag.test(run_conf=conf, use_executor=True)
    seconds = time.perf_counter() - started
    state = str(dag_run.state)
    print(json.dumps({"ok": state == "success", "state": state, "seconds": seconds}))
    sys.stdout.flush()
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
