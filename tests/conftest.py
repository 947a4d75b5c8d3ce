"""Shared fixtures: one S3 server and one PostgreSQL 15 per session, fresh buckets per test.

Why session scope: starting SeaweedFS takes ~3 s and a seeded cluster ~1 s; tests isolate
themselves by bucket (a fresh one per test) rather than by server. What a fixture starts it
stops; tests.rig.tools registers an atexit safety net for interrupted runs.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Protocol

import pytest

from tests.rig.barman import restore
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
    workdirs = []

    def check(
        destination_url: str,
        server_name: str,
        backup_id: str,
        source: PgCluster,
        wal_archive: WalArchive | None = None,
    ) -> dict[str, str]:
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
        restore(s3, destination_url, server_name, backup_id, datadir, tablespaces)
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

    try:
        yield check
    finally:
        for workdir in workdirs:
            remove_workdir(workdir)
