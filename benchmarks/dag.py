"""The same backup through Airflow: the example DAG `pgcloud_backup` under a real scheduler.

`Airflow` (used by run.py) sets up what a small deployment runs: a PostgreSQL metadata database
(its own cluster, so the backed-up cluster does not change between runs), `airflow db migrate`,
then an execution API server, a DAG processor and a scheduler with the LocalExecutor (every task
in its own supervised process, mapped uploads in parallel). It uses the settings the README
recommends for backup DAGs (`SETTINGS`). Each measured run is then

    python -m benchmarks.dag DESTINATION_URL COMPRESSION JOBS

which sets `default_pool` to JOBS slots (the uploads run JOBS at a time, as the runner's -J),
triggers the DAG with `airflow dags trigger`, waits for the run to finish and prints one JSON
line: its state and seconds, from the run's start to its end as the scheduler records them (the
duration Airflow's UI shows; triggering and queueing are not counted). Credentials reach the
tasks only through the `pgcloud_postgres` and `aws_default` connections (AIRFLOW_CONN_*).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psycopg2

from tests.rig.pgcluster import PgCluster, init_cluster
from tests.rig.s3server import S3Server
from tests.rig.tools import (
    REPO_ROOT,
    free_port,
    make_workdir,
    remove_workdir,
    stop_process_group,
)

AIRFLOW_BIN = Path(sys.executable).parent / "airflow"
DAG_ID = "pgcloud_backup"
MAX_PARALLELISM = 4
"""LocalExecutor worker processes: the largest -J measured; default_pool narrows it per run."""

SETTINGS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
}
"""The README's "Airflow settings for backup DAGs": an idle scheduler looks for finished tasks
every 0.2 s instead of every 1 s, and a task supervisor that misses its task's exit notices it
after 1 s instead of 5 s. With Airflow's defaults each task adds up to a second more."""

RUN_TIMEOUT_S = 3600


class Airflow:
    """A throwaway Airflow deployment: metadata database, API server, DAG processor, scheduler."""

    def __init__(self, pg: PgCluster, s3: S3Server) -> None:
        self.home = make_workdir("bench-airflow")
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.metadata: PgCluster | None = None
        try:
            self.metadata = init_cluster(make_workdir("bench-airflow-db"), 15, tablespace=False,
                                         remove_workdir_on_stop=True)
            self.metadata.execute("CREATE DATABASE airflow")
            self._port = free_port()
            self.env = self._environment(pg, s3, self.metadata, self._port)
            self._start()
        except BaseException:
            self.stop()
            raise

    def _environment(self, pg: PgCluster, s3: S3Server, metadata: PgCluster,
                     port: int) -> dict[str, str]:
        assert pg.password and metadata.password, "rig clusters require a password over TCP"
        postgres = {"conn_type": "postgres", "host": pg.host, "port": pg.port,
                    "login": pg.user, "password": pg.password, "schema": "postgres"}
        aws = {"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
               "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}
        database = (f"postgresql+psycopg2://{metadata.user}:{metadata.password}"
                    f"@{metadata.host}:{metadata.port}/airflow")
        return {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "PG", "AIRFLOW", "AZURE_", "GOOGLE_"))},
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(MAX_PARALLELISM),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW_CONN_PGCLOUD_POSTGRES": json.dumps(postgres),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
            "PYTHONPATH": str(REPO_ROOT),
            **SETTINGS,
        }

    def _airflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(AIRFLOW_BIN), *args], env=self.env, cwd=REPO_ROOT,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = (self.home / f"{name}.log").open("wb")
        self._logs.append(out)
        process = subprocess.Popen(
            [str(AIRFLOW_BIN), name, *args], env=self.env, cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes[name] = process
        return process

    def _start(self) -> None:
        self._airflow("db", "migrate")
        self._spawn("api-server", "--host", "127.0.0.1", "--port", str(self._port),
                    "--apps", "execution",
                    "--workers", "1")
        self._spawn("dag-processor")
        self._spawn("scheduler")
        self._wait("the execution API server", self._api_up)
        self._wait(f"the DAG {DAG_ID} to be parsed", self._dag_known)

    def _wait(self, what: str, ready: Any, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited: see {self.home}/{name}.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: see {self.home}")
            time.sleep(0.5)

    def _api_up(self) -> bool:
        url = self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] + "health"
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.HTTPError:
            return True  # it answers
        except OSError:
            return False
        return True

    def _dag_known(self) -> bool:
        with contextlib.closing(_metadata(self.env)) as db, db.cursor() as cur:
            cur.execute("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_paused", (DAG_ID,))
            return cur.fetchone() is not None

    def pause(self) -> None:
        """Freeze every Airflow process (SIGSTOP) while other tools are measured: an idle
        scheduler, DAG processor and API server still take a fifth of a core here."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signum)

    def argv(self, url: str, compression: str, jobs: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.dag", url, compression, str(jobs)]

    def stop(self) -> None:
        self.resume()  # a stopped process cannot act on SIGTERM
        for process in reversed(self._processes.values()):
            stop_process_group(process, grace=30)
        for out in self._logs:
            out.close()
        if self.metadata is not None:
            self.metadata.stop()
        remove_workdir(self.home)


def _metadata(env: dict[str, str]) -> Any:
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("postgresql+psycopg2", "postgresql")
    return psycopg2.connect(url)


def main(argv: Sequence[str] | None = None) -> int:
    url, compression, jobs = (sys.argv[1:] if argv is None else list(argv))[:3]
    env = dict(os.environ)
    conf = {"destination_url": url, "server_name": "pg", "compression": compression,
            "jobs": int(jobs), "immediate_checkpoint": True}
    run_id = f"bench__{uuid.uuid4().hex}"
    for args in (["pools", "set", "default_pool", jobs, "uploads run -J at a time"],
                 ["dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf)]):
        done = subprocess.run([str(AIRFLOW_BIN), *args], env=env, capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            print(json.dumps({"ok": False, "error": done.stderr[-2000:]}))
            return 1
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with contextlib.closing(_metadata(env)) as db:
        db.autocommit = True
        while True:
            with db.cursor() as cur:
                cur.execute("SELECT state, start_date, end_date FROM dag_run WHERE run_id = %s",
                            (run_id,))
                row = cur.fetchone()
            if row and row[0] in ("success", "failed"):
                break
            if time.monotonic() > deadline:
                print(json.dumps({"ok": False, "error": f"run {run_id} still {row}"}))
                return 1
            time.sleep(0.2)
    state, started, ended = row
    seconds = (ended - started).total_seconds()
    print(json.dumps({"ok": state == "success", "state": state, "seconds": seconds}))
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
