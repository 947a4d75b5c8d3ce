"""pgcloud-wal-restore: WAL that Barman's barman-cloud-wal-archive stored, fetched back for
restore_command.

Against the real S3 server: a real WAL segment of a dedicated cluster, a timeline history file,
a `.partial` and a `.backup` file are archived by Barman itself in every compression it writes,
and each comes back byte for byte; a missing file exits 1, a bad name 3, an unreachable store 2,
as barman-cloud-wal-restore does (asked the same, it answers the same). End to end: a cluster
restored from a backup replays WAL fetched by pgcloud-wal-restore alone and has the source's
rows, including those written after the backup.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_pgcloud.runner import layout
from tests.conftest import RestoreAndCheck
from tests.rig.barman import backup_list, run_barman
from tests.rig.pgcluster import PgCluster, WalArchive, init_cluster
from tests.rig.s3server import S3Server
from tests.rig.tools import free_port, make_workdir
from tests.runner_cli import REPO, run_runner, runner_env

WAL_RESTORE = [sys.executable, "-m", "airflow_provider_pgcloud.runner.wal_restore"]
SERVER = "pg"
HISTORY = "00000002.history"
# barman-cloud-wal-archive's compression flags and the suffix each adds
COMPRESSIONS = {
    "none": ((), ""),
    "gzip": (("-z",), ".gz"),
    "bzip2": (("-j",), ".bz2"),
    "xz": (("--xz",), ".xz"),
    "snappy": (("--snappy",), ".snappy"),
    "zstd": (("--zstd",), ".zst"),
    "lz4": (("--lz4",), ".lz4"),
}


def wal_restore(s3: S3Server, *args: str, endpoint: str | None = None
                ) -> subprocess.CompletedProcess[str]:
    """`python -m airflow_provider_pgcloud.runner.wal_restore --endpoint-url URL ARGS`, with
    the S3 credentials in the environment only."""
    return subprocess.run(
        [*WAL_RESTORE, "--endpoint-url", endpoint or s3.endpoint_url, *args],
        env=runner_env(s3), cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@dataclasses.dataclass
class Archived:
    """WAL files archived by Barman under `s3://<bucket>/<compression>` for server `pg`."""

    bucket: str
    source: PgCluster
    files: dict[str, bytes]  # name -> the original bytes
    segment: str

    def url(self, compression: str) -> str:
        return f"s3://{self.bucket}/{compression}"


def archive_with_barman(s3: S3Server, url: str, path: Path, *flags: str) -> None:
    run_barman("barman-cloud-wal-archive", *flags, url, SERVER, str(path), s3=s3)


@pytest.fixture(scope="module")
def archived(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    """A dedicated PostgreSQL 15 whose WAL Barman archives with gzip; one of its real segments,
    a history file in PostgreSQL's format, that segment as a `.partial` and a backup history
    file, each archived by barman-cloud-wal-archive in every compression it writes."""
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(bucket)
    archive = WalArchive(s3, f"s3://{bucket}/archive", SERVER, archive_options=("--gzip",))
    source = init_cluster(make_workdir("walrestore"), 15, tablespace=False,
                          wal_archive=archive, remove_workdir_on_stop=True)
    try:
        source.execute("CREATE TABLE filler AS SELECT g, md5(g::text) AS h"
                       " FROM generate_series(1, 20000) g", dbname="app")
        segment = source.switch_wal_and_wait_archived()
        files = {
            segment: (source.pgdata / "pg_wal" / segment).read_bytes(),
            HISTORY: b"1\t0/3000160\tno recovery target specified\n",
            f"{segment}.partial": (source.pgdata / "pg_wal" / segment).read_bytes()[:1 << 20],
            f"{segment}.00000028.backup": (
                f"START WAL LOCATION: 0/{segment[-2:]}000028 (file {segment})\n"
                f"STOP WAL LOCATION: 0/{segment[-2:]}000100 (file {segment})\n").encode(),
        }
        local = tmp_path_factory.mktemp("walfiles")
        for name, data in files.items():
            (local / name).write_bytes(data)
        for compression, (flags, _suffix) in COMPRESSIONS.items():
            for name in files:
                archive_with_barman(s3, f"s3://{bucket}/{compression}", local / name, *flags)
        yield Archived(bucket, source, files, segment)
    finally:
        source.stop()


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_every_compression_barman_archives_comes_back_byte_for_byte(
    s3: S3Server, archived: Archived, compression: str, tmp_path: Path
) -> None:
    suffix = COMPRESSIONS[compression][1]
    segment, partial = archived.segment, f"{archived.segment}.partial"
    backup = next(name for name in archived.files if name.endswith(".backup"))
    # where Barman put them is where layout.py says: history files in wals/ itself
    hash_dir = segment[:16]
    assert set(s3.list_objects(archived.bucket, f"{compression}/")) == {
        f"{compression}/{SERVER}/wals/{hash_dir}/{segment}{suffix}",
        f"{compression}/{SERVER}/wals/{hash_dir}/{partial}{suffix}",
        f"{compression}/{SERVER}/wals/{hash_dir}/{backup}{suffix}",
        f"{compression}/{SERVER}/wals/{HISTORY}{suffix}",
    }
    assert {layout.wal_key(compression, SERVER, name, suffix) for name in archived.files} == \
        set(s3.list_objects(archived.bucket, f"{compression}/"))

    for name in (segment, HISTORY, partial, backup):
        destination = tmp_path / f"restored-{name}"
        result = wal_restore(s3, archived.url(compression), SERVER, name, str(destination))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert destination.read_bytes() == archived.files[name], name
    # nothing but the destinations: no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"restored-{name}" for name in (segment, HISTORY, partial, backup))


def test_missing_file_exits_1_as_barman_does(s3: S3Server, archived: Archived,
                                             tmp_path: Path) -> None:
    url = archived.url("gzip")
    following = f"{archived.segment[:16]}{int(archived.segment[16:], 16) + 1:08X}"
    for name in (following, "00000003.history", f"{archived.segment[:8]}FFFFFFFF00000001"):
        destination = tmp_path / "RECOVERYXLOG"
        result = wal_restore(s3, url, SERVER, name, str(destination))
        assert result.returncode == 1, result.stderr
        message = one_line(result.stderr)
        assert f"WAL file {name} of server {SERVER} is not in the archive" in message
        assert not destination.exists()
        assert list(tmp_path.iterdir()) == []
        barman = run_barman("barman-cloud-wal-restore", url, SERVER, name, str(destination),
                            s3=s3, check=False)
        assert barman.returncode == 1, barman.stderr
    # another server, or another path, holds nothing
    result = wal_restore(s3, url, "other", archived.segment, str(tmp_path / "x"))
    assert result.returncode == 1, result.stderr


def test_partial_file_stands_in_for_a_segment_never_archived_whole(
    s3: S3Server, archived: Archived, tmp_path: Path
) -> None:
    url = f"s3://{archived.bucket}/partial-only"
    partial = f"{archived.segment}.partial"
    local = tmp_path / "in"
    local.mkdir()
    (local / partial).write_bytes(archived.files[partial])
    archive_with_barman(s3, url, local / partial, "--zstd")
    destination = tmp_path / "RECOVERYXLOG"

    result = wal_restore(s3, url, SERVER, archived.segment, str(destination))
    assert result.returncode == 0, result.stderr
    assert destination.read_bytes() == archived.files[partial]
    destination.unlink()

    result = wal_restore(s3, "--no-partial", url, SERVER, archived.segment, str(destination))
    assert result.returncode == 1, result.stderr
    assert not destination.exists()

    # beside the whole segment, the .partial file is never chosen
    result = wal_restore(s3, archived.url("lz4"), SERVER, archived.segment, str(destination))
    assert result.returncode == 0, result.stderr
    assert destination.read_bytes() == archived.files[archived.segment]


@pytest.mark.parametrize("name", [
    "nope", "00000001000000000000000", "000000010000000000000001.gz", "00000002.history.gz",
    "0000000100000000000000XY", "000000010000000000000001.partial.partial",
    "000000010000000000000001.backup", "00000001.000000010000000000000001",
])
def test_a_name_that_is_no_wal_file_exits_3(s3: S3Server, name: str, tmp_path: Path) -> None:
    destination = tmp_path / "RECOVERYXLOG"
    destination.write_bytes(b"untouched")
    result = wal_restore(s3, "s3://no-such-bucket/x", SERVER, name, str(destination))
    assert result.returncode == 3, result.stderr
    assert f"{name} is not the name of a WAL segment" in one_line(result.stderr)
    assert destination.read_bytes() == b"untouched"
    barman = run_barman("barman-cloud-wal-restore", "s3://no-such-bucket/x", SERVER, name,
                        str(destination), s3=s3, check=False)
    assert barman.returncode == 3, barman.stderr


def test_a_path_is_no_wal_name(s3: S3Server, tmp_path: Path) -> None:
    """Stricter than Barman, which tests only the last component of WAL_NAME (and then looks
    the whole of it up): a name with a directory in it is bad input."""
    for name in ("../000000010000000000000001", "x/00000002.history"):
        result = wal_restore(s3, "s3://no-such-bucket/x", SERVER, name,
                             str(tmp_path / "RECOVERYXLOG"))
        assert result.returncode == 3, result.stderr
        assert f"{name} is not the name of a WAL segment" in one_line(result.stderr)


def test_unreachable_store_exits_2(s3: S3Server, tmp_path: Path) -> None:
    result = wal_restore(s3, "s3://wal/archive", SERVER, "000000010000000000000001",
                         str(tmp_path / "RECOVERYXLOG"), endpoint=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert "Can't connect to cloud provider" in one_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_test_mode_and_missing_bucket(s3: S3Server, archived: Archived, tmp_path: Path) -> None:
    result = wal_restore(s3, "-t", archived.url("none"), SERVER, archived.segment,
                         str(tmp_path / "x"))
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    result = wal_restore(s3, "s3://no-such-bucket-here/x", SERVER, archived.segment,
                         str(tmp_path / "x"))
    assert result.returncode == 1, result.stderr
    assert "Bucket no-such-bucket-here does not exist" in one_line(result.stderr)


def test_a_damaged_object_never_reaches_the_destination(
    s3: S3Server, archived: Archived, tmp_path: Path
) -> None:
    """The destination is replaced whole or not at all: a stored object that does not
    decompress, or that is cut short, leaves the previous file and no temporary file."""
    segment = archived.segment
    client = s3.client()
    good = s3.get_object(archived.bucket, layout.wal_key("gzip", SERVER, segment, ".gz"))
    destination = tmp_path / "RECOVERYXLOG"
    for damaged in (good[: len(good) // 2], good[:20] + bytes(len(good) - 20),
                    good + b"trailing"):
        prefix = f"damaged-{uuid.uuid4().hex[:8]}"
        client.put_object(Bucket=archived.bucket,
                          Key=layout.wal_key(prefix, SERVER, segment, ".gz"), Body=damaged)
        destination.write_bytes(b"previous")
        result = wal_restore(s3, f"s3://{archived.bucket}/{prefix}", SERVER, segment,
                             str(destination))
        assert result.returncode == 4, result.stderr
        assert f"{prefix}/{SERVER}/wals/{segment[:16]}/{segment}.gz" in one_line(result.stderr)
        assert destination.read_bytes() == b"previous"
        assert [p.name for p in tmp_path.iterdir()] == ["RECOVERYXLOG"]
    # a good object replaces an existing file (PostgreSQL reuses RECOVERYXLOG)
    result = wal_restore(s3, archived.url("gzip"), SERVER, segment, str(destination))
    assert result.returncode == 0, result.stderr
    assert destination.read_bytes() == archived.files[segment]


def test_recovery_replays_wal_fetched_by_pgcloud_wal_restore(
    s3: S3Server, archived: Archived, restore_and_check: RestoreAndCheck
) -> None:
    """A backup of the dedicated cluster, rows written after it, then a restore whose
    restore_command is pgcloud-wal-restore alone (WAL archived gzip-compressed by Barman):
    the restored cluster has every row, so each segment after the backup came through it."""
    source = archived.source
    url = f"s3://{archived.bucket}/backups"
    result = run_runner("--immediate-checkpoint", "-z", url, SERVER, s3=s3, pg=source)
    assert result.returncode == 0, result.stderr
    [backup] = backup_list(s3, url, SERVER)
    source.execute("CREATE TABLE after_backup AS SELECT g, md5(g::text) AS h"
                   " FROM generate_series(1, 5000) g", dbname="app")
    source.execute("SELECT pg_switch_wal()")
    source.execute("INSERT INTO after_backup SELECT g, 'late' FROM generate_series(5001, 5100) g",
                   dbname="app")
    assert source.wal_archive is not None
    archive = dataclasses.replace(source.wal_archive, restorer="pgcloud")
    assert "airflow_provider_pgcloud.runner.wal_restore" in archive.restore_command()
    assert "barman" not in archive.restore_command()
    restored = restore_and_check(url, SERVER, backup["backup_id"], source, wal_archive=archive)
    assert restored["app.public.after_backup"].startswith("5100:")


def test_module_forms_and_console_script_agree(tmp_path: Path) -> None:
    """`python -m ...runner.wal_restore`, `python -m ...runner.cli.wal_restore` and the
    installed `pgcloud-wal-restore` are one command."""
    script = shutil.which("pgcloud-wal-restore", path=str(Path(sys.executable).parent))
    assert script is not None
    forms = [WAL_RESTORE, [sys.executable, "-m", "airflow_provider_pgcloud.runner.cli.wal_restore"],
             [script]]
    for argv in forms:
        result = subprocess.run([*argv, "s3://b/p", SERVER, "bad", str(tmp_path / "x")],
                                env=runner_env(), cwd=REPO, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 3, result.stderr
        assert "bad is not the name of a WAL segment" in one_line(result.stderr)


def test_keys_follow_barman_hash_dirs() -> None:
    """Timeline and log in upper case, for segments, `.partial` and `.backup` files alike
    (Barman accepts lower-case names and upper-cases only the directory); history files have
    none."""
    assert layout.wal_key("p", SERVER, "000000010000000A000000FE") == \
        "p/pg/wals/000000010000000A/000000010000000A000000FE"
    assert layout.wal_key("", SERVER, "000000020000000a000000fe.partial", ".zst") == \
        "pg/wals/000000020000000A/000000020000000a000000fe.partial.zst"
    assert layout.wal_key("p/q", SERVER, "000000010000000000000003.00000028.backup") == \
        "p/q/pg/wals/0000000100000000/000000010000000000000003.00000028.backup"
    assert layout.wal_key("p", SERVER, "0000000A.history", ".xz") == "p/pg/wals/0000000A.history.xz"
    assert layout.wal_compression("p/pg/wals/00000002.history.snappy") == ("00000002.history",
                                                                            "snappy")
    assert layout.wal_compression("p/pg/wals/X/000000010000000000000003.partial") == (
        "000000010000000000000003.partial", None)
    assert not layout.is_wal_name("000000010000000000000003\n")
