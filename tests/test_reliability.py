"""Faults during a backup: the store failing, PostgreSQL restarting, the runner being killed.

The store faults are real ones on the wire: a fault-injecting proxy (tests/rig/faultproxy.py)
sits between the runner and SeaweedFS and answers 503/500, resets connections (before the
answer and in the middle of a part's body), withholds answers until the read timeout, flips a
byte of a part's body, refuses checksum headers as some S3-compatible stores do, or stops
answering altogether. PostgreSQL is restarted with pg_ctl; the runner is SIGKILLed. Each test
checks what Barman's tools then see and what is left in the bucket.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from airflow_provider_pgcloud.runner import backup_info as bi
from airflow_provider_pgcloud.runner.errors import BackupFailed
from airflow_provider_pgcloud.runner.retry import PART_RETRY, RetryPolicy, is_transient
from airflow_provider_pgcloud.runner.session import KeeperClient
from airflow_provider_pgcloud.runner.steps import (
    BackupOptions,
    fail_backup,
    start_backup,
    upload_chunk,
)
from airflow_provider_pgcloud.runner.storage.base import StoreConfig
from airflow_provider_pgcloud.runner.storage.s3 import S3Store
from airflow_provider_pgcloud.runner.upload import PartWriter
from airflow_provider_pgcloud.runner.watch import SessionWatch, is_cancelled
from tests.rig.barman import backup_list, restore
from tests.rig.faultproxy import EveryNthPart, FaultProxy, Request
from tests.rig.pgcluster import PgCluster, start_restored_cluster
from tests.rig.s3server import S3Server
from tests.rig.tools import as_postgres, make_workdir, remove_workdir
from tests.runner_cli import CLEANUP, REPO, RUNNER, VERIFY, runner_env

PGBIN = "/usr/lib/postgresql/15/bin"


# ------------------------------------------------------------------ helpers
def store_through(s3: S3Server, endpoint: str, url: str, read_timeout: int = 60) -> S3Store:
    session = boto3.Session(aws_access_key_id=s3.access_key,
                            aws_secret_access_key=s3.secret_key, region_name=s3.region)
    config = StoreConfig(url, endpoint_url=endpoint, read_timeout=read_timeout)
    return S3Store(config, session=session)


def start_runner(endpoint: str, s3: S3Server, pg: PgCluster, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    argv = [*RUNNER, "--endpoint-url", endpoint, *args]
    return subprocess.Popen(argv, env=runner_env(s3, pg, env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_tool(tool: list[str], s3: S3Server, *args: str,
             endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*tool, "--endpoint-url", endpoint or s3.endpoint_url, *args]
    return subprocess.run(argv, env=runner_env(s3), cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)


def uploads_in_progress(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    response = s3.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [u["Key"] for u in response.get("Uploads", [])]


def backup_ids(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    return sorted({k.split("/base/")[1].split("/")[0] for k in s3.list_objects(bucket, prefix)
                   if "/base/" in k})


def read_info(s3: S3Server, bucket: str, prefix: str, backup_id: str) -> dict[str, Any]:
    return bi.decode(s3.get_object(bucket, f"{prefix}/base/{backup_id}/backup.info"))


def wait_until(condition: Any, timeout: float, what: str, process: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the runner exited ({process.returncode}) before {what}: "
                                 f"{process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Counting:
    """A proxy plan that injects nothing and counts UploadPart requests."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, request: Request) -> str | None:
        if request.is_upload_part:
            self.seen += 1
        return None


@pytest.fixture
def bulk_table(pg: PgCluster) -> Iterator[None]:
    """~120 MB in an UNLOGGED table (no WAL to archive), so a backup has ~40 parts of 5 MiB."""
    pg.execute("CREATE UNLOGGED TABLE bulk AS SELECT g, md5(g::text) AS a, "
               "md5((g * 7)::text) AS b FROM generate_series(1, 1100000) g", dbname="app")
    try:
        yield
    finally:
        pg.execute("DROP TABLE IF EXISTS bulk", dbname="app")


# ------------------------------------------------------------------ 1. retries
def test_transient_classification() -> None:
    import botocore.exceptions as be

    def client_error(code: str, status: int) -> Exception:
        response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return be.ClientError(response, "UploadPart")

    assert is_transient(client_error("SlowDown", 503))
    assert is_transient(client_error("InternalError", 500))
    assert is_transient(be.ConnectionClosedError(endpoint_url="http://x"))
    assert is_transient(be.ReadTimeoutError(endpoint_url="http://x"))
    assert is_transient(ConnectionResetError())
    assert is_transient(client_error("BadDigest", 400))  # the body changed on the way
    assert not is_transient(client_error("AccessDenied", 403))
    assert not is_transient(client_error("NoSuchUpload", 404))
    assert not is_transient(BackupFailed("x"))
    assert not is_transient(FileNotFoundError())
    # bounded: 5 attempts, at most 1 + 2 + 4 + 8 s of backoff, each delay jittered below it
    assert PART_RETRY.attempts == 5 and PART_RETRY.max_total_delay == 15
    delays = [PART_RETRY.delay(n) for n in (1, 2, 3, 4) for _ in range(50)]
    assert all(0 <= d <= 8 for d in delays) and len(set(delays)) > 100


def test_every_kind_of_transient_fault_is_retried_per_part(s3: S3Server, bucket: str) -> None:
    """503 SlowDown, 500, a reset before the answer, a reset mid-body, a read timeout and a
    byte flipped in the body: the first attempt of every part fails, and the object is still
    stored byte for byte (so the store refused the corrupted part, and it was sent again)."""
    plan = EveryNthPart(n=1)
    data = os.urandom(26 << 20)  # six parts of 5 MiB (the last one 1 MiB)
    with FaultProxy(s3.endpoint_url, plan, hold=2.5) as proxy:
        store = store_through(s3, proxy.endpoint_url, f"s3://{bucket}/r", read_timeout=1)
        writer = PartWriter(store, "r/object", 5 << 20,
                            retry=RetryPolicy(base=0.05, cap=0.2))
        for offset in range(0, len(data), 1 << 20):
            writer.write(data[offset:offset + (1 << 20)])
        writer.close()
        store.close()
    assert sorted({kind for kind, _ in plan.faulted}) == sorted(
        ["503", "500", "reset", "reset-body", "timeout", "corrupt"])
    assert len(plan.faulted) == 6
    assert s3.get_object(bucket, "r/object") == data
    assert uploads_in_progress(s3, bucket) == []


def test_permanent_error_is_not_retried_and_the_upload_is_aborted(
    s3: S3Server, bucket: str
) -> None:
    calls: list[str] = []

    def plan(request: Request) -> str | None:
        if request.is_upload_part:
            calls.append(request.part[2])
            return "403" if request.part[2] == "2" else None
        return None

    with FaultProxy(s3.endpoint_url, plan) as proxy:
        store = store_through(s3, proxy.endpoint_url, f"s3://{bucket}/r")
        writer = PartWriter(store, "r/denied", 5 << 20, retry=RetryPolicy(base=0.05))
        with pytest.raises(Exception, match="AccessDenied"):
            for _ in range(4):
                writer.write(bytes(5 << 20))
            writer.close()
        writer.abort()
        store.close()
    assert calls.count("2") == 1  # a permanent error is not retried
    assert uploads_in_progress(s3, bucket) == []  # and the upload was aborted
    assert s3.list_objects(bucket) == {}


def test_backup_completes_when_5_percent_of_part_uploads_fail_once(
    s3: S3Server, pg: PgCluster, bucket: str, bulk_table: None
) -> None:
    plan = EveryNthPart(n=20, offset=1, kinds=("503", "reset-body"))
    url = f"s3://{bucket}/five"
    with FaultProxy(s3.endpoint_url, plan) as proxy:
        process = start_runner(proxy.endpoint_url, s3, pg, "--immediate-checkpoint", "-J", "2",
                               url, "pg")
        _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    assert plan.seen >= 30, plan.seen
    assert 1 <= len(plan.faulted) <= plan.seen // 20 + 1  # 5%
    assert {kind for kind, _ in plan.faulted} == {"503", "reset-body"} or len(plan.faulted) == 1
    assert len(re.findall(r"part \d+ failed \(.*\); retry 1 of 4", stderr)) == len(plan.faulted)
    [listed] = backup_list(s3, url, "pg")
    assert listed["status"] == "DONE"
    assert uploads_in_progress(s3, bucket) == []
    # the retried parts hold the right bytes: every file matches the manifest
    check = run_tool(VERIFY, s3, url, "pg", listed["backup_id"])
    assert check.returncode == 0, check.stderr


def test_store_refusing_checksum_headers_gets_signed_payloads(
    s3: S3Server, pg: PgCluster, bucket: str
) -> None:
    """Some S3-compatible stores answer 400 to S3's flexible-checksum headers: the backup warns
    and falls back to SigV4-signed payloads, and what it stores is whole."""
    def plan(request: Request) -> str | None:
        return "no-checksums" if request.has_checksum else None

    url = f"s3://{bucket}/plain"
    with FaultProxy(s3.endpoint_url, plan) as proxy:
        process = start_runner(proxy.endpoint_url, s3, pg, "--immediate-checkpoint", "-J", "2",
                               "-S", "8MB", url, "pg")
        _, stderr = process.communicate(timeout=240)
        refused = len(proxy.injected)
        requests = proxy.requests
    assert process.returncode == 0, stderr
    assert "the store refused a CRC32C checksum header (InvalidArgument" in stderr, stderr
    assert 1 <= refused <= 3 < requests  # once per store (main process, two workers), not per part
    [listed] = backup_list(s3, url, "pg")
    assert listed["status"] == "DONE"
    check = run_tool(VERIFY, s3, url, "pg", listed["backup_id"])
    assert check.returncode == 0, check.stderr


# ------------------------------------------------------------------ 4. the store goes away
def test_store_unavailable_mid_backup_fails_in_bounded_time(
    s3: S3Server, pg: PgCluster, bucket: str
) -> None:
    """The proxy stops answering (connections accepted, nothing ever sent back) once parts
    are flowing: the runner exits 1 within the documented budget instead of hanging."""
    read_timeout = 1
    plan = Counting()
    url = f"s3://{bucket}/gone"
    with FaultProxy(s3.endpoint_url, plan) as proxy:
        process = start_runner(proxy.endpoint_url, s3, pg, "--immediate-checkpoint",
                               "--read-timeout", str(read_timeout), "--max-bandwidth", "8MB",
                               url, "pg")
        wait_until(lambda: plan.seen >= 1, 60, "the first part upload", process)
        proxy.blackhole()
        gone = time.monotonic()
        _, stderr = process.communicate(timeout=180)
        elapsed = time.monotonic() - gone
        proxy.blackhole(False)
    # parts: the engine's 5 attempts and <= 15 s of backoff; objects smaller than a part and
    # backup.info: boto3's 6 attempts and <= 1+2+4+8+16 s; plus a one-attempt abort
    sdk = 6 * read_timeout + 31
    upload = max(PART_RETRY.attempts * read_timeout + PART_RETRY.max_total_delay, sdk)
    budget = upload + read_timeout + sdk
    assert process.returncode == 1, stderr
    assert elapsed < budget + 10, f"{elapsed:.1f}s"
    assert re.search(r"ERROR: .*(failed after 5 attempts|Read timeout)", stderr), stderr
    assert "retry 1 of 4" in stderr  # parts were retried before the runner gave up
    assert not pg.in_backup()
    # backup.info could not be rewritten: Barman sees it STARTED, never DONE
    [listed] = backup_list(s3, url, "pg")
    assert listed["status"] in ("STARTED", "FAILED")
    # what the aborts could not reach, the cleanup removes
    assert uploads_in_progress(s3, bucket)
    result = run_tool(CLEANUP, s3, "--grace-period", "0", url, "pg")
    assert result.returncode == 0, result.stderr
    assert uploads_in_progress(s3, bucket) == []


# ------------------------------------------------------------------ 3. PostgreSQL restarts
def _restart(pg: PgCluster) -> None:
    assert pg.log_file is not None
    result = subprocess.run(
        as_postgres([f"{pg.bindir}/pg_ctl", "restart", "-D", str(pg.pgdata), "-m", "fast",
                     "-w", "-t", "60", "-s", "-l", str(pg.log_file)]),
        env=pg.server_env, cwd="/", capture_output=True, text=True, check=False,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stderr


def test_postgres_restart_mid_backup_fails_within_the_keepalive_interval(
    s3: S3Server, pg: PgCluster, bucket: str
) -> None:
    url = f"s3://{bucket}/restart"
    process = start_runner(s3.endpoint_url, s3, pg, "--immediate-checkpoint",
                           "--max-bandwidth", "1MB", "--keepalive-interval", "2", url, "pg")
    wait_until(lambda: any(k.endswith("backup.info") for k in s3.list_objects(bucket)), 60,
               "backup.info STARTED", process)
    wait_until(lambda: uploads_in_progress(s3, bucket) != [], 60, "a part upload", process)
    _restart(pg)
    restarted = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert time.monotonic() - restarted < 2 + 10, "noticed only at the end"
    assert "Connection to the Postgres server was lost" in stderr
    [backup_id] = backup_ids(s3, bucket, "restart/")
    info = read_info(s3, bucket, "restart/pg", backup_id)
    assert info["status"] == "FAILED" and info["error"].startswith("failure uploading data")
    assert uploads_in_progress(s3, bucket) == []  # every open upload was aborted
    assert not pg.in_backup()


def test_upload_task_fails_fast_when_the_keeper_session_is_lost(
    s3: S3Server, pg: PgCluster, bucket: str
) -> None:
    """The Airflow path: an upload task pings the keeper between files (SessionWatch) and
    stops when the database session holding the backup is gone."""
    keeper = KeeperClient.launch(pg.dsn(), pg.password, deadline_seconds=300)
    store = store_through(s3, s3.endpoint_url, f"s3://{bucket}/keeper")
    options = BackupOptions(server_name="pg", store=StoreConfig(f"s3://{bucket}/keeper"),
                            immediate_checkpoint=True)
    state = start_backup(options, keeper, store)
    chunk = max(state.chunks, key=lambda c: c.planned_bytes)
    outcome: list[BaseException | None] = []

    def upload() -> None:
        try:
            upload_chunk(state, chunk, store, throttle=lambda _n: time.sleep(0.3),
                         cancelled=SessionWatch(keeper, interval=0.5))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=upload)
    worker.start()
    try:
        wait_until(lambda: uploads_in_progress(s3, bucket) != [], 30, "a part upload")
        [[pid]] = pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                             "'pgcloud_backup' AND pid <> pg_backend_pid()")
        pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        killed = time.monotonic()
        worker.join(30)
        assert not worker.is_alive()
        assert time.monotonic() - killed < 10
        [error] = outcome
        assert isinstance(error, BackupFailed), error
        assert "Connection to the Postgres server was lost" in str(error)
        assert uploads_in_progress(s3, bucket) == []
        fail_backup(state, store, f"failure uploading data ({error})", keeper)
    finally:
        with contextlib.suppress(Exception):
            keeper.abort()
        store.close()
    assert read_info(s3, bucket, "keeper/pg", state.backup_id)["status"] == "FAILED"
    assert not pg.in_backup()


def test_cancelled_hook_accepts_events_and_rate_limited_session_checks() -> None:
    event = threading.Event()
    assert not is_cancelled(None) and not is_cancelled(event)
    event.set()
    assert is_cancelled(event) and is_cancelled(lambda: True)

    class Session:
        pings = 0

        def ping(self) -> None:
            self.pings += 1
            if self.pings == 3:
                raise BackupFailed("Connection to the Postgres server was lost")

    now = [0.0]
    session = Session()
    watch = SessionWatch(session, interval=10, clock=lambda: now[0])
    assert not watch() and not watch() and session.pings == 1  # pings at once, then waits
    now[0] = 10.0
    assert not watch() and session.pings == 2
    now[0] = 20.0
    with pytest.raises(BackupFailed, match="lost"):
        watch()


# ------------------------------------------------------------------ 2. killed runner, cleanup
def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_runner_is_never_done_and_its_leftovers_are_removed(
    s3: S3Server, pg: PgCluster, bucket: str
) -> None:
    url = f"s3://{bucket}/kill"
    process = start_runner(s3.endpoint_url, s3, pg, "--immediate-checkpoint", "-J", "2",
                           "--max-bandwidth", "2MB", url, "pg")
    wait_until(lambda: uploads_in_progress(s3, bucket) != [], 60, "a part upload", process)
    workers = [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True,
        check=False).stdout.split()]
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    # the worker processes notice and exit too: nothing keeps uploading
    wait_until(lambda: not any(_alive(pid) for pid in workers), 10, "the workers to exit")
    assert workers
    [dead] = backup_list(s3, url, "pg")
    assert dead["status"] == "STARTED"
    assert uploads_in_progress(s3, bucket)
    assert not pg.in_backup()

    # within the grace period the STARTED backup may belong to a live run: left alone
    result = run_tool(CLEANUP, s3, url, "pg")
    assert result.returncode == 0, result.stderr
    assert "1 STARTED backups kept" in result.stderr
    assert uploads_in_progress(s3, bucket)

    # two days later: the next run removes it (its archives, manifests, uploads, backup.info)
    info = read_info(s3, bucket, "kill/pg", dead["backup_id"])
    info["begin_time"] = info["begin_time"] - dt.timedelta(days=2)
    s3.client().put_object(Bucket=bucket, Key=f"kill/pg/base/{dead['backup_id']}/backup.info",
                           Body=bi.encode(info))
    process = start_runner(s3.endpoint_url, s3, pg, "--immediate-checkpoint", url, "pg")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "1 dead STARTED backups removed" in stderr
    [done] = backup_list(s3, url, "pg")
    assert done["status"] == "DONE" and done["backup_id"] != dead["backup_id"]
    assert not [k for k in s3.list_objects(bucket) if dead["backup_id"] in k]
    assert uploads_in_progress(s3, bucket) == []

    # a cleanup with no grace at all never touches a DONE backup
    before = s3.list_objects(bucket)
    result = run_tool(CLEANUP, s3, "--grace-period", "0", url, "pg")
    assert result.returncode == 0, result.stderr
    assert s3.list_objects(bucket) == before


# ------------------------------------------------------------------ 5. consistency under load
def _pgbench(pg: PgCluster, *args: str) -> list[str]:
    return [f"{PGBIN}/pgbench", "-h", pg.host, "-p", str(pg.port), "-U", pg.user, *args]


def test_backup_under_pgbench_restores_consistent_and_passes_amcheck(
    s3: S3Server, pg: PgCluster, bucket: str
) -> None:
    env = {**runner_env(pg=pg), "PGPASSWORD": pg.password or ""}
    pg.execute("CREATE DATABASE bench")
    workdir = make_workdir("restore-bench")
    try:
        subprocess.run(_pgbench(pg, "-i", "-q", "-s", "2", "bench"), env=env, check=True,
                       capture_output=True, timeout=120)
        load = subprocess.Popen(_pgbench(pg, "-c", "2", "-T", "300", "-n", "bench"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            url = f"s3://{bucket}/load"
            result = subprocess.run(
                [*RUNNER, "--endpoint-url", s3.endpoint_url, "--immediate-checkpoint", "--lz4",
                 "-J", "2", "-S", "4MB", url, "pg"],
                env=runner_env(s3, pg), cwd=REPO, capture_output=True, text=True, timeout=240,
            )
            assert result.returncode == 0, result.stderr
            assert load.poll() is None, "pgbench stopped before the backup ended"
        finally:
            load.send_signal(signal.SIGINT)
            try:
                load.wait(30)
            except subprocess.TimeoutExpired:  # SIGINT cancels queries; a loaded box may lag
                load.kill()
                load.wait(30)
        history = pg.execute("SELECT count(*) FROM pgbench_history", dbname="bench")[0][0]
        assert history > 0  # transactions committed during the backup
        [backup_id] = backup_ids(s3, bucket, "load/")
        # pgbench stopped: fingerprint the source at its final state, archive the WAL, restore
        expected = pg.fingerprint()
        pg.switch_wal_and_wait_archived()
        datadir = workdir / "pgdata"
        tablespaces = {"tbs1": workdir / "tbs1"}
        restore(s3, url, "pg", backup_id, datadir, tablespaces)
        assert pg.wal_archive is not None
        restored = start_restored_cluster(datadir, 15, wal_archive=pg.wal_archive,
                                          tablespace_dirs=list(tablespaces.values()),
                                          password=pg.password)
        try:
            check = subprocess.run(
                [f"{PGBIN}/pg_amcheck", "-h", restored.host, "-p", str(restored.port), "-U",
                 restored.user, "--all", "--install-missing", "--heapallindexed",
                 "--progress"],
                env={**env, "PGPASSWORD": pg.password or ""}, capture_output=True, text=True,
                timeout=180, check=False,
            )
            assert check.returncode == 0, check.stdout + check.stderr
            actual = restored.fingerprint()
        finally:
            restored.stop()
        assert "bench.public.pgbench_accounts" in expected
        assert actual == expected
    finally:
        pg.execute("DROP DATABASE IF EXISTS bench WITH (FORCE)")
        remove_workdir(workdir)
