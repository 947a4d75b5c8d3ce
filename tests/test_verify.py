"""The backup manifest and `verify`: checksums taken while streaming, checked without restoring.

End to end on S3: a backup's manifest sits beside Barman's layout, Barman's list, restore and
delete still work, `verify` passes a fresh backup and names the one file changed in a
rewritten archive, and the cleanup removes the manifest barman-cloud-backup-delete leaves.
In process: every codec round-trips through verify, and damage of any kind is caught.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_pgcloud.runner import backup_info as bi
from airflow_provider_pgcloud.runner import layout, manifest
from airflow_provider_pgcloud.runner.codecs import CODECS, get_codec
from airflow_provider_pgcloud.runner.layout import DATA, index_key, manifest_root
from airflow_provider_pgcloud.runner.manifest import ManifestTarWriter, write_index
from airflow_provider_pgcloud.runner.plan import plan_chunks
from airflow_provider_pgcloud.runner.sources.local import ArchiveRoot
from airflow_provider_pgcloud.runner.steps import BackupState, upload_chunk
from airflow_provider_pgcloud.runner.storage import StoreConfig
from airflow_provider_pgcloud.runner.verify import VerifyFailed, verify_backup
from tests.conftest import RestoreAndCheck
from tests.rig.barman import backup_list, run_barman
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.runner_cli import CLEANUP, REPO, VERIFY, run_runner, runner_env


def run_tool(tool: list[str], s3: S3Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*tool, "--endpoint-url", s3.endpoint_url, *args],
                          env=runner_env(s3), cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)


def _corrupt_one_file(archive: bytes) -> tuple[bytes, str]:
    """The gzip archive with one byte of its largest file changed, recompressed as one
    gzip member; and that file's name."""
    raw = bytearray(gzip.decompress(archive))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        member = max((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.size)
    position = member.offset_data + member.size // 2
    raw[position] ^= 0x01
    return gzip.compress(bytes(raw)), member.name


# ------------------------------------------------------------------ end to end, on S3
def test_manifest_beside_barman_layout_and_verify_names_the_bad_file(
    s3: S3Server, pg: PgCluster, bucket: str, restore_and_check: RestoreAndCheck
) -> None:
    url = f"s3://{bucket}/v"
    result = run_runner("-z", "-S", "2MB", "--immediate-checkpoint", "-n", "checked", url, "pg",
                        s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    [listed] = backup_list(s3, url, "pg")
    backup_id = listed["backup_id"]
    assert listed["status"] == "DONE"
    prefix = f"v/pg/base/{backup_id}"
    objects = s3.list_objects(bucket, "v/")
    # Barman's directory holds only archives and backup.info; the manifest is a sibling
    inside = {k[len(prefix) + 1:] for k in objects if k.startswith(prefix + "/")}
    assert all(n == "backup.info" or n.endswith(".tar.gz") for n in inside)
    index = json.loads(s3.get_object(bucket, index_key(prefix)))
    assert index_key(prefix) == f"v/pg/pgcloud/{backup_id}/manifest.json"
    assert sorted(a["archive"] for a in index["archives"]) == sorted(inside - {"backup.info"})
    part = json.loads(s3.get_object(bucket, f"v/pg/pgcloud/{backup_id}/"
                                    f"{index['archives'][0]['manifest']}"))
    assert part["members"] and all("checksum" in m for m in part["members"]
                                   if m["type"] == "file")

    ok = run_tool(VERIFY, s3, url, "pg", backup_id)
    assert ok.returncode == 0, ok.stderr
    assert "matches its manifest" in ok.stderr
    assert run_tool(VERIFY, s3, url, "pg", "checked").returncode == 0  # by name

    # Barman restores it with the manifest present (rows equal the source's)
    restore_and_check(url, "pg", backup_id, pg)

    # rewrite one archive with one byte of one file changed, recompressed
    victim = max((k for k in inside if k.endswith(".tar.gz")),
                 key=lambda k: objects[f"{prefix}/{k}"])
    damaged, name = _corrupt_one_file(s3.get_object(bucket, f"{prefix}/{victim}"))
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}/{victim}", Body=damaged)
    bad = run_tool(VERIFY, s3, url, "pg", backup_id)
    assert bad.returncode == 1, bad.stderr
    assert f"{victim}: {name}: " in bad.stderr, bad.stderr

    # barman-cloud-backup-delete removes what it knows; the cleanup removes the manifest
    run_barman("barman-cloud-backup-delete", url, "pg", "-b", backup_id, s3=s3)
    assert backup_list(s3, url, "pg") == []
    assert [k for k in s3.list_objects(bucket, "v/") if "/pgcloud/" in k]
    cleaned = run_tool(CLEANUP, s3, url, "pg")
    assert cleaned.returncode == 0, cleaned.stderr
    assert s3.list_objects(bucket, "v/") == {}


def test_verify_refuses_unknown_and_unfinished_backups(s3: S3Server, bucket: str) -> None:
    url = f"s3://{bucket}/none"
    missing = run_tool(VERIFY, s3, url, "pg", "20240101T000000")
    assert missing.returncode == 1 and "not found" in missing.stderr
    s3.client().put_object(Bucket=bucket, Key="none/pg/base/20240101T000000/backup.info",
                           Body=b"status=STARTED\n")
    started = run_tool(VERIFY, s3, url, "pg", "20240101T000000")
    assert started.returncode == 1 and "is STARTED, not DONE" in started.stderr
    assert run_tool(VERIFY, s3, url, "pg").returncode == 3  # missing argument


# ------------------------------------------------------------------ in process, every codec
class MemoryStore:
    """An ObjectStore in memory, with the streaming read verify needs."""

    min_part_size = 5 << 20
    max_parts = 10000

    def __init__(self) -> None:
        self.bucket, self.base_path = "mem", "p"
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        pass

    def put(self, key: str, data: bytes, *, lock: bool = False) -> None:
        with self._lock:
            self.objects[key] = bytes(data)

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = sorted((k, len(v)) for k, v in self.objects.items() if k.startswith(prefix))
        yield from items

    def iter_object(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        data = self.objects[key]
        for offset in range(0, len(data), 4096):  # small pieces: exercise the buffering
            yield data[offset:offset + 4096]

    def delete(self, key: str) -> None:
        del self.objects[key]

    def start_multipart(self, key: str, *, lock: bool = False) -> Any:
        raise AssertionError("small objects are written with one put")

    def close(self) -> None:
        pass


BACKUP_ID = "20240102T030405"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "pgdata"
    (root / "base" / "1").mkdir(parents=True)
    (root / "global").mkdir()
    (root / "base" / "1" / "1259").write_bytes(os.urandom(300_000))
    (root / "base" / "1" / "1259_fsm").write_bytes(b"\x00" * 24576)
    (root / "base" / "1" / "empty").write_bytes(b"")
    (root / "PG_VERSION").write_text("15\n")
    (root / "global" / "1262").write_bytes(os.urandom(8192))
    os.symlink("/somewhere/else", root / "link")
    return root


def _stored_backup(tree: Path, codec: str) -> tuple[MemoryStore, str]:
    store = MemoryStore()
    prefix = layout.backup_prefix(store.base_path, "srv", BACKUP_ID)
    roots = [ArchiveRoot(DATA, str(tree))]
    state = BackupState(
        backup_id=BACKUP_ID, prefix=prefix, store=StoreConfig("s3://mem/p"),
        compression=None if codec == "none" else codec, min_chunk_size=5 << 20,
        backup_name=None, jobs=1, info={"begin_time": dt.datetime.now(dt.UTC)}, roots=roots,
        chunks=plan_chunks(roots, 1, 200_000),
    )
    assert len(state.chunks) >= 2
    keys = [upload_chunk(state, chunk, store).key for chunk in state.chunks]  # type: ignore[arg-type]
    write_index(store, prefix, keys, "srv")  # type: ignore[arg-type]
    store.put(layout.info_key(prefix), bi.encode({"status": bi.DONE, "version": 150000}))
    return store, prefix


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_verifies_and_any_flipped_byte_is_caught(tree: Path, codec: str) -> None:
    get_codec(codec)
    store, prefix = _stored_backup(tree, codec)
    report = verify_backup(store, "srv", BACKUP_ID)  # type: ignore[arg-type]
    assert report.files == 5 and report.archives >= 2
    assert verify_backup(store, "srv", "latest").backup_id == BACKUP_ID  # type: ignore[arg-type]

    data_key = f"{prefix}/data{get_codec(codec).suffix}"
    original = store.objects[data_key]
    for position in (len(original) // 3, len(original) // 2, len(original) * 9 // 10):
        damaged = bytearray(original)
        damaged[position] ^= 0x20
        store.objects[data_key] = bytes(damaged)
        with pytest.raises(VerifyFailed) as failure:
            verify_backup(store, "srv", BACKUP_ID)  # type: ignore[arg-type]
        assert failure.value.archive == os.path.basename(data_key), failure.value
    store.objects[data_key] = original
    verify_backup(store, "srv", BACKUP_ID)  # type: ignore[arg-type]


def test_sha256_manifests_verify_too(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without CRC32C instructions the manifest falls back to SHA-256."""
    monkeypatch.setattr(manifest, "default_algorithm", lambda: "SHA256")
    store, prefix = _stored_backup(tree, "zstd")
    document = json.loads(store.objects[f"{manifest_root(prefix)}/archives/data.tar.zst.json"])
    assert document["checksum_algorithm"] == "SHA256"
    assert len(document["stored_checksum"]) == 64
    assert verify_backup(store, "srv", BACKUP_ID).files == 5  # type: ignore[arg-type]


def test_structural_damage_is_caught(tree: Path) -> None:
    store, prefix = _stored_backup(tree, "gzip")
    data_key = f"{prefix}/data.tar.gz"
    original = store.objects[data_key]

    def expect(message: str) -> VerifyFailed:
        with pytest.raises(VerifyFailed, match=message) as failure:
            verify_backup(store, "srv", BACKUP_ID)  # type: ignore[arg-type]
        return failure.value

    # a second gzip member appended (and the manifest's size made to agree): Barman's restore
    # would drop it silently
    store.objects[data_key] = original + gzip.compress(b"more")
    manifest_key = f"{manifest_root(prefix)}/archives/data.tar.gz.json"
    document = json.loads(store.objects[manifest_key])
    saved_manifest = store.objects[manifest_key]
    document["stored_bytes"] = len(store.objects[data_key])
    store.objects[manifest_key] = json.dumps(document).encode()
    expect("follow the compression stream")
    store.objects[manifest_key] = saved_manifest

    # truncated
    store.objects[data_key] = original[:-100]
    expect("data.tar.gz: unreadable")
    store.objects[data_key] = original

    # a stray archive barman-cloud-restore would extract on top of the backup
    store.objects[f"{prefix}/data_0099.tar.gz"] = original
    failure = expect("would extract it")
    assert failure.archive == "data_0099.tar.gz"
    del store.objects[f"{prefix}/data_0099.tar.gz"]

    # an archive missing, a manifest missing
    del store.objects[data_key]
    expect("missing from the store")
    store.objects[data_key] = original
    del store.objects[manifest_key]
    expect("manifest is missing")
    store.objects[manifest_key] = saved_manifest
    verify_backup(store, "srv", BACKUP_ID)  # type: ignore[arg-type]


def test_manifest_records_exactly_the_archived_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that shrinks while it is read is archived zero-padded to its header size; the
    checksum covers those archived bytes."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    sink = io.BytesIO()

    def write(data: bytes) -> None:
        sink.write(data)

    tar = ManifestTarWriter(get_codec(None).new(), write, algorithm="SHA256")
    real_read = os.read

    def shrinking_read(fd: int, n: int) -> bytes:
        os.truncate(path, 1000)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", shrinking_read)
    tar.add_file("f", str(path))
    monkeypatch.undo()
    tar.close()
    [entry] = tar.entries
    assert entry["size"] == 5000
    assert entry["checksum"] == hashlib.sha256(b"x" * 1000 + bytes(4000)).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as archive:
        reader = archive.extractfile("f")
        assert reader is not None and reader.read() == b"x" * 1000 + bytes(4000)


# ------------------------------------------------------------------ Azure and GCS
@pytest.mark.parametrize("provider", ["azure", "gcs"])
def test_verify_and_cleanup_on_azure_and_gcs(
    provider: str, tree: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store operations verify and cleanup use (streaming reads, deletes, and on Azure the
    uncommitted blocks a dead run leaves) work on Azurite and the GCS emulator."""
    from airflow_provider_pgcloud.runner.cleanup import clean_server
    from airflow_provider_pgcloud.runner.storage import open_store
    from airflow_provider_pgcloud.runner.upload import PartWriter

    if provider == "azure":
        emulator, name = request.getfixturevalue("azurite"), "azure_container"
    else:
        emulator, name = request.getfixturevalue("gcs_emulator"), "gcs_bucket"
    container = request.getfixturevalue(name)
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    config = StoreConfig(emulator.url(container, "v"), cloud_provider=emulator.provider)
    store: Any = open_store(config)
    try:
        prefix = layout.backup_prefix(store.base_path, "srv", BACKUP_ID)
        roots = [ArchiveRoot(DATA, str(tree))]
        state = BackupState(
            backup_id=BACKUP_ID, prefix=prefix, store=config, compression="gzip",
            min_chunk_size=store.min_part_size, backup_name=None, jobs=1,
            info={"begin_time": dt.datetime.now(dt.UTC)}, roots=roots,
            chunks=plan_chunks(roots, 1, 200_000),
        )
        keys = [upload_chunk(state, chunk, store).key for chunk in state.chunks]
        write_index(store, prefix, keys, "srv")
        store.put(layout.info_key(prefix), bi.encode({"status": bi.DONE, "version": 150000}))
        assert verify_backup(store, "srv", BACKUP_ID).files == 5

        # a multipart object streams back whole
        data = os.urandom(3 * store.min_part_size + 1000)
        writer = PartWriter(store, "v/big", store.min_part_size)
        writer.write(data)
        writer.close()
        assert b"".join(store.iter_object("v/big")) == data
        store.delete("v/big")
        assert "v/big" not in dict(store.list("v/"))

        if provider == "azure":
            # a dead run's staged blocks: listed as an upload in progress, dropped by abort
            upload = store.start_multipart("v/srv/base/20200101T000000/data.tar.gz")
            upload.upload_part(1, b"x" * 1000)
            [(key, _, _)] = list(store.list_uploads("v/srv/"))
            assert key.endswith("data.tar.gz")
            upload.abort()
            assert list(store.list_uploads("v/srv/")) == []
            orphan = store.start_multipart("v/srv/base/20200101T000000/data_0001.tar.gz")
            orphan.upload_part(1, b"y" * 1000)
            report = clean_server(store, "srv", grace_seconds=0)
            assert report.aborted_uploads == ["v/srv/base/20200101T000000/data_0001.tar.gz"]
            assert list(store.list_uploads("v/srv/")) == []

        # the backup deleted the way barman-cloud-backup-delete does: its manifest is orphaned
        for key in [*keys, layout.info_key(prefix)]:
            store.delete(key)
        report = clean_server(store, "srv")
        assert report.removed_manifests == [BACKUP_ID] and not report.errors
        assert list(store.list("v/")) == []
    finally:
        store.close()
