"""Barman hook-script mode: the runner uploads a backup a real Barman server took.

A Barman 3.20 server (``backup_method = postgres``, WAL streamed by ``receive-wal``) backs up
a PostgreSQL 15 cluster with a tablespace, and runs the runner itself as its
``post_backup_retry_script``, with Barman's own hook environment. The uploaded copy must be
listed by ``barman-cloud-backup-list`` and restored by ``barman-cloud-restore`` into a cluster
whose rows equal the source's. Barman's refusals (other hooks, ``-n``, a status other than
DONE, a compressed Barman backup) and upload failures are checked with a small synthetic
backup directory and a fake environment, which is quick.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import sys
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_pgcloud.runner import barman_hook as hook
from airflow_provider_pgcloud.runner.errors import BackupFailed
from airflow_provider_pgcloud.runner.sources.local import walk
from airflow_provider_pgcloud.runner.steps import BackupOptions
from airflow_provider_pgcloud.runner.storage import StoreConfig
from tests.conftest import RestoreAndCheck
from tests.rig.barman import backup_list
from tests.rig.barman_server import BarmanServer, start_barman_server
from tests.rig.pgcluster import PgCluster, WalArchive, init_cluster
from tests.rig.s3server import S3Server
from tests.rig.tools import make_workdir
from tests.runner_cli import run_runner

SERVER = "pg"
HOOK_ENV_FILE = "hook-env"


# ------------------------------------------------------------------ the real Barman server
@pytest.fixture(scope="module")
def hook_cluster(s3: S3Server) -> Iterator[PgCluster]:
    """PostgreSQL 15 of its own (a replication slot and Barman's WAL stream stay off ``pg``)."""
    s3.create_bucket("wal")
    archive = WalArchive(s3, f"s3://wal/hook-{uuid.uuid4().hex[:8]}", SERVER)
    cluster = init_cluster(
        make_workdir("pg15-hook"), 15, tablespace=True, wal_archive=archive,
        remove_workdir_on_stop=True,
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def hook_bucket(s3: S3Server) -> str:
    name = f"hook-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


def hook_command(s3: S3Server, bucket: str) -> str:
    """What a user puts in barman.conf: the runner, gzip, archives split at 4 MB, 2 jobs."""
    argv = [sys.executable, "-m", "airflow_provider_pgcloud.runner", "--endpoint-url",
            s3.endpoint_url, "-z", "-S", "4MB", "-J", "2", f"s3://{bucket}/hook"]
    return " ".join(shlex.quote(a) for a in argv) + " ${BARMAN_SERVER}"


@pytest.fixture(scope="module")
def barman_server(
    s3: S3Server, hook_cluster: PgCluster, hook_bucket: str
) -> Iterator[BarmanServer]:
    """Barman with the runner as post_backup_retry_script; post_backup_script records the
    BARMAN_* variables Barman passed (to replay them exactly in the failure test)."""
    workdir = make_workdir("barman")
    hooks = {
        "post_backup_retry_script": hook_command(s3, hook_bucket),
        "post_backup_script": f"env | grep '^BARMAN_' > {workdir / HOOK_ENV_FILE}",
    }
    server = start_barman_server(workdir, hook_cluster, name=SERVER, hooks=hooks, env=s3.env())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def barman_backup(barman_server: BarmanServer, hook_cluster: PgCluster) -> str:
    """One ``barman backup --wait``: Barman runs the runner as its post-backup hook."""
    hook_cluster.execute("INSERT INTO items (name, qty) VALUES ('before-barman-backup', 1)",
                         dbname="app")
    return barman_server.backup()


def barman_hook_env(server: BarmanServer) -> dict[str, str]:
    """The BARMAN_* environment Barman gave its post-backup hooks."""
    lines = (server.workdir / HOOK_ENV_FILE).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def tar_names(s3: S3Server, bucket: str, keys: list[str]) -> list[str]:
    names: list[str] = []
    for key in sorted(keys):
        with tarfile.open(fileobj=io.BytesIO(s3.get_object(bucket, key))) as tar:
            names += [m.name for m in tar.getmembers()]
    return names


def test_barman_runs_the_runner_as_post_backup_hook_and_barman_restores_it(
    s3: S3Server, hook_cluster: PgCluster, hook_bucket: str, barman_server: BarmanServer,
    barman_backup: str, restore_and_check: RestoreAndCheck,
) -> None:
    backup_id = barman_backup
    log = barman_server.log_file.read_text()
    assert f"{hook_command(s3, hook_bucket)} returned 0" in log, barman_server.log_tail()
    env = barman_hook_env(barman_server)
    assert env["BARMAN_HOOK"] == "backup_script" and env["BARMAN_PHASE"] == "post"
    assert env["BARMAN_STATUS"] == "DONE" and env["BARMAN_BACKUP_ID"] == backup_id

    prefix = f"hook/{SERVER}/base/{backup_id}/"
    stored = s3.list_objects(hook_bucket, prefix)
    names = {key[len(prefix):] for key in stored}
    assert {"data.tar.gz", "data_0001.tar.gz", "16384.tar.gz", "backup.info"} <= names
    assert all(n == "backup.info" or n.endswith(".tar.gz") for n in names), names
    # backup.info is Barman's own file, byte for byte (server_name=pg, mode=postgres)
    local_info = barman_server.backup_info_path(backup_id).read_bytes()
    assert s3.get_object(hook_bucket, prefix + "backup.info") == local_info
    assert b"\nmode=postgres\n" in local_info and b"\nserver_name=pg\n" in local_info

    data = tar_names(s3, hook_bucket, [k for k in stored if k[len(prefix):].startswith("data")])
    assert {"backup_label", "global/pg_control", "PG_VERSION", "pg_wal"} <= set(data)
    assert len(data) == len(set(data))
    assert not [n for n in data if n.startswith(("pg_wal/", "pg_tblspc/"))]
    tablespace = tar_names(s3, hook_bucket, [prefix + "16384.tar.gz"])
    assert tablespace and all(n.startswith("PG_15_") for n in tablespace)

    [listed] = backup_list(s3, f"s3://{hook_bucket}/hook", SERVER)
    assert (listed["backup_id"], listed["status"], listed["server_name"]) == (
        backup_id, "DONE", SERVER)

    hook_cluster.execute("INSERT INTO items (name, qty) VALUES ('after-barman-backup', 2)",
                         dbname="app")
    fingerprint = restore_and_check(f"s3://{hook_bucket}/hook", SERVER, backup_id, hook_cluster)
    assert fingerprint["app.public.items"].startswith("5002:")
    assert fingerprint["app.public.events"].startswith("3000:")


def test_upload_failure_exits_1_and_leaves_barman_backup_info_alone(
    s3: S3Server, barman_server: BarmanServer, barman_backup: str
) -> None:
    """Barman's exact hook environment, but a bucket that does not exist."""
    info = barman_server.backup_info_path(barman_backup)
    before = (info.read_bytes(), info.stat().st_mtime_ns)
    missing = f"nobucket-{uuid.uuid4().hex[:12]}"
    result = run_runner(f"s3://{missing}/hook", SERVER, s3=s3,
                        env=barman_hook_env(barman_server))
    assert result.returncode == 1, result.stderr
    assert "Backup upload failed" in result.stderr and missing in result.stderr
    assert (info.read_bytes(), info.stat().st_mtime_ns) == before


# ------------------------------------------------------------------ a synthetic Barman backup
BACKUP_ID = "20240101T000000"
PGDATA = "/var/lib/postgresql/15/main"
INFO = f"""\
backup_label='START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\\nLABEL: x\\n'
begin_time=2024-01-01 00:00:00.123456+00:00
begin_wal=000000010000000000000002
compression=None
end_time=2024-01-01 00:00:05+00:00
end_wal=000000010000000000000002
mode=postgres
pgdata={PGDATA}
server_name=pg
status=DONE
tablespaces=[('tbs1', 16384, '/srv/tbs1'), ('inside', 16390, '{PGDATA}/inside_tbs')]
timeline=1
version=150018
"""


def _write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def fake_backup(tmp_path: Path) -> Path:
    """A Barman backup directory the way pg_basebackup + Barman leave it, plus junk to drop."""
    backup_dir = tmp_path / BACKUP_ID
    data = backup_dir / "data"
    for rel in ("PG_VERSION", "backup_label", "backup_manifest", "global/pg_control",
                "global/1262", "base/1/1259", "base/1/t3_16400", "base/1/pg_internal.init",
                "pg_wal/000000010000000000000002", "pg_stat_tmp/global.stat",
                "postmaster.pid", "inside_tbs/PG_15_202209061/1/16391"):
        _write(data / rel, os.urandom(3000))
    (data / "pg_tblspc").mkdir()
    (data / "pg_tblspc" / "16384").symlink_to(backup_dir / "16384")
    _write(backup_dir / "16384" / "PG_15_202209061" / "5" / "16385", os.urandom(5000))
    _write(backup_dir / "16384" / "PG_14_202107181" / "5" / "16385")
    _write(backup_dir / "16384" / "stray.txt")
    _write(backup_dir / "16390" / "PG_15_202209061" / "1" / "16391")
    _write(tmp_path / "meta" / f"{BACKUP_ID}-backup.info", INFO.encode())
    return backup_dir


def hook_env(backup_dir: Path, **overrides: str | None) -> dict[str, str]:
    """The variables Barman sets for a post_backup_retry_script (None removes one)."""
    env: dict[str, str | None] = {
        "BARMAN_HOOK": "backup_retry_script",
        "BARMAN_PHASE": "post",
        "BARMAN_RETRY": "1",
        "BARMAN_SERVER": SERVER,
        "BARMAN_BACKUP_DIR": str(backup_dir),
        "BARMAN_BACKUP_ID": BACKUP_ID,
        "BARMAN_BACKUP_INFO_PATH": str(backup_dir.parent / "meta" / f"{BACKUP_ID}-backup.info"),
        "BARMAN_STATUS": "DONE",
        "BARMAN_ERROR": "",
        **overrides,
    }
    return {k: v for k, v in env.items() if v is not None}


def test_walk_keeps_what_barman_uploads_from_a_backup_directory(fake_backup: Path) -> None:
    backup = hook.read_barman_backup(hook_env(fake_backup))
    roots = {root.archive: root for root in hook.barman_roots(backup)}
    assert set(roots) == {"data", "16384", "16390"}
    data = [e.name for e in walk(roots["data"])]
    assert {"backup_label", "backup_manifest", "global/pg_control", "global/1262",
            "base/1/1259", "pg_wal", "pg_stat_tmp", "pg_tblspc", "PG_VERSION"} <= set(data)
    for dropped in ("postmaster.pid", "base/1/t3_16400", "base/1/pg_internal.init",
                    "pg_wal/000000010000000000000002", "pg_stat_tmp/global.stat",
                    "pg_tblspc/16384", "inside_tbs"):
        assert dropped not in data
    assert not [n for n in data if n.startswith("inside_tbs/")]
    tablespace = [e.name for e in walk(roots["16384"])]
    assert tablespace == ["PG_15_202209061", "PG_15_202209061/5", "PG_15_202209061/5/16385"]
    assert roots["16390"].path == str(fake_backup / "16390")


@pytest.mark.parametrize(("phase", "hook_name"), [
    ("pre", "backup_script"), ("pre", "backup_retry_script"), ("post", "archive_script"),
    ("post", "delete_retry_script"),
])
def test_unsupported_hook_exits_4(fake_backup: Path, phase: str, hook_name: str) -> None:
    env = hook_env(fake_backup, BARMAN_PHASE=phase, BARMAN_HOOK=hook_name)
    result = run_runner("s3://nowhere/x", SERVER, env=env)
    assert result.returncode == 4, result.stderr
    assert f"called as unsupported hook script: {phase}_{hook_name}" in result.stderr


@pytest.mark.parametrize(("overrides", "args", "code", "message"), [
    ({"BARMAN_STATUS": "WAITING_FOR_WALS"}, (), 63,
     "has status 'WAITING_FOR_WALS' (status should be: DONE)"),
    ({"BARMAN_STATUS": "FAILED"}, (), 63, "has status 'FAILED' (status should be: DONE)"),
    ({}, ("-n", "nightly"), 4, "Cannot set backup name when running as a hook script"),
    ({"BARMAN_BACKUP_DIR": None}, (), 4, "BARMAN_BACKUP_DIR environment variable not set"),
    ({"BARMAN_BACKUP_ID": None}, (), 4, "BARMAN_BACKUP_ID environment variable not set"),
    ({"BARMAN_BACKUP_INFO_PATH": None}, (), 4,
     "BARMAN_BACKUP_INFO_PATH environment variable not set"),
])
def test_refusals_follow_barman(
    fake_backup: Path, overrides: dict[str, str | None], args: tuple[str, ...], code: int,
    message: str,
) -> None:
    result = run_runner(*args, "s3://nowhere/x", SERVER, env=hook_env(fake_backup, **overrides))
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    if code == 63:
        assert str(fake_backup) in result.stderr


def test_compressed_barman_backup_is_refused(fake_backup: Path) -> None:
    info = fake_backup.parent / "meta" / f"{BACKUP_ID}-backup.info"
    info.write_text(INFO.replace("compression=None", "compression=gzip"))
    result = run_runner("s3://nowhere/x", SERVER, env=hook_env(fake_backup))
    assert result.returncode == 4, result.stderr
    assert "Compressed backups are not supported when running as a hook script" in result.stderr


def test_fake_backup_uploads_with_worker_processes(
    s3: S3Server, bucket: str, fake_backup: Path
) -> None:
    """The CLI path: chunks split by -S, zstd, 3 worker processes, backup.info byte for byte."""
    result = run_runner("--zstd", "-S", "4KB", "-J", "3", f"s3://{bucket}/h", SERVER, s3=s3,
                        env=hook_env(fake_backup))
    assert result.returncode == 0, result.stderr
    prefix = f"h/{SERVER}/base/{BACKUP_ID}/"
    names = {k[len(prefix):] for k in s3.list_objects(bucket, prefix)}
    assert {"data.tar.zst", "data_0001.tar.zst", "16384.tar.zst", "16390.tar.zst",
            "backup.info"} <= names
    assert s3.get_object(bucket, prefix + "backup.info") == INFO.encode()


def test_leftovers_of_an_earlier_attempt_block_backup_info(
    s3: S3Server, bucket: str, fake_backup: Path
) -> None:
    """A retry with other options must not publish a backup that restore would mix up."""
    url = f"s3://{bucket}/h"
    first = run_runner("-S", "4KB", url, SERVER, s3=s3, env=hook_env(fake_backup))
    assert first.returncode == 0, first.stderr
    info_key = f"h/{SERVER}/base/{BACKUP_ID}/backup.info"
    s3.client().delete_object(Bucket=bucket, Key=info_key)
    second = run_runner(url, SERVER, s3=s3, env=hook_env(fake_backup))
    assert second.returncode == 1
    assert "objects of an earlier upload remain" in second.stderr
    assert info_key not in s3.list_objects(bucket, "h/")


def test_missing_tablespace_directory_fails_before_uploading(
    s3: S3Server, bucket: str, fake_backup: Path
) -> None:
    shutil.rmtree(fake_backup / "16390")
    result = run_runner(f"s3://{bucket}/h", SERVER, s3=s3, env=hook_env(fake_backup))
    assert result.returncode == 1
    assert "Backup upload failed uploading data" in result.stderr
    assert "16390 does not exist" in result.stderr
    assert s3.list_objects(bucket) == {}


# ------------------------------------------------------------------ ordering, in process
class MemoryStore:
    """An ObjectStore in memory that records writes and can fail on one key."""

    min_part_size = 5 << 20
    max_parts = 10000

    def __init__(self, fail_on: str | None = None) -> None:
        self.bucket, self.base_path = "mem", "p"
        self.objects: dict[str, bytes] = {}
        self.order: list[str] = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def check(self) -> None:
        pass

    def put(self, key: str, data: bytes, *, lock: bool = False) -> None:
        if self.fail_on and key.endswith(self.fail_on):
            raise OSError(f"simulated failure writing {key}")
        with self._lock:
            self.objects[key] = data
            self.order.append(key)

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(k, len(v)) for k, v in self.objects.items() if k.startswith(prefix)]
        yield from items

    def start_multipart(self, key: str, *, lock: bool = False) -> Any:
        raise AssertionError("small objects are written with one put")

    def close(self) -> None:
        pass


def _options(jobs: int = 2) -> BackupOptions:
    return BackupOptions(server_name=SERVER, store=StoreConfig("s3://mem/p"), jobs=jobs,
                         max_archive_size=4096)


def test_backup_info_is_written_last(fake_backup: Path) -> None:
    store = MemoryStore()
    backup = hook.read_barman_backup(hook_env(fake_backup))
    results = hook.upload_barman_backup(backup, _options(), store)  # type: ignore[arg-type]
    assert store.order[-1] == f"p/{SERVER}/base/{BACKUP_ID}/backup.info"
    archives = [key for key in store.order if "/base/" in key]  # not the pgcloud manifests
    assert len(archives) == len(results) + 1 >= 4
    assert f"p/{SERVER}/pgcloud/{BACKUP_ID}/manifest.json" in store.order
    assert store.objects[store.order[-1]] == INFO.encode()


def test_failed_part_never_publishes_backup_info(fake_backup: Path) -> None:
    info = fake_backup.parent / "meta" / f"{BACKUP_ID}-backup.info"
    mtime = info.stat().st_mtime_ns
    store = MemoryStore(fail_on="/16384.tar")
    backup = hook.read_barman_backup(hook_env(fake_backup))
    with pytest.raises(BackupFailed, match=r"Backup upload failed uploading data \(simulated"):
        hook.upload_barman_backup(backup, _options(), store)  # type: ignore[arg-type]
    assert not [k for k in store.objects if k.endswith("backup.info")]
    assert info.stat().st_mtime_ns == mtime and info.read_text() == INFO
