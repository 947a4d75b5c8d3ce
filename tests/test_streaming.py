"""The streaming source: the server sends its files over the replication protocol.

The runner runs as an OS user that cannot read the data directory (`nobody`); Barman restores
what it stored, rows intact, and verify checks it against its manifest.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import PgClusterFactory, RestoreAndCheck
from tests.rig.barman import backup_list
from tests.rig.pgcluster import PgCluster, WalArchive, init_cluster
from tests.rig.s3server import S3Server
from tests.rig.tools import make_workdir
from tests.runner_cli import REPO, RUNNER, VERIFY, run_runner, runner_env

AS_NOBODY = ["runuser", "-u", "nobody", "--"]


def _stream_and_restore(s3: S3Server, cluster: PgCluster, bucket: str, codec: list[str],
                        restore_and_check: RestoreAndCheck) -> None:
    data_directory = cluster.execute("SHOW data_directory")[0][0]
    denied = subprocess.run([*AS_NOBODY, "ls", data_directory], capture_output=True, check=False)
    assert denied.returncode != 0  # the runner's OS user cannot read the cluster's files
    url = f"s3://{bucket}/stream"
    result = run_runner("--streaming", "-S", "2MB", *codec, "--immediate-checkpoint",
                        "-n", "streamed", url, "pg", s3=s3, pg=cluster, prefix=AS_NOBODY)
    assert result.returncode == 0, result.stderr
    [listed] = backup_list(s3, url, "pg")
    assert listed["status"] == "DONE"
    objects = s3.list_objects(bucket, f"stream/pg/base/{listed['backup_id']}/")
    assert sum("/data_0" in key for key in objects) >= 1  # the data archive is split (-S)
    info = s3.get_object(bucket, f"stream/pg/base/{listed['backup_id']}/backup.info").decode()
    for field in ("begin_wal=", "end_wal=", "timeline=", "systemid=", "tablespaces=[('tbs1'",
                  "config_file=", "backup_label="):
        assert field in info, field
    verify = subprocess.run([*VERIFY, "--endpoint-url", s3.endpoint_url, url, "pg", "streamed"],
                            env=runner_env(s3), capture_output=True, text=True, timeout=600,
                            check=False)
    assert verify.returncode == 0, verify.stderr
    # a row written after the backup reaches the restore only through the WAL archive
    cluster.execute("CREATE TABLE IF NOT EXISTS after_stream (id int)", dbname="app")
    cluster.execute("INSERT INTO after_stream VALUES (1)", dbname="app")
    restore_and_check(url, "pg", "streamed", cluster)


@pytest.mark.parametrize("codec", [[], ["-z"], ["-j"], ["--snappy"], ["--zstd"]],
                         ids=["none", "gzip", "bzip2", "snappy", "zstd"])
def test_streamed_backup_restores_with_barman(
    s3: S3Server, pg: PgCluster, bucket: str, restore_and_check: RestoreAndCheck,
    codec: list[str],
) -> None:
    _stream_and_restore(s3, pg, bucket, codec, restore_and_check)


def test_streamed_backup_of_postgresql_17(
    s3: S3Server, pg_cluster_factory: PgClusterFactory, bucket: str,
    restore_and_check: RestoreAndCheck,
) -> None:
    _stream_and_restore(s3, pg_cluster_factory(17), bucket, ["--lz4"], restore_and_check)


def test_streamed_backup_of_postgresql_18(
    s3: S3Server, pg18: PgCluster, bucket: str, restore_and_check: RestoreAndCheck,
) -> None:
    _stream_and_restore(s3, pg18, bucket, ["-z"], restore_and_check)


def test_postgresql_14_is_refused_in_one_line(
    s3: S3Server, pg_cluster_factory: PgClusterFactory, bucket: str,
) -> None:
    result = run_runner("--streaming", f"s3://{bucket}/old", "pg", s3=s3,
                        pg=pg_cluster_factory(14))
    assert result.returncode == 1
    assert "streaming backups need PostgreSQL 15 or later" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert s3.list_objects(bucket) == {}


@pytest.fixture(scope="module")
def pg18(s3: S3Server) -> Iterator[PgCluster]:
    """PostgreSQL 18 (data checksums on by default) with a table whose pages this module
    damages on disk."""
    s3.create_bucket("wal")
    cluster = init_cluster(make_workdir("pg18"), 18, tablespace=True,
                           wal_archive=WalArchive(s3, "s3://wal/archive-pg18-stream", "pg"),
                           remove_workdir_on_stop=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def _damage(cluster: PgCluster) -> str:
    """Flip bytes in the middle of block 1 of a new table's file (not its header, so the
    server's checksum check is what notices); return the file's path in PGDATA."""
    cluster.execute("CREATE TABLE damaged AS SELECT g AS id, repeat('x', 200) AS pad "
                    "FROM generate_series(1, 2000) g", dbname="app")
    cluster.execute("CHECKPOINT")
    path = str(cluster.execute("SELECT pg_relation_filepath('damaged')", dbname="app")[0][0])
    data_directory = cluster.execute("SHOW data_directory")[0][0]
    with open(f"{data_directory}/{path}", "r+b") as handle:
        handle.seek(8192 + 4000)
        chunk = handle.read(16)
        handle.seek(8192 + 4000)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    return path


def test_damaged_pages_are_reported_and_the_backup_still_restores(
    s3: S3Server, pg18: PgCluster, bucket: str, restore_and_check: RestoreAndCheck,
) -> None:
    path = _damage(pg18)
    url = f"s3://{bucket}/damaged"
    result = run_runner("--streaming", "--zstd", "--immediate-checkpoint", "-n", "damaged",
                        url, "pg", s3=s3, pg=pg18)
    assert result.returncode == 1
    assert path in result.stderr and "checksum verification failed" in result.stderr
    [listed] = backup_list(s3, url, "pg")
    assert listed["status"] == "DONE"  # stored, and restorable
    index = json.loads(s3.get_object(
        bucket, f"damaged/pg/pgcloud/{listed['backup_id']}/manifest.json"))
    [failure] = index["checksum_failures"]
    assert (failure["archive"], failure["path"], failure["blocks"]) == ("data", path, [1])

    verify = subprocess.run([*VERIFY, "--endpoint-url", s3.endpoint_url, url, "pg", "damaged"],
                            env=runner_env(s3), capture_output=True, text=True, timeout=600,
                            check=False)
    assert verify.returncode == 1
    assert f"data: {path} (blocks 1)" in verify.stderr

    accepted = run_runner("--streaming", "--accept-checksum-failures", f"{url}-accepted", "pg",
                          s3=s3, pg=pg18)
    assert accepted.returncode == 0, accepted.stderr
    assert path in accepted.stderr  # still logged

    # the damaged table goes before the comparison: the restore replays its drop
    pg18.execute("DROP TABLE damaged", dbname="app")
    restore_and_check(url, "pg", "damaged", pg18)


def _start_slow_stream(s3: S3Server, pg: PgCluster, url: str) -> subprocess.Popen[str]:
    """A streamed backup throttled to 1 MB/s, running until its backup.info says STARTED."""
    process = subprocess.Popen(
        [*RUNNER, "--endpoint-url", s3.endpoint_url, "--streaming", "--immediate-checkpoint",
         "--max-bandwidth", "1MB", url, "pg"],
        env=runner_env(s3, pg), cwd=REPO, stderr=subprocess.PIPE, text=True)
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    deadline = time.monotonic() + 60
    while not any(k.endswith("backup.info") for k in s3.list_objects(bucket, prefix + "/")):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "backup.info STARTED never appeared"
        time.sleep(0.05)
    return process


def _info(s3: S3Server, bucket: str, prefix: str) -> str:
    [key] = [k for k in s3.list_objects(bucket, prefix + "/") if k.endswith("backup.info")]
    return s3.get_object(bucket, key).decode()


def test_a_lost_connection_fails_the_streamed_backup_at_once(
    s3: S3Server, pg: PgCluster, bucket: str
) -> None:
    process = _start_slow_stream(s3, pg, f"s3://{bucket}/lost")
    pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = 'pgcloud_backup'")
    killed = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert time.monotonic() - killed < 30
    assert "terminating connection" in stderr or "was lost" in stderr, stderr
    info = _info(s3, bucket, "lost")
    assert "status=FAILED" in info and "error=failure uploading data" in info
    assert not pg.in_backup()


def test_a_killed_streamed_backup_is_never_done(s3: S3Server, pg: PgCluster, bucket: str) -> None:
    process = _start_slow_stream(s3, pg, f"s3://{bucket}/killed")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert "status=STARTED" in _info(s3, bucket, "killed")
    deadline = time.monotonic() + 30  # the server ends the backup when the connection goes
    while pg.in_backup():
        assert time.monotonic() < deadline
        time.sleep(0.2)
