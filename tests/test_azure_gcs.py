"""Azure Blob Storage and Google Cloud Storage backends, against Azurite and a GCS emulator.

The end-to-end tests run the real command line against the session's PostgreSQL and write to
an emulator; Barman 3.20 (with its azure-storage-blob and google-cloud-storage) lists the
backup and restores it, and PostgreSQL replays WAL from the session's S3 archive into a cluster
whose rows must equal the source's. The store tests drive the backends directly through the
engine's PartWriter: block and chunk mechanics, aborts, option plumbing.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from airflow_provider_pgcloud.runner.errors import InputError
from airflow_provider_pgcloud.runner.storage import StoreConfig, open_store
from airflow_provider_pgcloud.runner.storage import gcs as gcs_module
from airflow_provider_pgcloud.runner.storage.azure import (
    AzureStore,
    block_id,
    parse_azure_url,
)
from airflow_provider_pgcloud.runner.storage.gcs import (
    CHUNK_ALIGNMENT,
    GCSResumableUpload,
    GCSStore,
    parse_gcs_url,
)
from airflow_provider_pgcloud.runner.upload import PartWriter
from tests.conftest import CloudRestoreAndCheck, CloudStore, cloud_backup_list
from tests.rig.azurite import AzuriteServer
from tests.rig.gcs import GcsEmulator
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import free_port
from tests.runner_cli import REPO, run_runner

TAGS = {"env": "ci", "owner": "pgcloud team"}


@dataclass
class Destination:
    """A fresh container (Azure) or bucket (GCS) on one emulator, as the tests see it."""

    store: CloudStore
    bucket: str
    min_chunk: str  # --min-chunk-size that makes several parts per archive object

    @property
    def provider(self) -> str:
        return self.store.provider

    def url(self, path: str = "") -> str:
        return self.store.url(self.bucket, path)

    def objects(self, prefix: str = "") -> dict[str, int]:
        return self.store.list_objects(self.bucket, prefix)

    def labels(self, key: str) -> dict[str, str]:
        """Blob index tags (Azure) or object metadata (GCS): where --tags land."""
        if isinstance(self.store, AzuriteServer):
            return self.store.tags(self.bucket, key)
        return self.store.metadata(self.bucket, key)


@pytest.fixture(params=["azure", "gcs"])
def dest(request: pytest.FixtureRequest) -> Destination:
    if request.param == "azure":
        return Destination(request.getfixturevalue("azurite"),
                           request.getfixturevalue("azure_container"), "64KB")
    # 300 KiB parts are not a multiple of GCS's 256 KiB chunk unit: exercises the carry-over
    return Destination(request.getfixturevalue("gcs_emulator"),
                       request.getfixturevalue("gcs_bucket"), "300KB")


def write_after_backup(pg: PgCluster) -> None:
    """Rows written after the backup reach the restore only through archived WAL."""
    pg.execute("CREATE TABLE IF NOT EXISTS after_cloud_backup (id int, note text)", dbname="app")
    pg.execute("INSERT INTO after_cloud_backup VALUES (%s, %s)", (1, os.urandom(8).hex()),
               dbname="app")


def backup_ids(keys: dict[str, int]) -> list[str]:
    return sorted({key.split("/base/")[1].split("/")[0] for key in keys if "/base/" in key})


# ---------------------------------------------------------------------------- end to end


def test_backup_is_listed_and_restored_by_barman(
    dest: Destination, pg: PgCluster, s3: S3Server, cloud_restore_and_check: CloudRestoreAndCheck
) -> None:
    url = dest.url("backups/nightly")
    name = f"cloud-{dest.provider}"
    result = run_runner(
        "--cloud-provider", dest.provider, "-z", "-S", "4MB", "--min-chunk-size", dest.min_chunk,
        "--immediate-checkpoint", "-n", name, url, "pg",
        "--tags", *(f"{k},{v}" for k, v in TAGS.items()),
        pg=pg, env=dest.store.env(),
    )
    assert result.returncode == 0, result.stderr

    [backup_id] = backup_ids(dest.objects("backups/nightly/"))
    [listed] = cloud_backup_list(dest.store, url, "pg", s3)
    assert (listed["backup_id"], listed["status"], listed["backup_name"]) == (
        backup_id, "DONE", name)

    stored = dest.objects(f"backups/nightly/pg/base/{backup_id}/")
    names = {key.rsplit("/", 1)[1] for key in stored}
    assert {"data.tar.gz", "data_0001.tar.gz", "16384.tar.gz", "backup.info"} <= names
    assert all(n == "backup.info" or n.endswith(".tar.gz") for n in names)
    # tags on every object: single-PUT ones (backup.info) and multipart ones alike
    for key in stored:
        assert dest.labels(key) == TAGS, key
    if isinstance(dest.store, AzuriteServer):
        blocks = {key: dest.store.block_count(dest.bucket, key) for key in stored}
        assert max(blocks.values()) > 1, blocks  # some object was committed from blocks

    write_after_backup(pg)
    cloud_restore_and_check(dest.store, url, "pg", name, pg)


def test_pgcloud_restores_from_the_store_with_ranged_reads(
    dest: Destination, pg: PgCluster, s3: S3Server, cloud_restore_and_check: CloudRestoreAndCheck
) -> None:
    """An uncompressed data archive object is larger than one 8 MiB range: pgcloud-restore
    fetches it as ranged reads from the emulator."""
    url = dest.url("backups/ranged")
    result = run_runner("--cloud-provider", dest.provider, "--immediate-checkpoint", "-n",
                        "ranged", url, "pg", pg=pg, env=dest.store.env())
    assert result.returncode == 0, result.stderr
    [backup_id] = backup_ids(dest.objects("backups/ranged/"))
    stored = dest.objects(f"backups/ranged/pg/base/{backup_id}/")
    assert max(stored.values()) > 8 << 20  # more than one 8 MiB range in one object
    write_after_backup(pg)
    cloud_restore_and_check(dest.store, url, "pg", "ranged", pg, restorer="pgcloud")


def _closed_port_env(dest: Destination) -> dict[str, str]:
    dead = f"http://127.0.0.1:{free_port()}"  # handed out, never bound: connection refused
    if isinstance(dest.store, AzuriteServer):
        return {"AZURE_STORAGE_CONNECTION_STRING": dest.store.connection_string(endpoint=dead)}
    return {"STORAGE_EMULATOR_HOST": dead}


def test_test_option_exit_codes(dest: Destination) -> None:
    def check(url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return run_runner("--cloud-provider", dest.provider, "-t", url, "pg", env=env)

    ok = check(dest.url("some/path"), dest.store.env())
    assert ok.returncode == 0, ok.stderr
    assert dest.objects() == {}  # -t writes nothing

    missing_url = dest.store.url(f"missing-{dest.bucket}", "p")
    missing = check(missing_url, dest.store.env())
    assert missing.returncode == 1, missing.stderr
    assert "does not exist" in missing.stderr

    dead = check(dest.url("p"), _closed_port_env(dest))
    assert dead.returncode == 2, dead.stderr
    assert "Can't connect to cloud provider" in dead.stderr


def test_azure_credentials_from_the_environment(
    azurite: AzuriteServer, azure_container: str
) -> None:
    """Barman's variables: a shared key or a SAS token work with the URL's own endpoint."""
    url = azurite.url(azure_container, "p")
    sas = generate_container_sas(
        azurite.account, azure_container, account_key=azurite.key,
        permission=ContainerSasPermissions(read=True, write=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    provider = ("--cloud-provider", "azure-blob-storage")
    for env in ({"AZURE_STORAGE_KEY": azurite.key}, {"AZURE_STORAGE_SAS_TOKEN": sas}):
        result = run_runner(*provider, "-t", url, "pg", env=env)
        assert result.returncode == 0, (env.keys(), result.stderr)

    wrong_key = base64.b64encode(os.urandom(64)).decode()
    rejected = run_runner(*provider, "-t", url, "pg", env={
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string(key=wrong_key)})
    assert rejected.returncode == 2, rejected.stderr  # Barman: a service error is exit 2
    assert wrong_key not in rejected.stderr

    nothing = run_runner(*provider, "-t", url, "pg")  # emulated storage needs a credential
    assert nothing.returncode == 4, nothing.stderr
    assert "AZURE_STORAGE_CONNECTION_STRING" in nothing.stderr


@pytest.mark.parametrize(("provider", "module", "url"), [
    ("azure-blob-storage", "azure.storage.blob", "https://acct.blob.core.windows.net/c/p"),
    ("google-cloud-storage", "google.cloud.storage", "gs://bucket/p"),
])
def test_missing_sdk_is_a_clear_error(provider: str, module: str, url: str) -> None:
    """Without the extra installed: exit 1 and the module to install, as Barman says it."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from airflow_provider_pgcloud.runner.cli.backup import main\n"
        f"sys.exit(main(['--cloud-provider', {provider!r}, '-t', {url!r}, 'pg']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 1, result.stderr
    package = "azure-storage-blob" if provider.startswith("azure") else "google-cloud-storage"
    assert f"Missing required python module: {package}" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- URL parsing


def test_azure_urls_are_read_as_barman_reads_them() -> None:
    real = parse_azure_url("https://acct.blob.core.windows.net/cont/some/path/")
    assert (real.account_url, real.account_name, real.container, real.path, real.emulated) == (
        "https://acct.blob.core.windows.net", "acct", "cont", "some/path", False)
    assert parse_azure_url("https://acct.blob.core.windows.net/cont").path == ""
    emu = parse_azure_url("http://127.0.0.1:10000/devacct/cont/a/b")
    assert (emu.account_url, emu.account_name, emu.container, emu.path, emu.emulated) == (
        "http://127.0.0.1:10000/devacct", "devacct", "cont", "a/b", True)
    for bad in ("https://acct.blob.core.windows.net", "https://acct.blob.core.windows.net/",
                "http://127.0.0.1:10000/devacct", "s3://bucket/path", "cont/path"):
        with pytest.raises(InputError):
            parse_azure_url(bad)


def test_gcs_urls_are_read_as_barman_reads_them() -> None:
    assert parse_gcs_url("gs://bkt/some/path/") == ("bkt", "some/path")
    assert parse_gcs_url("gs://bkt") == ("bkt", "")
    assert parse_gcs_url("https://console.cloud.google.com/storage/browser/bkt/p") == ("bkt", "p")
    for bad in ("gs:///path", "s3://bkt/p", "https://storage.googleapis.com/bkt/p"):
        with pytest.raises(InputError):
            parse_gcs_url(bad)


def test_block_ids_have_a_fixed_width() -> None:
    assert [block_id(n) for n in (1, 42, 50_000)] == ["00001", "00042", "50000"]


# ---------------------------------------------------------------------------- stores directly


@pytest.fixture
def azure_store(azurite: AzuriteServer, azure_container: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureStore]:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    config = StoreConfig(azurite.url(azure_container, "base"), "azure-blob-storage",
                         tags=(("k", "v"),), encryption_scope="pgcloud-scope")
    store = open_store(config)
    assert isinstance(store, AzureStore)
    yield store
    store.close()


@pytest.fixture
def gcs_store(gcs_emulator: GcsEmulator, gcs_bucket: str,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[GCSStore]:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    config = StoreConfig(gcs_emulator.url(gcs_bucket, "base"), "google-cloud-storage",
                         tags=(("k", "v"),),
                         kms_key_name="projects/p/locations/l/keyRings/r/cryptoKeys/k")
    store = open_store(config)
    assert isinstance(store, GCSStore)
    yield store
    store.close()


def _write_in_odd_pieces(writer: PartWriter, data: bytes) -> None:
    step = 77_777
    for offset in range(0, len(data), step):
        writer.write(data[offset:offset + step])


def test_azure_blocks_are_staged_and_committed_in_order(
    azure_store: AzureStore, azurite: AzuriteServer, azure_container: str
) -> None:
    data = os.urandom(5 * azure_store.min_part_size + 1234)
    writer = PartWriter(azure_store, "base/obj", azure_store.min_part_size)
    _write_in_odd_pieces(writer, data)
    writer.close()
    assert azurite.get_object(azure_container, "base/obj") == data
    assert azurite.block_count(azure_container, "base/obj") == 6
    assert azurite.tags(azure_container, "base/obj") == {"k": "v"}
    assert azure_store.get("base/obj") == data
    assert dict(azure_store.list("base/")) == {"base/obj": len(data)}
    azure_store.check()


def test_azure_abort_leaves_no_blob(azure_store: AzureStore) -> None:
    writer = PartWriter(azure_store, "base/aborted", azure_store.min_part_size)
    _write_in_odd_pieces(writer, os.urandom(3 * azure_store.min_part_size))
    writer.abort()
    assert dict(azure_store.list("base/")) == {}


def test_gcs_parts_of_any_size_stream_through_one_session(
    gcs_store: GCSStore, gcs_emulator: GcsEmulator, gcs_bucket: str
) -> None:
    part = 300 << 10
    assert part % CHUNK_ALIGNMENT  # not a multiple: bytes are carried between chunks
    data = os.urandom(4 * part + 4321)
    writer = PartWriter(gcs_store, "base/obj", part)
    _write_in_odd_pieces(writer, data)
    writer.close()
    assert gcs_emulator.get_object(gcs_bucket, "base/obj") == data
    assert gcs_emulator.metadata(gcs_bucket, "base/obj") == {"k": "v"}
    assert gcs_store.get("base/obj") == data
    assert dict(gcs_store.list("base/")) == {"base/obj": len(data)}
    gcs_store.check()


class _FlakySession:
    """A requests.Session whose `fail_on`-th chunk PUT raises a connection error, either before
    the chunk leaves or after the service got it (a lost answer)."""

    def __init__(self, session: requests.Session, fail_on: int, after_send: bool) -> None:
        self.session, self.fail_on, self.after_send = session, fail_on, after_send
        self.chunks = 0

    def put(self, url: str, **kwargs: Any) -> requests.Response:
        if kwargs.get("data"):
            self.chunks += 1
            if self.chunks == self.fail_on:
                if self.after_send:
                    self.session.put(url, **kwargs)
                raise requests.ConnectionError("injected failure")
        return self.session.put(url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.delete(url, **kwargs)

    def close(self) -> None:
        self.session.close()


@pytest.mark.parametrize("after_send", [False, True], ids=["lost-chunk", "lost-answer"])
def test_gcs_chunk_resumes_from_what_the_session_holds(
    gcs_store: GCSStore, gcs_emulator: GcsEmulator, gcs_bucket: str,
    monkeypatch: pytest.MonkeyPatch, after_send: bool,
) -> None:
    monkeypatch.setattr(gcs_module.time, "sleep", lambda _seconds: None)
    upload = gcs_store.start_multipart("base/flaky")
    flaky = _FlakySession(upload._http, fail_on=2, after_send=after_send)
    monkeypatch.setattr(upload, "_http", flaky)
    parts = [os.urandom(300 << 10) for _ in range(3)] + [os.urandom(1000)]
    for number, part in enumerate(parts, 1):
        upload.upload_part(number, part)
    upload.complete()
    assert gcs_emulator.get_object(gcs_bucket, "base/flaky") == b"".join(parts)
    # chunk 2 is sent again only if it never arrived
    assert flaky.chunks == (5 if not after_send else 4)


def test_gcs_session_carries_kms_key_and_abort_leaves_nothing(gcs_store: GCSStore) -> None:
    upload = gcs_store.start_multipart("base/aborted")
    assert isinstance(upload, GCSResumableUpload)
    assert "kmsKeyName=projects%2Fp%2F" in upload._url
    upload.upload_part(1, os.urandom(CHUNK_ALIGNMENT + 10))
    upload.abort()
    assert dict(gcs_store.list("base/")) == {}
    with pytest.raises(Exception, match="abandoned"):
        upload.upload_part(2, b"x")
