"""The PostgreSQL side of a backup: metadata, and starting and stopping a non-exclusive backup.

A non-exclusive backup must be stopped by the session that started it, so one `PostgresSession`
lives from start to stop (in the runner's process, or in the keeper between Airflow tasks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

from .errors import BackupFailed, PgCloudError, first_line

APPLICATION_NAME = "pgcloud_backup"
MIN_VERSION = 90600


def build_conninfo(
    host: str | None = None, port: str | int | None = None, user: str | None = None,
    dbname: str | None = None,
) -> str:
    """libpq conninfo from -h/-p/-U/-d, as Barman builds it.

    `-d` holding `=` is a full conninfo string and is used as given (other options are added
    only where it lacks them); unset options are left to libpq, so PG* variables and
    ~/.pgpass apply. The password never appears here.
    """
    if dbname and "=" in dbname:
        params = psycopg2.extensions.parse_dsn(dbname)
    else:
        params = {"dbname": dbname or "postgres"}
    for key, value in (("host", host), ("port", port), ("user", user)):
        if value is not None and key not in params:
            params[key] = str(value)
    return psycopg2.extensions.make_dsn(**params)


@dataclass(frozen=True)
class Tablespace:
    name: str
    oid: int
    location: str


@dataclass(frozen=True)
class ClusterInfo:
    """What Barman records about the cluster in backup.info."""

    pgdata: str
    version: int
    xlog_segment_size: int
    config_file: str
    hba_file: str
    ident_file: str
    included_files: list[str] | None
    tablespaces: list[Tablespace]
    data_checksums: str
    summarize_wal: str | None
    cluster_size: int
    systemid: str
    in_recovery: bool

    @property
    def major(self) -> str:
        """Major version as PostgreSQL names tablespace directories: `15`, `9.6`."""
        if self.version >= 100000:
            return str(self.version // 10000)
        return f"{self.version // 10000}.{self.version // 100 % 100}"


@dataclass(frozen=True)
class StartPoint:
    lsn: str
    timeline: int
    time: dt.datetime


@dataclass(frozen=True)
class StopPoint:
    lsn: str
    timeline: int
    time: dt.datetime
    backup_label: str




Query = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
"""Runs one SQL statement with `%s` parameters and returns its rows."""


def read_cluster_info(query: Query, version: int) -> ClusterInfo:
    """What Barman records about the cluster, through any connection that runs SQL (a normal
    session, or a replication connection to a database)."""

    def value(sql: str, params: tuple[Any, ...] = ()) -> Any:
        return query(sql, params)[0][0]

    def setting(name: str) -> str:
        return str(value("SELECT setting FROM pg_settings WHERE name = %s", (name,)))

    included = [
        row[0] for row in query(
            "SELECT DISTINCT sourcefile FROM pg_file_settings "
            "WHERE sourcefile IS NOT NULL AND sourcefile NOT IN "
            "(SELECT setting FROM pg_settings WHERE name = 'config_file')", ()
        )
    ]
    tablespaces = [
        Tablespace(name, int(oid), location) for name, oid, location in query(
            "SELECT spcname, oid, pg_tablespace_location(oid) FROM pg_tablespace "
            "WHERE pg_tablespace_location(oid) != '' ORDER BY oid", ()
        )
    ]
    return ClusterInfo(
        pgdata=setting("data_directory"),
        version=version,
        xlog_segment_size=int(setting("wal_segment_size")) * (1 if version >= 110000 else 8192),
        config_file=setting("config_file"),
        hba_file=setting("hba_file"),
        ident_file=setting("ident_file"),
        included_files=included or None,
        tablespaces=tablespaces,
        data_checksums=setting("data_checksums"),
        summarize_wal=setting("summarize_wal") if version >= 170000 else None,
        cluster_size=int(value("SELECT sum(pg_tablespace_size(oid)) FROM pg_tablespace")),
        systemid=str(value("SELECT system_identifier::text FROM pg_control_system()")),
        in_recovery=bool(value("SELECT pg_is_in_recovery()")),
    )


class PostgresSession:
    """One autocommit connection that starts, keeps and stops a backup."""

    def __init__(self, conninfo: str, password: str | None = None) -> None:
        extra: dict[str, Any] = {"password": password} if password else {}
        try:
            self._conn = psycopg2.connect(conninfo, application_name=APPLICATION_NAME, **extra)
        except psycopg2.Error as exc:
            raise BackupFailed(f"Cannot connect to postgres: {first_line(exc)}") from None
        self._conn.autocommit = True
        self.version: int = self._conn.server_version
        if self.version < MIN_VERSION:
            self.close()
            raise PgCloudError(
                f"unsupported PostgreSQL version {self.version}. Expecting 90600 or above."
            )

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            # a restarted server or a killed session, at any step: the backup failed (exit 1)
            if not self._conn.closed:
                raise BackupFailed(f"PostgreSQL error: {first_line(exc)}") from None
            raise BackupFailed(
                f"Connection to the Postgres server was lost during the backup: {first_line(exc)}"
            ) from None

    def _value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._query(sql, params)[0][0]

    def cluster_info(self) -> ClusterInfo:
        return read_cluster_info(self._query, self.version)

    def start_backup(self, label: str, fast: bool) -> StartPoint:
        """pg_backup_start (15+) or non-exclusive pg_start_backup (older)."""
        if self.version >= 140000:
            self._query("SET idle_session_timeout TO 0")
        self._query("SET statement_timeout TO 0")
        function = (
            "pg_backup_start(%s, %s)" if self.version >= 150000
            else "pg_start_backup(%s, %s, false)"
        )
        lsn, timeline, time = self._query(
            f"SELECT lsn::text, (SELECT timeline_id FROM pg_control_checkpoint()), now() "
            f"FROM {function} AS lsn",
            (label, fast),
        )[0]
        return StartPoint(lsn, int(timeline), time)

    def stop_backup(self) -> StopPoint:
        """pg_backup_stop (15+) or pg_stop_backup(false); waits until the end WAL is archived."""
        if self.version >= 140000:
            self._query("RESET idle_session_timeout")
        function = (
            "pg_backup_stop(true)" if self.version >= 150000 else "pg_stop_backup(false, true)"
        )
        lsn, timeline, label, time = self._query(
            "SELECT r.lsn::text, (SELECT CASE WHEN pg_is_in_recovery() "
            "THEN min_recovery_end_timeline ELSE timeline_id END "
            "FROM pg_control_checkpoint(), pg_control_recovery()), r.labelfile, now() "
            f"FROM {function} AS r",
        )[0]
        return StopPoint(lsn, int(timeline), time, label)

    def restore_point(self, name: str) -> None:
        """A named restore point right after the backup, as Barman creates (primary only)."""
        if not self._value("SELECT pg_is_in_recovery()"):
            self._query("SELECT pg_create_restore_point(%s)", (name,))

    def ping(self) -> None:
        """Fail fast if the server or this session went away mid-backup."""
        try:
            self._query("SELECT 1")
        except psycopg2.Error as exc:
            raise BackupFailed(
                f"Connection to the Postgres server was lost during the backup: {first_line(exc)}"
            ) from None

    def close(self) -> None:
        """Closing the session aborts a backup that was not stopped."""
        if not self._conn.closed:
            self._conn.close()
