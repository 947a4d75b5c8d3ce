"""Shared fixtures: one S3 server and one PostgreSQL 15 per session, fresh buckets per test.

Why session scope: starting SeaweedFS takes ~3 s and a seeded cluster ~1 s; tests isolate
themselves by bucket (a fresh one per test) rather than by server. What a fixture starts it
stops; tests.rig.tools registers an atexit safety net for interrupted runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import pytest

from tests.rig.azurite import AzuriteServer, start_azurite
from tests.rig.barman import restore, run_barman
from tests.rig.gcs import GcsEmulator, start_gcs_emulator
from tests.rig.moto_ec2 import MotoEc2, start_moto_ec2
from tests.rig.pgcluster import PgCluster, WalArchive, init_cluster, start_restored_cluster
from tests.rig.s3server import S3Server, start_s3_server
from tests.rig.tools import make_workdir, remove_workdir


def _sigterm_as_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Turn SIGTERM (a cancelled CI job) into KeyboardInterrupt, so fixtures stop the servers.

    Python's default SIGTERM action exits without running atexit hooks or fixture teardown.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A SeaweedFS S3 server on loopback with one access key (wrong keys are rejected)."""
    server = start_s3_server(make_workdir("s3"), remove_workdir_on_stop=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoEc2]:
    """moto's server (EC2, KMS and S3 APIs) on loopback: what cannot run here for real."""
    workdir = make_workdir("moto")
    server = start_moto_ec2(workdir / "moto.log")
    try:
        yield server
    finally:
        server.stop()
        remove_workdir(workdir)


@pytest.fixture(scope="session")
def wal_archive(s3: S3Server) -> WalArchive:
    """Barman WAL archive of the session cluster ``pg``: bucket ``wal``, prefix ``archive``."""
    s3.create_bucket("wal")
    return WalArchive(s3, "s3://wal/archive", "pg")


@pytest.fixture(scope="session")
def pg(wal_archive: WalArchive) -> Iterator[PgCluster]:
    """PostgreSQL 15 with tablespace ``tbs1``, database ``app`` and WAL archived by Barman."""
    cluster = init_cluster(
        make_workdir("pg15"), 15, tablespace=True, wal_archive=wal_archive,
        remove_workdir_on_stop=True,
    )
    try:
        yield cluster
    finally:
        cluster.stop()


PgClusterFactory = Callable[[int], PgCluster]


@pytest.fixture(scope="session")
def pg_cluster_factory(s3: S3Server) -> Iterator[PgClusterFactory]:
    """``factory(major)``: a session-cached cluster of that major (14, 15, 17, ...).

    Each has a tablespace and its own WAL archive, ``s3://wal/archive-pg<major>`` (server
    ``pg``), reachable as ``cluster.wal_archive``. It is distinct from the ``pg`` fixture.
    """
    clusters: dict[int, PgCluster] = {}

    def factory(major: int) -> PgCluster:
        if major not in clusters:
            s3.create_bucket("wal")
            archive = WalArchive(s3, f"s3://wal/archive-pg{major}", "pg")
            clusters[major] = init_cluster(
                make_workdir(f"pg{major}"), major, tablespace=True, wal_archive=archive,
                remove_workdir_on_stop=True,
            )
        return clusters[major]

    try:
        yield factory
    finally:
        for cluster in clusters.values():
            cluster.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A fresh, uniquely named, empty bucket for this test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(name)
    return name


class RestoreAndCheck(Protocol):
    """Signature of the ``restore_and_check`` fixture's callable."""

    def __call__(
        self,
        destination_url: str,
        server_name: str,
        backup_id: str,
        source: PgCluster,
        wal_archive: WalArchive | None = None,
    ) -> dict[str, str]: ...


def _restore_and_compare(
    source: PgCluster, wal_archive: WalArchive | None,
    restore_into: Callable[[Path, dict[str, Path]], object], workdirs: list[Path],
) -> dict[str, str]:
    """Fingerprint the source, switch WAL and wait until it is archived (so the archive holds
    everything the fingerprint saw), restore with ``restore_into(datadir, tablespaces)`` into a
    fresh dir with every tablespace remapped, start PostgreSQL there replaying WAL from the
    archive, and assert the tablespace locations and the fingerprints. Returns the fingerprint.
    """
    archive = wal_archive or source.wal_archive
    assert archive is not None, "the source cluster has no WAL archive to restore from"
    expected = source.fingerprint()
    source.switch_wal_and_wait_archived()
    workdir = make_workdir(f"restore{source.major}")
    workdirs.append(workdir)
    datadir = workdir / "pgdata"
    names = [str(r[0]) for r in source.execute(
        "SELECT spcname FROM pg_tablespace WHERE pg_tablespace_location(oid) <> ''"
        " ORDER BY 1"
    )]
    tablespaces = {name: workdir / f"tbs-{name}" for name in names}
    restore_into(datadir, tablespaces)
    restored = start_restored_cluster(
        datadir, source.major, wal_archive=archive,
        tablespace_dirs=list(tablespaces.values()), password=source.password,
    )
    try:
        locations = dict(restored.execute(
            "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace"
            " WHERE pg_tablespace_location(oid) <> ''"
        ))
        assert locations == {n: str(p) for n, p in tablespaces.items()}
        actual = restored.fingerprint()
    finally:
        restored.stop()
    assert actual == expected
    return actual


@pytest.fixture
def restore_and_check(s3: S3Server) -> Iterator[RestoreAndCheck]:
    """Callable proving a backup is good: Barman restores it and the data equals the source.

    Steps: fingerprint the source, switch WAL and wait until it is archived (so the archive holds
    everything the fingerprint saw; the fingerprint comes first so that anything it could miss
    is older than the switch), ``barman-cloud-restore`` into a fresh dir with every tablespace
    of the source remapped to a fresh dir, start PostgreSQL there with Barman's WAL restore,
    assert the fingerprints are equal, stop the restored cluster. Returns the fingerprint.
    ``wal_archive`` defaults to the source's own archive.
    """
    workdirs: list[Path] = []

    def check(
        destination_url: str,
        server_name: str,
        backup_id: str,
        source: PgCluster,
        wal_archive: WalArchive | None = None,
    ) -> dict[str, str]:
        def restore_into(datadir: Path, tablespaces: dict[str, Path]) -> None:
            restore(s3, destination_url, server_name, backup_id, datadir, tablespaces)

        return _restore_and_compare(source, wal_archive, restore_into, workdirs)

    try:
        yield check
    finally:
        for workdir in workdirs:
            remove_workdir(workdir)


@pytest.fixture
def pgcloud_restore_and_check(s3: S3Server) -> Iterator[RestoreAndCheck]:
    """``restore_and_check`` with this project's ``pgcloud-restore`` (-J 2) in place of
    barman-cloud-restore: same fingerprints, same tablespace remapping, same WAL replay."""
    from tests.runner_cli import run_restore

    workdirs: list[Path] = []

    def check(
        destination_url: str,
        server_name: str,
        backup_id: str,
        source: PgCluster,
        wal_archive: WalArchive | None = None,
    ) -> dict[str, str]:
        def restore_into(datadir: Path, tablespaces: dict[str, Path]) -> None:
            args = [f"--tablespace={name}:{path}" for name, path in tablespaces.items()]
            result = run_restore("-J", "2", *args, destination_url, server_name, backup_id,
                                 str(datadir), s3=s3)
            assert result.returncode == 0, result.stderr

        return _restore_and_compare(source, wal_archive, restore_into, workdirs)

    try:
        yield check
    finally:
        for workdir in workdirs:
            remove_workdir(workdir)


# ==================================================================================================
# Azure Blob Storage (Azurite) and Google Cloud Storage (gcp-storage-emulator)
#
# One emulator of each per session, a fresh container/bucket per test. Barman reads and restores
# what the runner writes there; WAL still comes from the session's S3 archive (``wal_archive``),
# since restore_and_check takes the WAL archive apart from the backup location.
# ==================================================================================================

@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    """Azurite's blob service on loopback, with a random account and key."""
    server = start_azurite(make_workdir("azurite"), remove_workdir_on_stop=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """gcp-storage-emulator on loopback, in memory."""
    server = start_gcs_emulator(make_workdir("gcs"), remove_workdir_on_stop=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def azure_container(azurite: AzuriteServer) -> str:
    """A fresh, uniquely named, empty Azurite container for this test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    azurite.create_container(name)
    return name


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator) -> str:
    """A fresh, uniquely named, empty emulator bucket for this test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    gcs_emulator.create_bucket(name)
    return name


CloudStore = AzuriteServer | GcsEmulator


def barman_cloud(
    store: CloudStore, command: str, *args: str, s3: S3Server
) -> subprocess.CompletedProcess[str]:
    """Run a Barman cloud command against an emulator: ``--cloud-provider`` and its env.

    ``run_barman`` also passes ``--endpoint-url`` and the S3 keys; Barman ignores both for
    these providers.
    """
    return run_barman(command, "--cloud-provider", store.provider, *args, s3=s3, env=store.env())


def cloud_backup_list(
    store: CloudStore, url: str, server: str, s3: S3Server
) -> list[dict[str, Any]]:
    """``barman-cloud-backup-list --format json`` on an emulator."""
    result = barman_cloud(store, "barman-cloud-backup-list", "--format", "json", url, server, s3=s3)
    backups: list[dict[str, Any]] = json.loads(result.stdout)["backups_list"]
    return backups


class CloudRestoreAndCheck(Protocol):
    """Signature of the ``cloud_restore_and_check`` fixture's callable."""

    def __call__(
        self,
        store: CloudStore,
        destination_url: str,
        server_name: str,
        backup_id: str,
        source: PgCluster,
        wal_archive: WalArchive | None = None,
        restorer: str = "barman",
    ) -> dict[str, str]: ...


@pytest.fixture
def cloud_restore_and_check(s3: S3Server) -> Iterator[CloudRestoreAndCheck]:
    """``restore_and_check`` for a backup stored on Azurite or the GCS emulator.

    The same steps: fingerprint the source, switch WAL and wait for the (S3) archive,
    ``barman-cloud-restore --cloud-provider ...`` (or, with ``restorer="pgcloud"``, this
    project's ``pgcloud-restore``) with the emulator's environment into a fresh dir with
    tablespaces remapped, start PostgreSQL there replaying WAL from the S3 archive, compare
    fingerprints.
    """
    workdirs: list[Path] = []

    def check(
        store: CloudStore,
        destination_url: str,
        server_name: str,
        backup_id: str,
        source: PgCluster,
        wal_archive: WalArchive | None = None,
        restorer: str = "barman",
    ) -> dict[str, str]:
        def restore_into(datadir: Path, tablespaces: dict[str, Path]) -> None:
            args: list[str] = []
            for name, location in tablespaces.items():
                args += ["--tablespace", f"{name}:{location}"]
            if restorer == "barman":
                barman_cloud(store, "barman-cloud-restore", *args, destination_url,
                             server_name, backup_id, str(datadir), s3=s3)
                return
            from tests.runner_cli import RESTORE, runner_env

            done = subprocess.run(
                [*RESTORE, "--cloud-provider", store.provider, "-J", "2", *args,
                 destination_url, server_name, backup_id, str(datadir)],
                env=runner_env(extra=store.env()), capture_output=True, text=True,
                timeout=600, check=False)
            assert done.returncode == 0, done.stderr

        return _restore_and_compare(source, wal_archive, restore_into, workdirs)

    try:
        yield check
    finally:
        for workdir in workdirs:
            remove_workdir(workdir)
