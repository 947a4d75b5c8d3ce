"""A throwaway Airflow deployment on loopback, as a small production one runs.

Why not `dag.test()`: it runs every task in the test's own process, so it cannot show that a
task runs on the worker it is queued for, as another OS user, with nothing shared but the
metadata database, the broker and the connections. This starts the real pieces: a PostgreSQL
metadata database (its own cluster), `airflow db migrate`, the execution API server, the DAG
processor and the scheduler, with the LocalExecutor (every task in its own supervised process)
or the CeleryExecutor: a Redis broker (Debian's redis-server) and one `airflow celery worker`
per `CeleryWorker`, each listening on its own queue as its own OS user, as workers on separate
hosts would. Connections reach the tasks only as AIRFLOW_CONN_* variables.

Used by the distributed-executor test and by the benchmark's DAG rows (benchmarks/dag.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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

SETTINGS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
}
"""The README's "Airflow settings for backup DAGs": an idle scheduler looks for finished tasks
every 0.2 s instead of every 1 s, and a task supervisor that misses its task's exit notices it
after 1 s instead of 5 s. With Airflow's defaults each task adds up to a second more."""


@dataclass(frozen=True)
class CeleryWorker:
    """One Celery worker: it takes only `queue`'s tasks and runs them as OS user `user`."""

    name: str
    queue: str
    user: str
    concurrency: int = 2


def postgres_connection(pg: PgCluster) -> dict[str, Any]:
    """The Airflow connection (AIRFLOW_CONN_* JSON) of a rig cluster, over TCP."""
    assert pg.password, "rig clusters require a password over TCP"
    return {"conn_type": "postgres", "host": pg.host, "port": pg.port, "login": pg.user,
            "password": pg.password, "schema": "postgres"}


def aws_connection(s3: S3Server) -> dict[str, Any]:
    """The Airflow connection of the rig's S3 server."""
    return {"conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
            "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}


class AirflowDeployment:
    """Metadata database, API server, DAG processor, scheduler, and a broker and workers."""

    def __init__(self, *, dags_folder: Path, dag_ids: Sequence[str],
                 connections: Mapping[str, Mapping[str, Any]],
                 executor: str = "LocalExecutor", parallelism: int = 4,
                 celery_workers: Sequence[CeleryWorker] = (),
                 environment: Mapping[str, str] | None = None) -> None:
        self.home = make_workdir("airflow")
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.metadata: PgCluster | None = None
        self.workers = tuple(celery_workers)
        try:
            self.metadata = init_cluster(make_workdir("airflow-db"), 15, tablespace=False,
                                         remove_workdir_on_stop=True)
            self.metadata.execute("CREATE DATABASE airflow")
            self._port = free_port()
            self.env = self._environment(dags_folder, connections, executor, parallelism,
                                         environment or {})
            self._start(dag_ids)
        except BaseException:
            self.stop()
            raise

    def _environment(self, dags_folder: Path, connections: Mapping[str, Mapping[str, Any]],
                     executor: str, parallelism: int,
                     environment: Mapping[str, str]) -> dict[str, str]:
        metadata = self.metadata
        assert metadata is not None and metadata.password
        database = (f"postgresql+psycopg2://{metadata.user}:{metadata.password}"
                    f"@{metadata.host}:{metadata.port}/airflow")
        env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "PG", "AIRFLOW", "AZURE_", "GOOGLE_"))},
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self._port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "PYTHONPATH": str(REPO_ROOT),
            **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)
               for conn_id, conn in connections.items()},
            **SETTINGS,
            **environment,
        }
        if executor == "CeleryExecutor":
            redis_port = free_port()
            self._spawn("redis", ["redis-server", "--port", str(redis_port), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no",
                                  "--dir", str(self.home)], env)
            env["AIRFLOW__CELERY__BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + database.replace("+psycopg2", "")
        return env

    def airflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an `airflow` command against the deployment; raise with its stderr if it fails."""
        done = subprocess.run([str(AIRFLOW_BIN), *args], env=self.env, cwd=REPO_ROOT,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]
               ) -> subprocess.Popen[bytes]:
        out = (self.home / f"{name}.log").open("wb")
        self._logs.append(out)
        process = subprocess.Popen(argv, env=dict(env), cwd=self.home, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._processes[name] = process
        return process

    def _start(self, dag_ids: Sequence[str]) -> None:
        self.airflow("db", "migrate")
        airflow = str(AIRFLOW_BIN)
        self._spawn("api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port",
                                   str(self._port), "--apps", "execution", "--workers", "1"],
                    self.env)
        self._spawn("dag-processor", [airflow, "dag-processor"], self.env)
        self._spawn("scheduler", [airflow, "scheduler"], self.env)
        for worker in self.workers:
            self._start_worker(worker)
        self._wait("the execution API server", self._api_up)
        for dag_id in dag_ids:
            self._wait(f"the DAG {dag_id} to be parsed", functools.partial(self._dag_known,
                                                                           dag_id))

    def worker_log_folder(self, worker: CeleryWorker) -> Path:
        """Where `worker` writes its task logs (each worker its own, as on separate hosts)."""
        return self.home / f"logs-{worker.name}"

    def _start_worker(self, worker: CeleryWorker) -> None:
        """`airflow celery worker` as `worker.user`, in a home and log folder of its own."""
        account = pwd.getpwnam(worker.user)
        home = self.home / f"home-{worker.name}"
        for directory in (home, self.worker_log_folder(worker)):
            directory.mkdir()
            os.chown(directory, account.pw_uid, account.pw_gid)
        env = {**self.env, "HOME": str(home),
               "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.worker_log_folder(worker))}
        self._spawn(f"worker-{worker.name}", [
            "runuser", "-u", worker.user, "--", str(AIRFLOW_BIN), "celery", "worker",
            "--queues", worker.queue, "--concurrency", str(worker.concurrency),
            "--celery-hostname", f"{worker.name}@%h", "--skip-serve-logs",
            "--pid", str(home / "worker.pid"), "--without-gossip", "--without-mingle",
        ], env)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited: see {self.home}/{name}.log\n"
                                       + self.log_tail(name))
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: see {self.home}")
            time.sleep(0.5)

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def _api_up(self) -> bool:
        url = self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] + "health"
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.HTTPError:
            return True  # it answers
        except OSError:
            return False
        return True

    def _dag_known(self, dag_id: str) -> bool:
        with contextlib.closing(metadata_database(self.env)) as db, db.cursor() as cur:
            cur.execute("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_paused", (dag_id,))
            return cur.fetchone() is not None

    def run(self, dag_id: str, conf: Mapping[str, Any] | None = None,
            timeout: float = 900) -> DagRunResult:
        """Trigger `dag_id` and wait for its run to end."""
        return run_dag(self.env, dag_id, conf, timeout)

    def pause(self) -> None:
        """Freeze every process (SIGSTOP), e.g. while other tools are measured: an idle
        scheduler, DAG processor and API server still take a fifth of a core here."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signum)

    def stop(self) -> None:
        self.resume()  # a stopped process cannot act on SIGTERM
        for process in reversed(self._processes.values()):
            stop_process_group(process, grace=30)
        for out in self._logs:
            out.close()
        if self.metadata is not None:
            self.metadata.stop()
        remove_workdir(self.home)


@dataclass(frozen=True)
class DagRunResult:
    """How a DAG run ended: its state, its duration as the scheduler recorded it, its tasks."""

    run_id: str
    state: str | None
    seconds: float | None
    tasks: dict[str, tuple[str | None, str | None]]
    """task_id (map index appended to mapped ones) -> (state, queue)"""

    @property
    def ok(self) -> bool:
        return self.state == "success"


def metadata_database(env: Mapping[str, str]) -> Any:
    """A psycopg2 connection to the deployment's metadata database."""
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("postgresql+psycopg2", "postgresql")
    return psycopg2.connect(url)


def trigger_dag(env: Mapping[str, str], dag_id: str, conf: Mapping[str, Any] | None = None
                ) -> str:
    """`airflow dags trigger` with the deployment's `env`; returns the run's ID."""
    run_id = f"test__{uuid.uuid4().hex}"
    done = subprocess.run([str(AIRFLOW_BIN), "dags", "trigger", dag_id, "--run-id", run_id,
                           "--conf", json.dumps(dict(conf or {}))],
                          env=dict(env), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"airflow dags trigger {dag_id} failed:\n{done.stderr[-2000:]}")
    return run_id


def wait_for_run(env: Mapping[str, str], run_id: str, timeout: float = 900) -> DagRunResult:
    """Wait for the run's end. A run still going after `timeout` seconds is a result whose
    state says so (`running`, `queued`), not an exception: callers report it."""
    deadline = time.monotonic() + timeout
    with contextlib.closing(metadata_database(env)) as db:
        db.autocommit = True
        while True:
            with db.cursor() as cur:
                cur.execute("SELECT state, start_date, end_date FROM dag_run WHERE run_id = %s",
                            (run_id,))
                row = cur.fetchone()
            if row and row[0] in ("success", "failed"):
                break
            if time.monotonic() > deadline:
                return DagRunResult(run_id, row[0] if row else None, None, {})
            time.sleep(0.2)
        with db.cursor() as cur:
            cur.execute("SELECT task_id, map_index, state, queue FROM task_instance"
                        " WHERE run_id = %s", (run_id,))
            tasks = {task if index < 0 else f"{task}[{index}]": (state, queue)
                     for task, index, state, queue in cur.fetchall()}
    state, started, ended = row
    return DagRunResult(run_id, state, (ended - started).total_seconds(), tasks)


def run_dag(env: Mapping[str, str], dag_id: str, conf: Mapping[str, Any] | None = None,
            timeout: float = 900) -> DagRunResult:
    """Trigger `dag_id` and wait for its run to end."""
    return wait_for_run(env, trigger_dag(env, dag_id, conf), timeout)
