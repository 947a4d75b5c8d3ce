"""The Airflow layer end to end: real DAG runs against real PostgreSQL, S3 and Barman.

Why these checks: the promise is that the DAG's backup is one Barman restores with the same
rows, that any failure leaves the database out of backup mode and ``backup.info`` FAILED (and
the next run works), and that credentials stay inside the Airflow connections. ``dag.test()``
runs every task in this process, so a fault is injected by patching the engine's
``upload_chunk`` for one chunk; nothing else is mocked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_pgcloud.runner import steps
from airflow_provider_pgcloud.runner.sources import local
from tests.airflow_fixtures import (  # sets AIRFLOW_HOME; airflow itself is imported lazily
    AIRFLOW_ENV,
    AIRFLOW_HOME,
    DEADLINE_SECONDS,
    REPO_ROOT,
    Connections,
    airflow_cli,
    airflow_connections,
    airflow_home,
    base_env,
    connections_in_env,
    dagbag,
    execution_api,
    get_dag,
    migrate,
)
from tests.conftest import (
    CloudRestoreAndCheck,
    CloudStore,
    RestoreAndCheck,
    cloud_backup_list,
)
from tests.rig.azurite import AzuriteServer
from tests.rig.barman import backup_list
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import make_workdir, remove_workdir

if TYPE_CHECKING:
    from airflow.sdk import DAG

# fixtures, used by name
__all__ = ["airflow_connections", "airflow_home", "connections_in_env", "dagbag", "execution_api"]

GROUP = "pgcloud_backup"
UPLOAD = f"{GROUP}.upload_chunk"
STOP = f"{GROUP}.stop_backup_and_upload_label"
RETENTION = f"{GROUP}.apply_retention"
KEEPER_MODULE = "airflow_provider_pgcloud.runner.session"


# ------------------------------------------------------------------ helpers
def run_conf(bucket: str, **extra: Any) -> dict[str, Any]:
    return {"destination_url": f"s3://{bucket}/path", "server_name": "pg", **extra}


def run_dag(dag: DAG, conf: dict[str, Any]) -> Any:
    """``dag.test()`` with ``conf``; returns the DagRun (it does not raise on failure)."""
    return dag.test(run_conf=conf)


def task_states(dag_run: Any) -> dict[tuple[str, str | None], str]:
    """(task_id, rendered map index) -> state for every task instance of the run."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.run_id == dag_run.run_id,
                                       TaskInstance.dag_id == dag_run.dag_id)
        ).all()
        return {(ti.task_id, ti.rendered_map_index): str(ti.state) for ti in tis}


def xcom_values(dag_run: Any) -> list[str]:
    """Every XCom value the run stored, as stored (JSON text)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(XComModel.run_id == dag_run.run_id,
                                    XComModel.dag_id == dag_run.dag_id)
        ).all()
        return [json.dumps(row.value) for row in rows]


def asset_events(uri: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(source run id, extra) of each event recorded for the asset ``uri``."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri)
        ).all()
        return [(event.source_run_id, dict(event.extra or {})) for event in events]


def statuses(s3: S3Server, url: str) -> dict[str, dict[str, Any]]:
    """backup_id -> Barman's view of each backup under ``url``/pg (all statuses)."""
    return {b["backup_id"]: b for b in backup_list(s3, url, "pg")}


def read_info(s3: S3Server, bucket: str, backup_id: str) -> str:
    return s3.get_object(bucket, f"path/pg/base/{backup_id}/backup.info").decode()


def keeper_processes() -> list[str]:
    """Command lines of running keeper processes (each a list of its argv words)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if KEEPER_MODULE.encode() in argv:
                found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


def all_process_args() -> list[bytes]:
    args = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                args.append((entry / "cmdline").read_bytes())
    return args


def assert_database_released(pg: PgCluster) -> None:
    """No pgcloud session is left, PostgreSQL is not in backup mode, a new backup can start."""
    deadline = time.monotonic() + 15
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgcloud_backup'"
    while pg.execute(query)[0][0] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pg.execute(query)[0][0] == 0
    assert not pg.in_backup()
    with contextlib.closing(pg.connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backup_start('pgcloud test probe', true)")
        cur.execute("SELECT pg_backup_stop(false)")
    deadline = time.monotonic() + 15
    while keeper_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert keeper_processes() == []


def fail_once_for(name: str, *, after_upload: bool) -> tuple[Callable[..., Any], list[str]]:
    """A stand-in for steps.upload_chunk that fails the first call for chunk ``name``.

    With ``after_upload`` the object is fully stored before the failure (so a retry overwrites
    it); otherwise nothing is uploaded.
    """
    real = steps.upload_chunk
    calls: list[str] = []

    def upload_chunk(state: Any, chunk: Any, store: Any, **kwargs: Any) -> Any:
        calls.append(chunk.name)
        if chunk.name == name and calls.count(name) == 1:
            if after_upload:
                real(state, chunk, store, **kwargs)
            raise OSError(f"injected fault uploading {name}")
        return real(state, chunk, store, **kwargs)

    return upload_chunk, calls


@pytest.fixture
def conns(connections_in_env: Connections) -> Connections:
    return connections_in_env


@pytest.fixture
def bag(dagbag: Any, conns: Connections) -> Any:
    return dagbag


@pytest.fixture(autouse=True)
def _no_keeper_left() -> Iterator[None]:
    """No keeper outlives its run; the keepers' work dirs (left by the engine) are removed."""
    before = set(Path(tempfile.gettempdir()).glob("pgcloud-keeper-*"))
    yield
    deadline = time.monotonic() + 10
    while keeper_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert keeper_processes() == [], "a backup session keeper outlived its DAG run"
    for path in set(Path(tempfile.gettempdir()).glob("pgcloud-keeper-*")) - before:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ the example DAG's shape
def test_example_dag_form_and_shape(dagbag: Any) -> None:
    """Daily schedule, a trigger form with titles and descriptions, the designed task graph."""
    dag = get_dag(dagbag, "pgcloud_backup")
    assert dag.schedule == "@daily"
    params = dag.params
    expected = ["destination_url", "server_name", "backup_name", "tags", "cloud_provider",
                "compression", "jobs", "max_archive_size", "immediate_checkpoint",
                "retention_policy"]
    assert list(params.keys()) == expected
    for name in expected:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    assert params.get_param("cloud_provider").schema["enum"] == [
        "aws-s3", "azure-blob-storage", "google-cloud-storage"]
    assert params.get_param("compression").schema["enum"] == [
        "none", "gzip", "bzip2", "snappy", "lz4", "zstd"]

    start, upload = dag.get_task(f"{GROUP}.start_backup"), dag.get_task(UPLOAD)
    stop = dag.get_task(STOP)
    assert start.is_setup and stop.is_teardown and stop.on_failure_fail_dagrun
    assert upload.is_mapped and upload.map_index_template
    assert upload.upstream_task_ids == {start.task_id}
    assert stop.upstream_task_ids == {start.task_id, upload.task_id}
    assert dag.get_task(RETENTION).upstream_task_ids == {stop.task_id}  # after a DONE backup
    # no snapshot options: no snapshot task, one scheduling round trip less
    assert f"{GROUP}.take_disk_snapshots" not in dag.task_dict


# ------------------------------------------------------------------ end to end
def test_dag_backup_restores_with_barman(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    restore_and_check: RestoreAndCheck, caplog: pytest.LogCaptureFixture,
) -> None:
    """dag.test() of the example DAG -> Barman lists it DONE and restores the same rows."""
    caplog.set_level(logging.INFO, logger="pgcloud")
    pg.execute("CREATE TABLE IF NOT EXISTS dag_marks (run text)", dbname="app")
    pg.execute("INSERT INTO dag_marks VALUES (%s)", (uuid.uuid4().hex,), dbname="app")
    conf = run_conf(bucket, compression="gzip", max_archive_size="8MB", immediate_checkpoint=True,
                    backup_name="dag-nightly", tags=["team,db"],
                    retention_policy="REDUNDANCY 2")  # runs, deletes nothing
    started = time.monotonic()
    dag_run = run_dag(get_dag(bag, "pgcloud_backup"), conf)
    elapsed = time.monotonic() - started
    assert str(dag_run.state) == "success", caplog.text[-5000:]

    states = task_states(dag_run)
    labels = sorted(str(label) for (task, label) in states if task == UPLOAD)
    assert len(labels) >= 3 and "data" in labels and "data_0001" in labels, labels
    assert all(state == "success" for state in states.values()), states

    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["DONE"]
    backup_id = next(iter(backups))
    assert backups[backup_id]["backup_name"] == "dag-nightly"
    keys = s3.list_objects(bucket, f"path/pg/base/{backup_id}/")
    assert sum(1 for key in keys if key.endswith(".tar.gz")) == len(labels) + 1  # + the label

    lines = [r.getMessage() for r in caplog.records if r.name == "pgcloud"]
    for label in labels:  # per chunk: bytes done of planned, and MB/s
        assert any(line.startswith(f"{label} stored as") and " of " in line and "MB/s" in line
                   for line in lines), (label, lines)
    assert any(line.startswith(f"backup {backup_id}: ") and "planned" in line and "MB/s" in line
               for line in lines), lines  # the total, at stop
    assert any(line.startswith(f"backup {backup_id} DONE") for line in lines), lines

    events = asset_events(f"s3://{bucket}/path/pg")
    assert (dag_run.run_id, {"destination_url": f"s3://{bucket}/path", "server_name": "pg",
                             "backup_id": backup_id}) in events
    assert_database_released(pg)
    restore_and_check(f"s3://{bucket}/path", "pg", backup_id, pg)
    print(f"example DAG run took {elapsed:.1f}s")


def test_retention_runs_only_after_a_done_backup(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """REDUNDANCY 1 in the group: a failed backup deletes nothing; the next DONE one deletes
    the older DONE backup (and leaves the FAILED one, as Barman does)."""
    caplog.set_level(logging.INFO, logger="pgcloud")
    dag, conf, url = get_dag(bag, "pgcloud_test_retention"), run_conf(bucket), f"s3://{bucket}/path"
    assert str(run_dag(dag, conf).state) == "success"
    [first] = statuses(s3, url)

    real = steps.upload_chunk
    faulty, _ = fail_once_for("data_0001", after_upload=False)
    monkeypatch.setattr(steps, "upload_chunk", faulty)
    failed = run_dag(dag, conf)
    monkeypatch.setattr(steps, "upload_chunk", real)
    assert str(failed.state) == "failed"
    assert task_states(failed)[(RETENTION, None)] in ("upstream_failed", "skipped")
    assert {b: v["status"] for b, v in statuses(s3, url).items()}[first] == "DONE"

    done = run_dag(dag, conf)
    assert str(done.state) == "success", caplog.text[-3000:]
    left = {b: v["status"] for b, v in statuses(s3, url).items()}
    assert first not in left
    assert sorted(left.values()) == ["DONE", "FAILED"]
    assert f"backup {first}: OBSOLETE" in caplog.text


def test_fault_in_one_chunk_fails_backup_then_rerun_succeeds(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One mapped upload fails: FAILED with the reason, database released, run failed; the
    next run of the same DAG succeeds. (The example DAG retries uploads after 30 s; this one,
    from the same factory, does not.)"""
    dag = get_dag(bag, "pgcloud_test_no_retry")
    conf = run_conf(bucket)
    real = steps.upload_chunk
    faulty, calls = fail_once_for("data_0001", after_upload=False)
    monkeypatch.setattr(steps, "upload_chunk", faulty)
    dag_run = run_dag(dag, conf)
    assert str(dag_run.state) == "failed"
    states = task_states(dag_run)
    assert states[(UPLOAD, "data_0001")] == "failed"
    assert states[(STOP, None)] == "failed"
    assert len(calls) >= 3  # the other chunks still ran

    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["FAILED"]
    failed_id = next(iter(backups))
    info = read_info(s3, bucket, failed_id)
    assert "status=FAILED" in info
    assert "error=failure uploading data (1 of" in info and "data_0001)" in info
    assert_database_released(pg)

    monkeypatch.setattr(steps, "upload_chunk", real)  # (undo() would drop the connections too)
    rerun = run_dag(dag, conf)
    assert str(rerun.state) == "success"
    backups = statuses(s3, f"s3://{bucket}/path")
    assert sorted(b["status"] for b in backups.values()) == ["DONE", "FAILED"]
    assert backups[failed_id]["status"] == "FAILED"
    assert_database_released(pg)


def test_retried_chunk_reuploads_same_key(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    restore_and_check: RestoreAndCheck, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mapped upload that failed after storing its object is retried: same key, run OK."""
    faulty, calls = fail_once_for("data_0001", after_upload=True)
    monkeypatch.setattr(steps, "upload_chunk", faulty)
    dag_run = run_dag(get_dag(bag, "pgcloud_test_retry"), run_conf(bucket))
    assert str(dag_run.state) == "success"
    assert calls.count("data_0001") == 2

    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["DONE"]
    backup_id = next(iter(backups))
    keys = [k for k in s3.list_objects(bucket, f"path/pg/base/{backup_id}/") if "data_0001" in k]
    assert keys == [f"path/pg/base/{backup_id}/data_0001.tar.gz"]
    restore_and_check(f"s3://{bucket}/path", "pg", backup_id, pg)


def test_keeper_deadline_aborts_backup(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keeper nobody comes back to before its deadline aborts the database backup itself;
    the teardown then records FAILED."""
    real = steps.upload_chunk
    seen: list[tuple[int, int, float]] = []  # keepers at first upload, keepers later, seconds

    def stalled(state: Any, chunk: Any, store: Any, **kwargs: Any) -> Any:
        if not seen:  # the first upload outlives the keeper's deadline; nobody calls stop
            alive, started = len(keeper_processes()), time.monotonic()
            while keeper_processes() and time.monotonic() - started < DEADLINE_SECONDS + 15:
                time.sleep(0.2)
            seen.append((alive, len(keeper_processes()), time.monotonic() - started))
        return real(state, chunk, store, **kwargs)

    monkeypatch.setattr(steps, "upload_chunk", stalled)
    dag_run = run_dag(get_dag(bag, "pgcloud_test_deadline"), run_conf(bucket))
    [(alive, later, _)] = seen
    assert (alive, later) == (1, 0)  # the keeper ended by itself, with the database session
    assert str(dag_run.state) == "failed"
    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["FAILED"]
    info = read_info(s3, bucket, next(iter(backups)))
    assert "error=failure uploading data" in info  # the uploads found the keeper gone
    assert_database_released(pg)


def test_snapshot_options_fail_clearly(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """Snapshot options with compression are refused as barman-cloud-backup refuses them,
    before anything starts. (Snapshot backups themselves: tests/test_snapshot_dag.py.)"""
    dag_run = run_dag(get_dag(bag, "pgcloud_test_snapshot"), run_conf(bucket))
    output = capfd.readouterr()
    assert str(dag_run.state) == "failed"
    message = "Compression options cannot be used with snapshot backups"
    assert message in caplog.text + output.out + output.err
    assert statuses(s3, f"s3://{bucket}/path") == {}
    assert_database_released(pg)


def test_single_task_operator_restores_with_barman(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    restore_and_check: RestoreAndCheck,
) -> None:
    """PgCloudBackupOperator takes the whole backup in one task, emits the asset."""
    dag_run = run_dag(get_dag(bag, "pgcloud_test_single"), run_conf(bucket))
    assert str(dag_run.state) == "success"
    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["DONE"]
    backup_id = next(iter(backups))
    keys = s3.list_objects(bucket, f"path/pg/base/{backup_id}/")
    assert f"path/pg/base/{backup_id}/data.tar.zst" in keys
    tagging = s3.client().get_object_tagging(
        Bucket=bucket, Key=f"path/pg/base/{backup_id}/data.tar.zst")
    assert {(t["Key"], t["Value"]) for t in tagging["TagSet"]} == {
        ("team", "db"), ("kind", "nightly")}
    assert [run for run, _ in asset_events(f"s3://{bucket}/path/pg")] == [dag_run.run_id]
    assert_database_released(pg)
    restore_and_check(f"s3://{bucket}/path", "pg", backup_id, pg)


def test_streamed_backup_group_restores_with_barman(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    restore_and_check: RestoreAndCheck,
) -> None:
    """source="streaming": one task takes the backup over the replication protocol, the
    end task finds it DONE, the verify task checks it; Barman restores it."""
    dag_run = run_dag(get_dag(bag, "pgcloud_test_streaming"), run_conf(bucket))
    assert str(dag_run.state) == "success"
    assert {task: state for (task, _), state in task_states(dag_run).items()} == {
        f"{GROUP}.backup": "success", f"{GROUP}.end_backup": "success",
        f"{GROUP}.verify_backup": "success"}
    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["DONE"]
    backup_id = next(iter(backups))
    assert f"path/pg/base/{backup_id}/data.tar.zst" in s3.list_objects(bucket, "path/")
    restore_and_check(f"s3://{bucket}/path", "pg", backup_id, pg)


def test_streamed_backup_whose_task_died_ends_failed(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backup task that dies mid-stream without recording anything (as a killed worker
    would) leaves STARTED; the end task records FAILED and the DAG run fails."""
    from airflow_provider_pgcloud.runner import stream_backup

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("worker lost")

    monkeypatch.setattr(stream_backup, "record_failure", lambda *args: lambda *a: None)
    monkeypatch.setattr(stream_backup, "upload_stream", dies)
    dag_run = run_dag(get_dag(bag, "pgcloud_test_streaming"), run_conf(bucket))
    assert str(dag_run.state) == "failed"
    [backup_id] = statuses(s3, f"s3://{bucket}/path")
    info = read_info(s3, bucket, backup_id)
    assert "status=FAILED" in info
    assert "the backup task ended without finishing the backup" in info
    assert not pg.in_backup()


def test_no_secret_in_xcom_logs_or_process_arguments(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PostgreSQL password and the S3 secret key never reach XCom, task logs or argv."""
    caplog.set_level(logging.DEBUG)
    real = steps.upload_chunk
    leaked: list[bytes] = []
    secrets = [secret.encode() for secret in conns.secrets]

    def watching(state: Any, chunk: Any, store: Any, **kwargs: Any) -> Any:
        keepers = keeper_processes()  # while the keeper holds the session
        assert keepers, "no keeper process while uploading"
        leaked.extend(a for a in all_process_args() if any(s in a for s in secrets))
        return real(state, chunk, store, **kwargs)

    monkeypatch.setattr(steps, "upload_chunk", watching)
    dag_run = run_dag(get_dag(bag, "pgcloud_backup"), run_conf(bucket, compression="snappy"))
    output = capfd.readouterr()
    assert str(dag_run.state) == "success"
    assert leaked == []
    values = xcom_values(dag_run)
    assert values and any("data" in value for value in values)
    for secret in conns.secrets:
        assert all(secret not in value for value in values)
        assert secret not in output.out and secret not in output.err
        assert secret not in caplog.text
    assert "stored as" in caplog.text  # the logs were captured at all
    assert all(len(value) < 20_000 for value in values)  # descriptors, not file lists


def test_tasks_in_separate_processes_write_task_logs(
    bag: Any, conns: Connections, execution_api: str, s3: S3Server, pg: PgCluster, bucket: str,
    restore_and_check: RestoreAndCheck, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As deployed: the LocalExecutor runs every task in its own supervised process, uploads
    concurrently. The keeper carries the session across them; the task log files show the
    progress lines and hold no secret."""
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", execution_api)
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "4")
    dag = get_dag(bag, "pgcloud_backup")
    conf = run_conf(bucket, compression="zstd", max_archive_size="8MB", immediate_checkpoint=True)
    dag_run = dag.test(run_conf=conf, use_executor=True)
    assert str(dag_run.state) == "success", task_states(dag_run)

    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["DONE"]
    backup_id = next(iter(backups))
    logs = {
        path.relative_to(AIRFLOW_HOME / "logs").as_posix(): path.read_text()
        for path in (AIRFLOW_HOME / "logs").rglob("*.log") if dag_run.run_id in str(path)
    }
    uploads = [text for name, text in logs.items() if f"task_id={UPLOAD}/" in name]
    stops = [text for name, text in logs.items() if f"task_id={STOP}/" in name]
    assert len(uploads) >= 3 and len(stops) == 1, sorted(logs)
    assert all(" stored as " in text and "MB/s" in text for text in uploads)
    assert f"backup {backup_id}: " in stops[0] and "MB/s" in stops[0]
    for secret in conns.secrets:
        assert all(secret not in text for text in logs.values())
    assert_database_released(pg)
    restore_and_check(f"s3://{bucket}/path", "pg", backup_id, pg)


# ------------------------------------------------------------------ the command line
def test_airflow_dags_test_cli_restores_with_barman(
    conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    restore_and_check: RestoreAndCheck,
) -> None:
    """`airflow dags test pgcloud_backup -c ...` with env connections, as a user runs it."""
    home = make_workdir("airflow-cli")
    try:
        env = {**base_env(), **AIRFLOW_ENV, **conns.env, "AIRFLOW_HOME": str(home),
               "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags")}
        migrate(env)
        conf = {"destination_url": f"s3://{bucket}/path", "server_name": "pg",
                "compression": "gzip", "max_archive_size": "8MB", "immediate_checkpoint": True}
        result = airflow_cli("dags", "test", "pgcloud_backup", "-c", json.dumps(conf), env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-5000:]
        for secret in conns.secrets:
            assert secret not in output
        assert "MB/s" in output
    finally:
        remove_workdir(home)
    backups = statuses(s3, f"s3://{bucket}/path")
    assert [b["status"] for b in backups.values()] == ["DONE"]
    restore_and_check(f"s3://{bucket}/path", "pg", next(iter(backups)), pg)


# ------------------------------------------------------------------ connections -> engine
def test_postgres_conninfo_keeps_password_apart(
    airflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_pgcloud.hooks import postgres_conninfo

    secret = uuid.uuid4().hex
    monkeypatch.setenv("AIRFLOW_CONN_PG_UNIT", json.dumps({
        "conn_type": "postgres", "host": "db.example", "port": 6543, "login": "backup",
        "password": secret, "schema": "appdb",
        "extra": {"sslmode": "require", "password": "x", "cursor": "dictcursor"},
    }))
    conninfo, password = postgres_conninfo("pg_unit")
    assert password == secret
    assert secret not in conninfo and "password" not in conninfo and "cursor" not in conninfo
    import psycopg2.extensions

    assert psycopg2.extensions.parse_dsn(conninfo) == {
        "host": "db.example", "port": "6543", "user": "backup", "dbname": "appdb",
        "sslmode": "require"}


@pytest.mark.parametrize("provider", ["azure-blob-storage", "google-cloud-storage"])
def test_dag_backup_to_azure_and_gcs_restores_with_barman(
    provider: str, request: pytest.FixtureRequest, bag: Any, conns: Connections, s3: S3Server,
    pg: PgCluster, cloud_restore_and_check: CloudRestoreAndCheck,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The example DAG writes to Azurite through WasbHook (wasb_default) and to the GCS
    emulator through GCSHook (google_cloud_default); Barman restores both, rows intact."""
    caplog.set_level(logging.DEBUG)
    store: CloudStore
    if provider == "azure-blob-storage":
        azurite: AzuriteServer = request.getfixturevalue("azurite")
        store, url = azurite, azurite.url(request.getfixturevalue("azure_container"), "path")
        conn = {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string()}}
        monkeypatch.setenv("AIRFLOW_CONN_WASB_DEFAULT", json.dumps(conn))
        secret = azurite.key
    else:
        store = request.getfixturevalue("gcs_emulator")
        url = store.url(request.getfixturevalue("gcs_bucket"), "path")
        conn = {"conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": "pgcloud-test"}}
        monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(conn))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", store.endpoint)  # where, not who
        secret = conns.secrets[0]
    for key in [k for k in os.environ if k.startswith(("AZURE_", "GOOGLE_"))]:
        monkeypatch.delenv(key)
    conf = {"destination_url": url, "server_name": "pg", "cloud_provider": provider,
            "compression": "zstd", "max_archive_size": "8MB", "immediate_checkpoint": True}
    dag_run = run_dag(get_dag(bag, "pgcloud_backup"), conf)
    assert str(dag_run.state) == "success", caplog.text[-5000:]
    backups = cloud_backup_list(store, url, "pg", s3)
    assert [b["status"] for b in backups] == ["DONE"]
    backup_id = backups[0]["backup_id"]
    assert [run for run, _ in asset_events(f"{url}/pg")] == [dag_run.run_id]
    assert secret not in caplog.text
    assert all(secret not in value for value in xcom_values(dag_run))
    assert_database_released(pg)
    cloud_restore_and_check(store, url, "pg", backup_id, pg)


def test_unknown_cloud_provider_is_refused(airflow_home: Path) -> None:
    from airflow_provider_pgcloud.operators import StartBackupOperator

    op = StartBackupOperator(task_id="start", destination_url="ftp://b/p", server_name="pg",
                             cloud_provider="ftp", wasb_conn_id="my_wasb", gcp_conn_id="my_gcp")
    assert (op.wasb_conn_id, op.gcp_conn_id) == ("my_wasb", "my_gcp")
    with pytest.raises(ValueError, match="unknown cloud_provider 'ftp'"):
        op.backup_options()


def test_rendered_values_become_engine_options(airflow_home: Path) -> None:
    """Templated fields render as text; the operator reads them back into engine types."""
    from airflow_provider_pgcloud.operators import StartBackupOperator

    op = StartBackupOperator(
        task_id="start", destination_url="s3://b/p", server_name="pg", compression="none",
        jobs="3", max_archive_size="8MB", immediate_checkpoint="True", backup_name="None",
        tags="['team,db', 'kind,nightly']",
    )
    options = op.backup_options()
    assert (options.compression, options.jobs, options.max_archive_size) == (None, 3, 8 << 20)
    assert options.immediate_checkpoint is True and options.backup_name is None
    assert options.store.tags == (("team", "db"), ("kind", "nightly"))
    assert os.environ["AIRFLOW_HOME"] == AIRFLOW_ENV["AIRFLOW_HOME"]


# ------------------------------------------------------------------ verify as a task
def test_verify_task_passes_then_names_a_corrupted_file(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backup group's verify task checks the fresh backup; after one archive is damaged,
    a verify task fails and names the damaged file."""
    from tests.test_verify import _corrupt_one_file

    conf = run_conf(bucket)
    dag_run = run_dag(get_dag(bag, "pgcloud_test_verify"), conf)
    assert str(dag_run.state) == "success", caplog.text[-5000:]
    assert task_states(dag_run)[(f"{GROUP}.verify_backup", None)] == "success"

    [backup_id] = statuses(s3, conf["destination_url"])
    prefix = f"path/pg/base/{backup_id}"
    [victim] = [k for k in s3.list_objects(bucket, prefix) if k.endswith("/data.tar.gz")]
    damaged, name = _corrupt_one_file(s3.get_object(bucket, victim))
    s3.client().put_object(Bucket=bucket, Key=victim, Body=damaged)

    caplog.clear()
    failed = run_dag(get_dag(bag, "pgcloud_test_verify_only"), {**conf, "backup_id": backup_id})
    assert str(failed.state) == "failed"
    assert name in caplog.text


def test_upload_tasks_fail_fast_when_the_database_session_is_lost(
    bag: Any, conns: Connections, s3: S3Server, pg: PgCluster, bucket: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The backup's session is killed as the first upload starts: that upload fails at once
    (before storing its object) with the reason, the others fail too, and the backup is FAILED."""
    real_walk = local.walk
    killed: list[int] = []

    def walk_after_killing_the_session(*args: Any, **kwargs: Any) -> Any:
        if not killed:
            rows = pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = 'pgcloud_backup'")
            killed.append(len(rows))
        return real_walk(*args, **kwargs)

    monkeypatch.setattr(local, "walk", walk_after_killing_the_session)
    dag_run = run_dag(get_dag(bag, "pgcloud_test_no_retry"), run_conf(bucket))
    assert killed == [1]
    assert str(dag_run.state) == "failed"
    uploads = {label: state for (task, label), state in task_states(dag_run).items()
               if task == UPLOAD}
    assert uploads and set(uploads.values()) == {"failed"}, uploads
    [backup_id] = statuses(s3, f"s3://{bucket}/path")
    assert not any(key.endswith(".tar.gz")
                   for key in s3.list_objects(bucket, f"path/pg/base/{backup_id}/"))
    assert "status=FAILED" in read_info(s3, bucket, backup_id)
    assert_database_released(pg)
