"""pgcloud-restore: backups written by this project and by Barman come back with their rows.

Every restore here is started by PostgreSQL, which replays the archived WAL, and compared with
the source cluster (the `pgcloud_restore_and_check` fixture). The failure tests check what a
user sees: the exit code, the archive and file named, and a directory PostgreSQL will not start
on.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RestoreAndCheck
from tests.rig.barman import backup_list, run_barman
from tests.rig.pgcluster import (
    PgCluster,
    WalArchive,
    init_cluster,
    pg_bindir,
    start_restored_cluster,
)
from tests.rig.s3server import S3Server
from tests.rig.tools import chown_to_postgres, make_workdir, remove_workdir
from tests.runner_cli import run_restore, run_runner
from tests.test_backup import FLAGS, SUFFIXES, write_after_backup


@pytest.mark.parametrize("codec", list(SUFFIXES))
def test_restores_its_own_split_backups_in_every_codec(
    codec: str, s3: S3Server, pg: PgCluster, bucket: str,
    pgcloud_restore_and_check: RestoreAndCheck,
) -> None:
    url = f"s3://{bucket}/own"
    result = run_runner(*FLAGS[codec], "-S", "2MB", "-J", "2", "--immediate-checkpoint",
                        "-n", "own", url, "pg", s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    write_after_backup(pg)
    pgcloud_restore_and_check(url, "pg", "own", pg)


@pytest.mark.parametrize("codec", list(SUFFIXES))
def test_restores_barmans_own_backups_in_every_codec(
    codec: str, s3: S3Server, pg: PgCluster, bucket: str,
    pgcloud_restore_and_check: RestoreAndCheck,
) -> None:
    url = f"s3://{bucket}/barman"
    run_barman("barman-cloud-backup", *FLAGS[codec], "-S", "2MB", "--immediate-checkpoint",
               "-h", pg.host, "-p", str(pg.port), "-U", pg.user, url, "pg", s3=s3,
               env=pg.env(), as_postgres_user=True)
    [backup] = backup_list(s3, url, "pg")
    write_after_backup(pg)
    pgcloud_restore_and_check(url, "pg", "latest", pg)
    assert backup["status"] == "DONE"


@pytest.fixture
def target() -> Iterator[Path]:
    workdir = make_workdir("restore-target")
    yield workdir / "pgdata"
    remove_workdir(workdir)


def _backup(s3: S3Server, pg: PgCluster, url: str, *flags: str) -> str:
    result = run_runner(*flags, "-S", "2MB", "--immediate-checkpoint", url, "pg", s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    [backup] = backup_list(s3, url, "pg")
    return str(backup["backup_id"])


def _restore(s3: S3Server, url: str, backup_id: str, target: Path, *args: str
             ) -> subprocess.CompletedProcess[str]:
    """pgcloud-restore into `target`, the tablespace beside it."""
    return run_restore(*args, f"--tablespace=tbs1:{target.parent / 'tbs1'}", url, "pg",
                       backup_id, str(target), s3=s3)


def _refuses_to_start(datadir: Path, because: str) -> None:
    """PostgreSQL will not start on an incomplete restore (given the files, as the rig's
    restored clusters are)."""
    assert not (datadir / "global" / "pg_control").exists()
    chown_to_postgres(datadir, recursive=True, mode=0o700)
    started = subprocess.run([str(pg_bindir(15) / "postgres"), "--single", "-D", str(datadir),
                              "postgres"], input="", capture_output=True, text=True,
                             check=False, user="postgres")
    assert started.returncode != 0
    assert because in started.stderr, started.stderr


def test_a_damaged_object_stops_the_restore_naming_it(
    s3: S3Server, pg: PgCluster, bucket: str, target: Path,
) -> None:
    url = f"s3://{bucket}/damaged"
    backup_id = _backup(s3, pg, url, "-z")
    # the smallest object: with -J 1 (largest first) every other one restores before it
    objects = s3.list_objects(bucket, f"damaged/pg/base/{backup_id}/")
    key = min((k for k in objects if k.endswith(".tar.gz")), key=lambda k: objects[k])
    name = key.rsplit("/", 1)[1]
    data = bytearray(s3.get_object(bucket, key))
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)
    s3.put_object(bucket, key, bytes(data))

    result = _restore(s3, url, backup_id, target, "-J", "1")
    assert result.returncode == 1, result.stderr
    assert f"{name}: unreadable" in result.stderr
    assert (target / "PG_VERSION").exists() and (target / "postgresql.conf").exists()
    _refuses_to_start(target, because='could not open file "global/pg_control"')


def test_a_file_that_differs_from_the_manifest_is_named(
    s3: S3Server, pg: PgCluster, bucket: str, target: Path,
) -> None:
    url = f"s3://{bucket}/changed"
    backup_id = _backup(s3, pg, url)
    key = f"changed/pg/base/{backup_id}/data.tar"
    data = bytearray(s3.get_object(bucket, key))
    # PG_VERSION's data block: the file holds "15\n"; make it "16\n" (a valid tar still)
    header = data.index(b"PG_VERSION\x00")
    content = header - header % 512 + 512
    assert data[content:content + 3] == b"15\n"
    data[content:content + 3] = b"16\n"
    s3.put_object(bucket, key, bytes(data))

    result = _restore(s3, url, backup_id, target)
    assert result.returncode == 1, result.stderr
    assert "data.tar: PG_VERSION: " in result.stderr
    assert "does not match the manifest" in result.stderr
    _refuses_to_start(target, because="")


def test_a_non_empty_directory_is_refused(
    s3: S3Server, pg: PgCluster, bucket: str, target: Path,
) -> None:
    url = f"s3://{bucket}/busy"
    backup_id = _backup(s3, pg, url)
    target.mkdir()
    (target / "something").write_text("mine")
    result = _restore(s3, url, backup_id, target)
    assert result.returncode == 3
    assert "already exists and it is not empty" in result.stderr
    assert (target / "something").read_text() == "mine"
    assert sorted(p.name for p in target.iterdir()) == ["something"]


def test_an_unknown_backup_or_tablespace_is_an_error(
    s3: S3Server, pg: PgCluster, bucket: str, target: Path,
) -> None:
    url = f"s3://{bucket}/unknown"
    backup_id = _backup(s3, pg, url)
    missing = _restore(s3, url, "no-such-name", target)
    assert missing.returncode == 1
    assert "no DONE backup 'no-such-name'" in missing.stderr
    wrong = run_restore("--tablespace", "nope:/tmp/x", url, "pg", backup_id, str(target), s3=s3)
    assert wrong.returncode == 3
    assert "--tablespace nope: the backup has no tablespace of that name" in wrong.stderr
    assert not target.exists()


def test_point_in_time_recovery_needs_nothing_but_pgcloud(s3: S3Server, bucket: str) -> None:
    """-R with --target-time: the restored cluster fetches WAL with pgcloud-wal-restore (from
    the backup's own location, Barman's layout) and stops between two commits."""
    url = f"s3://{bucket}/pitr"
    archive = WalArchive(s3, url, "pg")
    cluster = init_cluster(make_workdir("pitr"), 15, tablespace=True, wal_archive=archive,
                           remove_workdir_on_stop=True)
    workdir = make_workdir("pitr-restore")
    restored = None
    try:
        _backup(s3, cluster, url)
        cluster.execute("CREATE TABLE pitr (id int)", dbname="app")
        cluster.execute("INSERT INTO pitr VALUES (1)", dbname="app")
        [(target,)] = cluster.execute("SELECT clock_timestamp()::text")
        time.sleep(1.1)
        cluster.execute("INSERT INTO pitr VALUES (2)", dbname="app")
        cluster.switch_wal_and_wait_archived()

        datadir, tablespace = workdir / "pgdata", workdir / "tbs1"
        result = run_restore("--target-time", target, "--target-action", "promote",
                             f"--tablespace=tbs1:{tablespace}", url, "pg", "latest",
                             str(datadir), s3=s3)
        assert result.returncode == 0, result.stderr
        settings = (datadir / "postgresql.auto.conf").read_text()
        assert "pgcloud-wal-restore" in settings or "runner.cli.wal_restore" in settings
        assert f"recovery_target_time = '{target}'" in settings
        assert s3.secret_key not in settings and s3.access_key not in settings
        assert (datadir / "recovery.signal").exists()

        restored = start_restored_cluster(datadir, 15, wal_archive=archive,
                                          tablespace_dirs=[tablespace],
                                          password=cluster.password)
        assert restored.execute("SELECT id FROM pitr ORDER BY id", dbname="app") == [(1,)]
        [(command,)] = restored.execute("SHOW restore_command")  # ours, not the rig's Barman
        assert "barman" not in command and "wal-restore" in command.replace("_", "-")
    finally:
        if restored is not None:
            restored.stop()
        cluster.stop()
        remove_workdir(workdir)
