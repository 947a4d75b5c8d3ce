"""Immutable backups (`--lock-days`, `--lock-mode`): every object of a backup is written under
the store's retention lock, and the deletes leave a locked backup whole until its lock ends.

Where each store's lock is real here:
* S3: SeaweedFS (the session's store) implements Object Lock, on single PUTs and on multipart
  uploads alike, and refuses to delete a locked version: the end-to-end backup runs there.
  moto's S3 implements it too, with AWS's rule that a locked PutObject must carry a checksum
  algorithm or Content-MD5 (it ignores the lock of a multipart upload, so it is not used for
  the whole backup): the store and retention tests run on it.
* Azure: Azurite 3.37 accepts blob immutability headers and ignores them (Set Blob Immutability
  Policy answers "not implemented"), and reports no container immutability support. The writes
  are checked on the wire (the headers of the requests Azurite receives, through the fault
  proxy), the read of a lock at the SDK boundary (BlobClient.get_blob_properties answers with a
  policy).
* GCS: gcp-storage-emulator drops an object's `retention` and reports no bucket object
  retention. The writes are checked at the SDK boundary (the object resource the client sends,
  spied on while the emulator stores the object), the read of a lock by Bucket.get_blob
  answering with a retention.
The refusal of a bucket or container without the feature is each emulator's real answer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
import pytest

from airflow_provider_pgcloud.runner import backup_info as bi
from airflow_provider_pgcloud.runner import layout
from airflow_provider_pgcloud.runner.cleanup import clean_server
from airflow_provider_pgcloud.runner.cli import backup as backup_cli
from airflow_provider_pgcloud.runner.cli import backup_delete
from airflow_provider_pgcloud.runner.errors import BackupFailed
from airflow_provider_pgcloud.runner.retention import apply_retention, delete_backup
from airflow_provider_pgcloud.runner.storage import ObjectStore, StoreConfig, open_store
from airflow_provider_pgcloud.runner.storage.locks import ObjectLock, lock_reason
from airflow_provider_pgcloud.runner.upload import PartWriter
from tests.rig.azurite import AzuriteServer
from tests.rig.faultproxy import FaultProxy, Request
from tests.rig.gcs import GcsEmulator
from tests.rig.moto_ec2 import MotoEc2
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.runner_cli import run_runner
from tests.test_retention import Spec, wal

SERVER = "pg"
D = dt.timedelta(days=1)
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto",
            "AWS_DEFAULT_REGION": "us-east-1"}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Commands run in process set logger levels as a command does: put them back."""
    names = ["", "pgcloud", "botocore", "boto3", "urllib3", "azure", "google"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


# ------------------------------------------------------------------- S3: a whole backup, locked

@pytest.fixture
def lock_bucket(s3: S3Server) -> str:
    """A fresh SeaweedFS bucket created with Object Lock (so versioned)."""
    name = f"l-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_a_backup_with_lock_days_has_every_object_locked(
        s3: S3Server, pg: PgCluster, lock_bucket: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Archives (multipart and single PUT), manifests and the DONE backup.info are locked for
    a day, GOVERNANCE by default; the STARTED backup.info before it was not; a locked version
    cannot be deleted; pgcloud-backup-delete -b refuses the backup."""
    before = now()
    result = run_runner("--lock-days", "1", "-J", "2", "--immediate-checkpoint",
                        f"s3://{lock_bucket}/l", SERVER, s3=s3, pg=pg)
    after = now()
    assert result.returncode == 0, result.stderr
    client = s3.client()
    keys = sorted(s3.list_objects(lock_bucket, "l/"))
    [info_key] = [key for key in keys if key.endswith("/backup.info")]
    backup_id = info_key.split("/")[-2]
    archives = [key for key in keys if layout.is_archive_name(key.rsplit("/", 1)[1])]
    manifests = [key for key in keys if key.startswith(f"l/{SERVER}/pgcloud/{backup_id}/")]
    assert len(archives) >= 3 and len(manifests) == len(archives) + 1
    assert set(keys) == {info_key, *archives, *manifests}
    multipart = set()
    for key in keys:
        head = client.head_object(Bucket=lock_bucket, Key=key)
        assert head.get("ObjectLockMode") == "GOVERNANCE", key
        until = head["ObjectLockRetainUntilDate"]
        assert before + D - dt.timedelta(seconds=1) <= until <= after + D + \
            dt.timedelta(seconds=1), (key, until)
        if "-" in head["ETag"]:
            multipart.add(key)
    assert multipart and set(archives) - multipart, "both kinds of archive upload"

    versions = client.list_object_versions(Bucket=lock_bucket, Prefix=info_key)["Versions"]
    assert len(versions) == 2  # STARTED, then DONE
    [started] = [v for v in versions if not v["IsLatest"]]
    assert "ObjectLockMode" not in client.head_object(Bucket=lock_bucket, Key=info_key,
                                                      VersionId=started["VersionId"])
    version = client.head_object(Bucket=lock_bucket, Key=archives[0])["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client.delete_object(Bucket=lock_bucket, Key=archives[0], VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    assert backup_delete.main(["--endpoint-url", s3.endpoint_url, "-b", backup_id,
                               f"s3://{lock_bucket}/l", SERVER]) == 1
    assert f"backup {backup_id} not deleted: locked until " in caplog.text
    assert sorted(s3.list_objects(lock_bucket, "l/")) == keys


def test_a_bucket_without_object_lock_fails_before_the_backup_starts(
        s3: S3Server, pg: PgCluster, bucket: str) -> None:
    for test_mode in ((), ("-t",)):
        result = run_runner(*test_mode, "--lock-days", "7", "--immediate-checkpoint",
                            f"s3://{bucket}/n", SERVER, s3=s3, pg=pg)
        assert result.returncode == 1, result.stderr
        assert (f"bucket {bucket} does not have S3 Object Lock enabled: --lock-days needs"
                in result.stderr)
        assert "Traceback" not in result.stderr
    assert s3.list_objects(bucket) == {}
    assert not pg.in_backup()


@pytest.mark.parametrize(("args", "message"), [
    (["--lock-mode", "compliance"], "--lock-mode is the mode of --lock-days"),
    (["--lock-days", "0"], "'0' is not a positive integer"),
    (["--lock-days", "1", "--lock-mode", "forever"], "invalid choice: 'forever'"),
    (["--lock-days", "1", "--snapshot-instance", "i1", "--snapshot-disk", "d1",
      "--aws-region", "us-east-1"], "snapshot backup's data is in disk snapshots"),
])
def test_lock_options_are_checked_before_anything_runs(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """Exit 3, before a store or a database is reached (neither exists here)."""
    try:
        code = backup_cli.main([*args, "s3://nowhere/p", SERVER])
    except SystemExit as exited:  # argparse
        code = int(exited.code or 0)
    assert code == 3
    assert message in capsys.readouterr().err + caplog.text


# ------------------------------------------------------------------ S3 on moto: store and deletes

@pytest.fixture
def moto_env(moto: MotoEc2, monkeypatch: pytest.MonkeyPatch) -> MotoEc2:
    for name in ("AWS_PROFILE", "AWS_REQUEST_CHECKSUM_CALCULATION",
                 "AWS_RESPONSE_CHECKSUM_VALIDATION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in MOTO_ENV.items():
        monkeypatch.setenv(name, value)
    return moto


def moto_client(moto: MotoEc2) -> Any:
    return boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="moto", aws_secret_access_key="moto")


def moto_bucket(moto: MotoEc2, *, lock: bool = True) -> str:
    name = f"m-{uuid.uuid4().hex[:16]}"
    moto_client(moto).create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return name


def test_s3_locked_writes_and_refused_deletes(moto_env: MotoEc2) -> None:
    """A locked PutObject passes AWS's checksum rule; the version cannot be deleted, in
    compliance mode not even with the governance bypass; unlocked writes stay unlocked."""
    client = moto_client(moto_env)
    name = moto_bucket(moto_env)
    base = StoreConfig(f"s3://{name}/p", endpoint_url=moto_env.endpoint_url, lock_days=2)
    governance = open_store(base)
    compliance = open_store(dataclasses.replace(base, lock_mode="compliance"))
    try:
        governance.check()
        before = now()
        governance.put("p/a.tar", b"archive", lock=True)
        compliance.put("p/c.tar", b"archive", lock=True)
        governance.put("p/backup.info", b"status=STARTED\n")  # not final: not locked
        locks = governance.object_locks(["p/a.tar", "p/c.tar", "p/backup.info", "p/none"])
        assert set(locks) == {"p/a.tar", "p/c.tar"}
        assert (locks["p/a.tar"].mode, locks["p/c.tar"].mode) == ("GOVERNANCE", "COMPLIANCE")
        for lock in locks.values():
            assert lock.until is not None
            assert before + 2 * D - dt.timedelta(seconds=1) <= lock.until <= now() + 2 * D + \
                dt.timedelta(seconds=1)
        for key, bypass in (("p/a.tar", False), ("p/c.tar", False), ("p/c.tar", True)):
            version = client.head_object(Bucket=name, Key=key)["VersionId"]
            bypassing = {"BypassGovernanceRetention": True} if bypass else {}
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                client.delete_object(Bucket=name, Key=key, VersionId=version, **bypassing)
            assert refused.value.response["Error"]["Code"] == "AccessDenied", (key, bypass)
        # governance yields to a user allowed to bypass it; an unlocked object to anyone
        for key, bypassing in (("p/a.tar", {"BypassGovernanceRetention": True}),
                               ("p/backup.info", {})):
            version = client.head_object(Bucket=name, Key=key)["VersionId"]
            client.delete_object(Bucket=name, Key=key, VersionId=version, **bypassing)
    finally:
        governance.close()
        compliance.close()

    plain = open_store(StoreConfig(f"s3://{moto_bucket(moto_env, lock=False)}/p",
                                   endpoint_url=moto_env.endpoint_url, lock_days=2))
    try:
        with pytest.raises(BackupFailed, match="does not have S3 Object Lock enabled"):
            plain.check()
    finally:
        plain.close()


# ------------------------------------------------ retention and cleanup, on every kind of store

U1 = Spec("u1", 3 * D, 1, 0, bi.DONE)  # obsolete, unlocked: deleted
L2 = Spec("l2", 2 * D, 1, 1, bi.DONE)  # obsolete, locked: kept
N3 = Spec("n3", 1 * D, 1, 2, bi.DONE)  # the one REDUNDANCY 1 keeps
WAL = [wal(1, log, seg) for log in range(3) for seg in range(3, 7)]


def backup_objects(base_path: str, spec: Spec) -> list[str]:
    prefix = layout.backup_prefix(base_path, SERVER, spec.backup_id)
    return [f"{prefix}/data.tar", f"{prefix}/16384.tar",
            layout.archive_manifest_key(prefix, "data.tar"), layout.index_key(prefix),
            layout.info_key(prefix)]


def write_catalog(config: StoreConfig) -> None:
    """Three DONE backups and WAL; L2's objects written by a store with --lock-days 1."""
    plain, locking = open_store(config), open_store(dataclasses.replace(config, lock_days=1))
    try:
        for spec in (U1, L2, N3):
            store = locking if spec is L2 else plain
            for key in backup_objects(store.base_path, spec):
                data = bi.encode(spec.info()) if key.endswith("backup.info") else b"{}"
                store.put(key, data, lock=True)
        for name in WAL:
            plain.put(layout.wal_key(plain.base_path, SERVER, name), b"wal")
    finally:
        plain.close()
        locking.close()


@dataclass
class LockingStore:
    """A store whose lock on L2's objects is read back as the store holds it."""

    config: StoreConfig
    kind: str
    client: Any = None  # moto's S3 client
    bucket: str = ""

    def open(self) -> ObjectStore:
        return open_store(self.config)

    def keys(self) -> set[str]:
        store = self.open()
        try:
            return {key for key, _size in store.list(store.base_path + "/")}
        finally:
            store.close()


def _azure_reads_policies(monkeypatch: pytest.MonkeyPatch, locked: str,
                          until: dt.datetime) -> None:
    """Azurite keeps no immutability policy: Get Blob Properties answers with the one the
    write asked for, for the blobs of backup `locked`."""
    from azure.storage.blob import BlobClient, ImmutabilityPolicy

    real = BlobClient.get_blob_properties

    def with_policy(self: BlobClient, **kwargs: Any) -> Any:
        properties = real(self, **kwargs)
        if locked in self.blob_name:
            properties.immutability_policy = ImmutabilityPolicy(expiry_time=until,
                                                                policy_mode="Unlocked")
        return properties

    monkeypatch.setattr(BlobClient, "get_blob_properties", with_policy)


def _gcs_reads_retention(monkeypatch: pytest.MonkeyPatch, locked: str,
                         until: dt.datetime) -> None:
    """The GCS emulator keeps no object retention: Bucket.get_blob answers with the one the
    write asked for, for the objects of backup `locked`."""
    from google.cloud.storage import Bucket

    real = Bucket.get_blob

    def with_retention(self: Bucket, blob_name: str, *args: Any, **kwargs: Any) -> Any:
        blob = real(self, blob_name, *args, **kwargs)
        if blob is not None and locked in blob_name:
            blob._properties["retention"] = {
                "mode": "Unlocked", "retainUntilTime": until.isoformat().replace("+00:00", "Z")}
        return blob

    monkeypatch.setattr(Bucket, "get_blob", with_retention)


@pytest.fixture(params=["s3", "azure", "gcs"])
def locking_store(request: pytest.FixtureRequest,
                  monkeypatch: pytest.MonkeyPatch) -> LockingStore:
    until = (now() + D).replace(microsecond=0)
    if request.param == "s3":
        moto = request.getfixturevalue("moto_env")
        name = moto_bucket(moto)
        return LockingStore(StoreConfig(f"s3://{name}/p", endpoint_url=moto.endpoint_url),
                            "s3", moto_client(moto), name)
    if request.param == "azure":
        azurite: AzuriteServer = request.getfixturevalue("azurite")
        container = request.getfixturevalue("azure_container")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
        _azure_reads_policies(monkeypatch, L2.backup_id, until)
        return LockingStore(StoreConfig(azurite.url(container, "p"), "azure-blob-storage"),
                            "azure")
    emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
    gcs_bucket = request.getfixturevalue("gcs_bucket")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint)
    _gcs_reads_retention(monkeypatch, L2.backup_id, until)
    return LockingStore(StoreConfig(emulator.url(gcs_bucket, "p"), "google-cloud-storage"),
                        "gcs")


def test_retention_keeps_a_locked_backup_whole_and_deletes_an_unlocked_one(
        locking_store: LockingStore, caplog: pytest.LogCaptureFixture) -> None:
    """REDUNDANCY 1: U1 goes with the WAL before L2; L2 is obsolete but locked, so all of it
    stays, with the reason logged, and so does the WAL it needs; -b L2 refuses."""
    write_catalog(locking_store.config)
    before = locking_store.keys()
    store = locking_store.open()
    try:
        with caplog.at_level(logging.INFO, "pgcloud"):
            report = apply_retention(store, SERVER, "REDUNDANCY 1")
        assert report.errors == []
        assert report.deleted_backups == [U1.backup_id]
        assert report.kept[L2.backup_id].startswith("locked until ")
        assert f"backup {L2.backup_id} kept: locked until " in caplog.text
        with pytest.raises(BackupFailed, match=f"backup {L2.backup_id} not deleted: locked "
                           "until "):
            delete_backup(store, SERVER, L2.backup_id)
    finally:
        store.close()
    gone = before - locking_store.keys()
    wal_gone = {layout.stored_wal_name(key) for key in gone} - {None}
    assert gone - {layout.wal_key("p", SERVER, name) for name in WAL} == \
        set(backup_objects("p", U1))
    assert wal_gone == {name for name in WAL if name < L2.begin_wal}
    assert set(backup_objects("p", L2)) <= locking_store.keys()
    if locking_store.kind == "s3":  # not even a delete marker was added to the locked backup
        versions = locking_store.client.list_object_versions(
            Bucket=locking_store.bucket,
            Prefix=layout.backup_prefix("p", SERVER, L2.backup_id))
        assert "DeleteMarkers" not in versions and len(versions["Versions"]) == 3


def test_the_command_logs_why_a_locked_backup_stays(moto_env: MotoEc2,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    name = moto_bucket(moto_env)
    write_catalog(StoreConfig(f"s3://{name}/p", endpoint_url=moto_env.endpoint_url))
    with caplog.at_level(logging.INFO, "pgcloud"):
        code = backup_delete.main(["--endpoint-url", moto_env.endpoint_url, "--dry-run", "-r",
                                   "REDUNDANCY 1", f"s3://{name}/p", SERVER])
    assert code == 0
    assert f"backup {L2.backup_id} kept: locked until " in caplog.text
    assert f"would delete backup {U1.backup_id}" in caplog.text
    assert f"would delete backup {L2.backup_id}" not in caplog.text


def test_cleanup_leaves_a_dead_locked_backup_until_its_lock_ends(moto_env: MotoEc2) -> None:
    """Two runs died (STARTED for days): the one whose archive is locked stays whole."""
    name = moto_bucket(moto_env)
    config = StoreConfig(f"s3://{name}/p", endpoint_url=moto_env.endpoint_url)
    dead = [Spec("d1", 3 * D, 1, 0, bi.STARTED), Spec("d2", 2 * D, 1, 1, bi.STARTED)]
    plain, locking = open_store(config), open_store(dataclasses.replace(config, lock_days=1))
    try:
        for spec, store in zip(dead, (plain, locking), strict=True):
            prefix = layout.backup_prefix("p", SERVER, spec.backup_id)
            store.put(layout.info_key(prefix), bi.encode(spec.info()))
            store.put(f"{prefix}/data.tar", b"archive", lock=True)
        report = clean_server(plain, SERVER)
    finally:
        plain.close()
        locking.close()
    assert report.errors == []
    assert report.removed_backups == [dead[0].backup_id]
    assert report.kept_locked == [dead[1].backup_id]
    left = set(LockingStore(config, "s3").keys())
    assert left == {f"{layout.backup_prefix('p', SERVER, dead[1].backup_id)}/{name}"
                    for name in ("backup.info", "data.tar")}


def test_lock_reasons() -> None:
    at = now()
    later, latest = at + D, at + 2 * D
    assert lock_reason({}, at) is None
    assert lock_reason({"a": ObjectLock(at - D, "GOVERNANCE")}, at) is None  # expired
    reason = lock_reason({"a": ObjectLock(later, "GOVERNANCE"),
                          "b": ObjectLock(latest, "COMPLIANCE"),
                          "c": ObjectLock(at - D, "GOVERNANCE")}, at)
    shown = latest.isoformat(timespec="seconds").replace("+00:00", "Z")
    assert reason == f"locked until {shown} (2 objects, COMPLIANCE/GOVERNANCE)"
    held = lock_reason({"a": ObjectLock(later, "Unlocked"), "b": ObjectLock(None, hold=True)},
                       at)
    assert held is not None and held.startswith("locked by a hold without an end date on 1")


# ------------------------------------------------ Azure and GCS: what the writes ask the store

def _immutability_headers(request: Request) -> tuple[str, str] | None:
    until = request.headers.get("x-ms-immutability-policy-until-date")
    return (until, request.headers["x-ms-immutability-policy-mode"]) if until else None


@pytest.mark.parametrize(("mode", "expected"), [(None, "Unlocked"), ("compliance", "Locked")])
def test_azure_writes_carry_a_blob_immutability_policy(
        azurite: AzuriteServer, azure_container: str, monkeypatch: pytest.MonkeyPatch,
        mode: str | None, expected: str) -> None:
    """Put Blob and Put Block List of a final object carry the policy; a block, and a blob
    written to be replaced, do not. Azurite stores the blobs (and ignores the policy)."""
    seen: list[tuple[str, str, tuple[str, str] | None]] = []

    def record(request: Request) -> None:
        if request.method == "PUT":
            comp = request.query.get("comp", [""])[0]
            seen.append((request.path.rsplit("/", 1)[1], comp, _immutability_headers(request)))

    # the account key, not a connection string, whose endpoint would bypass the proxy
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_KEY", azurite.key)
    with FaultProxy(azurite.endpoint, plan=record) as proxy:
        store = open_store(StoreConfig(f"{proxy.endpoint_url}/{azurite.account}/"
                                       f"{azure_container}/p", "azure-blob-storage",
                                       lock_days=3, lock_mode=mode))
        before = now()
        _write_a_backup(store)
    policies = {(name, comp): headers for name, comp, headers in seen}
    assert policies[("backup.info", "")] is None
    assert policies[("data.tar", "block")] is None
    for write in (("data_0001.tar", ""), ("data.tar", "blocklist")):
        headers = policies[write]
        assert headers is not None, write
        until = dt.datetime.strptime(headers[0], "%a, %d %b %Y %H:%M:%S GMT").replace(
            tzinfo=dt.UTC)
        assert before + 3 * D - dt.timedelta(seconds=1) <= until <= now() + 3 * D + \
            dt.timedelta(seconds=1)
        assert headers[1] == expected
    assert set(azurite.list_objects(azure_container)) == {
        "p/backup.info", "p/data_0001.tar", "p/data.tar"}


def _write_a_backup(store: ObjectStore) -> None:
    """What a locked backup writes, one of each, then closes the store: an unlocked
    backup.info, a small locked archive (one request) and a locked one in parts."""
    try:
        store.put("p/backup.info", b"status=STARTED\n")
        store.put("p/data_0001.tar", b"small archive", lock=True)
        writer = PartWriter(store, "p/data.tar", store.min_part_size, lock=True)
        writer.write(b"x" * (store.min_part_size * 2 + 10))
        writer.close()
    finally:
        store.close()


def _spy_on_gcs_uploads(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """The object resource each upload sends (what `retention` the object is created with),
    recorded on the way to the emulator."""
    from google.cloud.storage import Blob

    sent: dict[str, dict[str, Any]] = {}

    def spy(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Blob, *args: Any, **kwargs: Any) -> Any:
            sent[self.name] = self._get_writable_metadata()
            return method(self, *args, **kwargs)
        return call

    for name in ("upload_from_string", "create_resumable_upload_session"):
        monkeypatch.setattr(Blob, name, spy(getattr(Blob, name)))
    return sent


@pytest.mark.parametrize(("mode", "expected"), [(None, "Unlocked"), ("compliance", "Locked")])
def test_gcs_writes_carry_object_retention(
        gcs_emulator: GcsEmulator, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch,
        mode: str | None, expected: str) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    sent = _spy_on_gcs_uploads(monkeypatch)
    store = open_store(StoreConfig(gcs_emulator.url(gcs_bucket, "p"), "google-cloud-storage",
                                   lock_days=3, lock_mode=mode))
    before = now()
    _write_a_backup(store)
    assert "retention" not in sent["p/backup.info"]
    for key in ("p/data_0001.tar", "p/data.tar"):
        retention = sent[key]["retention"]
        assert retention["mode"] == expected
        until = dt.datetime.fromisoformat(retention["retainUntilTime"].replace("Z", "+00:00"))
        assert before + 3 * D - dt.timedelta(seconds=1) <= until <= now() + 3 * D + \
            dt.timedelta(seconds=1)
    assert set(gcs_emulator.list_objects(gcs_bucket)) == {
        "p/backup.info", "p/data_0001.tar", "p/data.tar"}


def test_emulators_without_the_feature_are_refused(
        azurite: AzuriteServer, azure_container: str, gcs_emulator: GcsEmulator,
        gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Their real answers: Azurite reports no version-level immutability support, the GCS
    emulator no object retention; without --lock-days both pass the same check."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    for config, message in (
            (StoreConfig(azurite.url(azure_container, "p"), "azure-blob-storage"),
             f"container {azure_container} does not have version-level immutability "
             "support"),
            (StoreConfig(gcs_emulator.url(gcs_bucket, "p"), "google-cloud-storage"),
             f"bucket {gcs_bucket} does not have object retention enabled")):
        for lock_days, refused in ((None, False), (1, True)):
            store = open_store(dataclasses.replace(config, lock_days=lock_days))
            try:
                if refused:
                    with pytest.raises(BackupFailed, match=message):
                        store.check()
                else:
                    store.check()
            finally:
                store.close()
