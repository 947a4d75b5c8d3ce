"""What happens when things break mid-backup: fail fast, record FAILED, leave nothing running."""

from __future__ import annotations

import subprocess
import time

from tests.runner_cli import REPO, RUNNER, runner_env


def _backup_pid(pg, deadline: float) -> int:
    while time.monotonic() < deadline:
        rows = pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                          "'pgcloud_backup'")
        if rows and pg.in_backup():
            return int(rows[0][0])
        time.sleep(0.1)
    raise AssertionError("the backup never started")


def test_killed_backup_session_is_detected_within_the_keepalive_interval(s3, pg, bucket):
    # 1 MiB/s makes the upload last well over a minute; the session dies a moment in.
    argv = [*RUNNER, "--endpoint-url", s3.endpoint_url, "--immediate-checkpoint", "-S", "2MB",
            "--max-bandwidth", "1MB", "--keepalive-interval", "2", f"s3://{bucket}/k", "pg"]
    process = subprocess.Popen(argv, env=runner_env(s3, pg), cwd=REPO, stderr=subprocess.PIPE,
                               text=True)
    pid = _backup_pid(pg, time.monotonic() + 60)
    # kill the session once the backup is recorded STARTED, i.e. mid-upload (not mid-start)
    deadline = time.monotonic() + 60
    while not any(k.endswith("backup.info") for k in s3.list_objects(bucket, "k/")):
        assert time.monotonic() < deadline, "backup.info STARTED never appeared"
        time.sleep(0.05)
    pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
    killed = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert time.monotonic() - killed < 30, "the dead session was noticed only at the end"
    assert "Connection to the Postgres server was lost" in stderr
    [info_key] = [k for k in s3.list_objects(bucket, "k/") if k.endswith("backup.info")]
    info = s3.get_object(bucket, info_key).decode()
    assert "status=FAILED" in info and "error=failure uploading data" in info
    assert not pg.in_backup()


def test_failure_while_planning_records_failed_and_releases_the_database(
    s3, pg, bucket, monkeypatch
):
    import pytest

    from airflow_provider_pgcloud.runner import steps
    from airflow_provider_pgcloud.runner.session import LocalSession
    from airflow_provider_pgcloud.runner.storage import StoreConfig, open_store

    def broken_plan(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr(steps, "plan_chunks", broken_plan)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    config = StoreConfig(f"s3://{bucket}/plan", endpoint_url=s3.endpoint_url)
    options = steps.BackupOptions(server_name="pg", store=config, immediate_checkpoint=True)
    session = LocalSession(pg.dsn(), password=pg.password)
    store = open_store(config)
    with pytest.raises(OSError):
        steps.start_backup(options, session, store)
    [info_key] = [k for k in s3.list_objects(bucket, "plan/") if k.endswith("backup.info")]
    info = s3.get_object(bucket, info_key).decode()
    assert "status=FAILED" in info
    assert "error=failure planning the backup (disk vanished)" in info
    assert not pg.in_backup()
