"""A backup taken by the runner is listed and restored by Barman's own tools, rows intact.

Each test runs the real command line against a real PostgreSQL (with a tablespace outside
PGDATA and WAL archived by barman-cloud-wal-archive) and a real S3 server, then asks Barman
3.20 to list and restore the result and PostgreSQL to replay WAL on it.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import uuid

import pytest

from airflow_provider_pgcloud.runner.cpu import usable_cores
from airflow_provider_pgcloud.runner.storage import StoreConfig, open_store
from airflow_provider_pgcloud.runner.verify import verify_backup
from tests.rig.barman import backup_list
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.runner_cli import run_runner

SUFFIXES = {
    "none": ".tar",
    "gzip": ".tar.gz",
    "bzip2": ".tar.bz2",
    "snappy": ".tar.snappy",
    "lz4": ".tar.lz4",
    "zstd": ".tar.zst",
}
FLAGS = {"none": [], "gzip": ["-z"], "bzip2": ["-j"], "snappy": ["--snappy"], "lz4": ["--lz4"],
         "zstd": ["--zstd"]}


def backup_ids(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    keys = s3.list_objects(bucket, prefix)
    return sorted({key.split("/base/")[1].split("/")[0] for key in keys if "/base/" in key})


def write_after_backup(pg: PgCluster) -> None:
    """Rows written after the backup reach the restore only through archived WAL."""
    pg.execute("CREATE TABLE IF NOT EXISTS after_backup (id int, note text)", dbname="app")
    pg.execute("INSERT INTO after_backup VALUES (%s, %s)", (1, uuid.uuid4().hex), dbname="app")


@pytest.mark.parametrize("codec", list(SUFFIXES))
def test_every_codec_split_archives_restore_with_barman(codec, s3, pg, bucket, restore_and_check):
    url = f"s3://{bucket}/backups"
    result = run_runner(*FLAGS[codec], "-S", "2MB", "-J", "2", "--immediate-checkpoint",
                        "-n", f"nightly-{codec}", url, "pg", s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr

    [backup_id] = backup_ids(s3, bucket, "backups/")
    [listed] = backup_list(s3, url, "pg")
    assert (listed["backup_id"], listed["status"]) == (backup_id, "DONE")
    assert listed["backup_name"] == f"nightly-{codec}"

    stored = s3.list_objects(bucket, f"backups/pg/base/{backup_id}/")
    names = {key.rsplit("/", 1)[1] for key in stored}
    suffix = SUFFIXES[codec]
    assert {f"data{suffix}", f"data_0001{suffix}", f"16384{suffix}", "backup.info"} <= names
    assert all(n == "backup.info" or n.endswith(suffix) for n in names)

    write_after_backup(pg)
    restore_and_check(url, "pg", f"nightly-{codec}", pg)


@pytest.mark.parametrize("major", [14, 17])
def test_other_postgres_majors(major, s3, bucket, pg_cluster_factory, restore_and_check):
    cluster = pg_cluster_factory(major)
    url = f"s3://{bucket}/pg{major}"
    result = run_runner("-z", "--immediate-checkpoint", url, "pg", s3=s3, pg=cluster)
    assert result.returncode == 0, result.stderr
    [backup_id] = backup_ids(s3, bucket, f"pg{major}/")
    info = s3.get_object(bucket, f"pg{major}/pg/base/{backup_id}/backup.info").decode()
    assert re.search(rf"^version={major}\d{{4}}$", info, re.M)
    write_after_backup(cluster)
    restore_and_check(url, "pg", backup_id, cluster)


def _members(s3: S3Server, bucket: str, key: str) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(bucket, key))) as tar:
        return tar.getmembers()


def test_a_table_that_outweighs_the_rest_is_compressed_on_every_core(
        s3, pg, bucket, restore_and_check):
    """A relation file is never split across archives, so a table holding most of the work
    makes its chunk the critical path. That chunk's single stream (one gzip member, one zstd
    or lz4 frame, one bzip2 stream) is then compressed by more than one thread, and Barman
    restores it."""
    pg.execute("CREATE TABLE hashes AS SELECT md5(i::text) || md5((-i)::text) AS h"
               " FROM generate_series(1, 600000) i", dbname="app")
    try:
        for codec in ("gzip", "zstd", "lz4", "bzip2"):
            url = f"s3://{bucket}/{codec}"
            result = run_runner(*FLAGS[codec], "-J", "2", "--immediate-checkpoint", url, "pg",
                                s3=s3, pg=pg)
            assert result.returncode == 0, result.stderr
            threads = [int(n) for n in re.findall(
                r"stored as \S+ \([^)]*, compressed by (\d+) threads\)", result.stderr)]
            if usable_cores() > 1:
                assert len(threads) == 1 and threads[0] > 1, result.stderr
            write_after_backup(pg)
            restore_and_check(url, "pg", "latest", pg)
    finally:  # the session's cluster is shared: later tests must not back this table up
        pg.execute("DROP TABLE hashes", dbname="app")


def test_a_manifest_larger_than_a_part_is_written_as_the_archive_grows(
        s3, pg, bucket, monkeypatch, request):
    """60,000 files with 200-character names make manifests of about 17 MB, over S3's 5 MiB
    part however the planner cuts them into chunks: each goes up in parts while its archive
    is written (not held until the end), and verify reads every entry."""
    many = pg.pgdata / "pgcloud_many_files"
    many.mkdir()
    request.addfinalizer(lambda: shutil.rmtree(many))  # the session's cluster is shared
    for n in range(60_000):
        (many / f"{n:05d}{'-' * 195}").touch()
    url = f"s3://{bucket}/many"
    result = run_runner("-J", "1", "--immediate-checkpoint", url, "pg", s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    manifests = s3.list_objects(bucket, "many/pg/pgcloud/")
    largest = max(manifests, key=manifests.__getitem__)
    assert manifests[largest] > 5 << 20, manifests
    # uploaded in parts as the archive grew (a multipart ETag ends in -<parts>)
    etag = s3.client().head_object(Bucket=bucket, Key=largest)["ETag"]
    assert re.search(r"-\d+\"?$", etag), etag
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(StoreConfig(url, endpoint_url=s3.endpoint_url))
    try:
        [backup_id] = backup_ids(s3, bucket, "many/")
        report = verify_backup(store, "pg", backup_id)
    finally:
        store.close()
    assert report.files > 60_000


def test_archives_stay_under_max_archive_size_and_feed_every_job(s3, pg, bucket):
    limit = 1 << 20
    result = run_runner("-S", "1MB", "-J", "2", "--immediate-checkpoint", f"s3://{bucket}/s",
                        "pg", s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    objects = {k: v for k, v in s3.list_objects(bucket, "s/").items() if k.endswith(".tar")}
    assert len(objects) > 4
    for key, size in objects.items():
        if size > limit + 20480:  # tar end-of-archive blocks and record padding
            files = [m for m in _members(s3, bucket, key) if m.isfile()]
            assert len(files) == 1, f"{key} exceeds -S with {len(files)} files"
    # several archive objects were compressed by both worker processes
    workers = set(re.findall(r"\[(\d+)\] INFO: \S+ stored as", result.stderr))
    assert len(workers) == 2, result.stderr


def test_a_small_cluster_still_feeds_every_job(s3, pg, bucket):
    """Far below 64 MiB per job, the data is still cut so that both workers get a share, but
    not into more pieces than that: every object costs a request (and in Airflow, a task)."""
    result = run_runner("-J", "2", "--immediate-checkpoint", f"s3://{bucket}/j", "pg",
                        s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    data = [k for k in s3.list_objects(bucket, "j/") if re.search(r"/data(_\d+)?\.tar$", k)]
    assert 2 <= len(data) <= 3, data
    workers = set(re.findall(r"\[(\d+)\] INFO: \S+ stored as", result.stderr))
    assert len(workers) == 2, result.stderr


def test_parts_are_equal_except_the_last(s3, pg, bucket):
    pg.execute("CREATE TABLE IF NOT EXISTS big AS SELECT g, md5(g::text) AS h "
               "FROM generate_series(1, 300000) g", dbname="app")
    result = run_runner("-J", "1", "--min-chunk-size", "5MB", "--immediate-checkpoint",
                        f"s3://{bucket}/p", "pg", s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    [data_key] = [k for k in s3.list_objects(bucket, "p/") if k.endswith("/data.tar")]
    client = s3.client()
    head = client.head_object(Bucket=bucket, Key=data_key, PartNumber=1)
    count = head["PartsCount"]
    assert count >= 3
    sizes = [client.head_object(Bucket=bucket, Key=data_key, PartNumber=n)["ContentLength"]
             for n in range(1, count + 1)]
    assert set(sizes[:-1]) == {5 << 20} and 0 < sizes[-1] <= 5 << 20


def test_no_temporary_files(s3, pg, bucket, tmp_path):
    spool = tmp_path / "tmp"
    spool.mkdir()
    result = run_runner("-z", "--immediate-checkpoint", f"s3://{bucket}/t", "pg", s3=s3, pg=pg,
                        env={"TMPDIR": str(spool)})
    assert result.returncode == 0, result.stderr
    assert list(spool.iterdir()) == []


def test_backup_info_is_barman_shaped(s3, pg, bucket):
    result = run_runner("--immediate-checkpoint", "-n", "shape", f"s3://{bucket}/i", "pg",
                        s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    [key] = [k for k in s3.list_objects(bucket, "i/") if k.endswith("backup.info")]
    lines = s3.get_object(bucket, key).decode().splitlines()
    assert lines == sorted(lines)
    info = dict(line.split("=", 1) for line in lines)
    assert info["status"] == "DONE" and info["server_name"] == "cloud"
    assert info["backup_name"] == "shape"
    assert info["tablespaces"].startswith("[('tbs1', 16384, ")
    assert info["backup_label"].startswith("'START WAL LOCATION:")
    assert "None" not in info.values()
    assert not pg.in_backup()
