"""Throwaway PostgreSQL clusters: a source to back up, and restored copies to compare with it.

Why: the product's correctness criterion is "Barman restores it and PostgreSQL replays WAL into a
cluster whose data equals the source". This module makes both ends of that comparison real:
:func:`init_cluster` builds a small but representative source (a tablespace outside PGDATA, an
index, a few thousand rows, WAL archived by Barman), :func:`start_restored_cluster` starts what
Barman restored with Barman's ``barman-cloud-wal-restore``, and :meth:`PgCluster.fingerprint`
compares them.

PostgreSQL refuses to run as root, so when the tests run as root every server command goes
through ``runuser -u postgres --`` (which keeps the environment). S3 credentials for
``archive_command``/``restore_command`` travel in the server process environment only, never in
command lines or configuration files.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from tests.rig.s3server import S3Server
from tests.rig.tools import (
    as_postgres,
    barman_bin,
    chown_to_postgres,
    free_port,
    make_workdir,
    pg_bindir,
    postgres_home,
    register_cleanup,
    remove_workdir,
    tail,
    unregister_cleanup,
)

_REPO = Path(__file__).resolve().parents[2]  # the checkout whose pgcloud-wal-restore runs
START_TIMEOUT_S = 60
RECOVERY_TIMEOUT_S = 180.0
ARCHIVE_TIMEOUT_S = 60.0

# Environment variables that must not leak from the test process into the server (and from there
# into archive_command): libpq defaults, other credentials, the test venv's Python settings.
_SCRUBBED_ENV_PREFIXES = ("PG", "AWS_", "AZURE_", "GOOGLE_", "PYTHON", "VIRTUAL_ENV", "UV_")


def _conf_quote(value: str) -> str:
    """Quote a string for postgresql.conf."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for PostgreSQL server processes (and the archive/restore commands they run)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)
    }
    env["HOME"] = postgres_home()  # boto3 looks for ~/.aws; /root is unreadable for postgres
    env["LC_ALL"] = "C.UTF-8"
    env["TZ"] = "UTC"
    env.update(extra or {})
    return env


@dataclass
class WalArchive:
    """A Barman cloud WAL archive (``barman-cloud-wal-archive`` layout) on the test S3 server."""

    s3: S3Server
    destination_url: str
    server_name: str
    archive_options: tuple[str, ...] = ()  # e.g. ("--gzip",) for barman-cloud-wal-archive
    restorer: str = "barman"  # "pgcloud": restore_command runs pgcloud-wal-restore instead

    def _common(self) -> str:
        return (
            f"--endpoint-url {shlex.quote(self.s3.endpoint_url)}"
            f" {shlex.quote(self.destination_url)} {shlex.quote(self.server_name)}"
        )

    def archive_command(self) -> str:
        """``archive_command`` pushing each WAL file with Barman (credentials from the env)."""
        options = "".join(f" {shlex.quote(option)}" for option in self.archive_options)
        return (
            f"{shlex.quote(str(barman_bin('barman-cloud-wal-archive')))}{options}"
            f" {self._common()} %p"
        )

    def restore_command(self) -> str:
        """``restore_command`` fetching WAL with Barman, or with pgcloud-wal-restore (from this
        checkout) when ``restorer`` is "pgcloud" (exit 1 when missing ends recovery)."""
        if self.restorer == "pgcloud":
            tool = (f"env PYTHONPATH={shlex.quote(str(_REPO))} {shlex.quote(sys.executable)}"
                    " -m airflow_provider_pgcloud.runner.wal_restore")
        else:
            tool = shlex.quote(str(barman_bin("barman-cloud-wal-restore")))
        return f"{tool} {self._common()} %f %p"

    def env(self) -> dict[str, str]:
        """What the server process needs in its environment for the two commands."""
        return self.s3.env()


# ------------------------------------------------------------------ in_backup() log parsing
_LOG_ENTRY = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(?P<pid>\d+)\] (?P<level>[A-Z]+\d?):  "
    r"(?P<msg>.*)$"
)
_STATEMENT = re.compile(r"^(?:statement|execute [^:]*|bind [^:]*):\s(?P<sql>.*)$", re.DOTALL)
_SQL_NOISE = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
_BACKUP_START = re.compile(r"\b(?:pg_backup_start|pg_start_backup)\s*\(", re.IGNORECASE)
_BACKUP_STOP = re.compile(r"\b(?:pg_backup_stop|pg_stop_backup)\s*\(", re.IGNORECASE)


def _log_entries(text: str) -> Iterable[tuple[int, str, str]]:
    """(pid, level, message) for each server log entry, continuation lines folded in."""
    pid, level, msg = -1, "", ""
    for line in text.splitlines():
        m = _LOG_ENTRY.match(line)
        if m:
            if pid >= 0:
                yield pid, level, msg
            pid, level, msg = int(m["pid"]), m["level"], m["msg"]
        elif pid >= 0:
            msg += "\n" + line
    if pid >= 0:
        yield pid, level, msg


def backup_pids_from_log(text: str) -> set[int]:
    """PIDs whose last backup-related statement started a backup that has not ended.

    A pid enters the set on a statement calling pg_backup_start/pg_start_backup (string literals
    and comments stripped first: Barman's privilege check quotes 'pg_backup_start(text,bool)'),
    and leaves it on pg_backup_stop/pg_stop_backup, on an ERROR right after the start statement
    (the start failed), on ``disconnection`` (the server aborts a session's backup when it ends)
    or on a new ``connection received`` for a reused pid.
    """
    running: set[int] = set()
    last_was_start: dict[int, bool] = {}
    for pid, level, msg in _log_entries(text):
        if level == "LOG":
            stmt = _STATEMENT.match(msg)
            if stmt:
                sql = _SQL_NOISE.sub("''", stmt["sql"])
                if _BACKUP_STOP.search(sql):
                    running.discard(pid)
                    last_was_start[pid] = False
                elif _BACKUP_START.search(sql):
                    running.add(pid)
                    last_was_start[pid] = True
                else:
                    last_was_start[pid] = False
            elif msg.startswith(("disconnection:", "connection received:")):
                running.discard(pid)
                last_was_start.pop(pid, None)
        elif level in ("ERROR", "FATAL") and last_was_start.get(pid):
            running.discard(pid)
            last_was_start[pid] = False
    return running


# ------------------------------------------------------------------ the cluster
@dataclass
class PgCluster:
    """A running PostgreSQL cluster owned by the rig (stop it with :meth:`stop`)."""

    major: int
    bindir: Path
    pgdata: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    socket_dir: Path | None = None
    tablespace_dir: Path | None = None
    log_file: Path | None = None
    workdir: Path | None = None
    wal_archive: WalArchive | None = None
    server_env: dict[str, str] = field(default_factory=dict, repr=False)
    remove_workdir_on_stop: bool = False
    running: bool = False

    # -- connection -------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        """libpq key=value conninfo over TCP, deliberately without the password."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def env(self) -> dict[str, str]:
        """libpq environment for clients (the runner, barman-cloud-backup, psql)."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": "postgres",
        }
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        """An autocommit psycopg2 connection (TCP + SCRAM when the password is known).

        A restored cluster started without the source's password is reached through its unix
        socket, where initdb set ``trust``.
        """
        if self.password is None and self.socket_dir is not None:
            conn = psycopg2.connect(
                host=str(self.socket_dir), port=self.port, user=self.user, dbname=dbname,
                connect_timeout=10,
            )
        else:
            conn = psycopg2.connect(
                self.dsn(dbname), password=self.password, connect_timeout=10
            )
        conn.autocommit = True
        return conn

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement in a fresh autocommit session; rows, or [] if none are returned."""
        with contextlib.closing(self.connect(dbname)) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            if cur.description is None:
                return []
            return list(cur.fetchall())

    # -- backup observation -----------------------------------------------------------------
    def backup_pids(self) -> set[int]:
        """Backend PIDs currently holding a non-exclusive base backup (see :meth:`in_backup`)."""
        if self.log_file is None:
            raise RuntimeError("in_backup() needs the server log (log_file is None)")
        from_log = backup_pids_from_log(self.log_file.read_text(errors="replace"))
        if not from_log:
            return set()
        alive = {
            int(r[0]) for r in self.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
        }
        return from_log & alive

    def in_backup(self) -> bool:
        """True while a base backup is in progress on this cluster.

        Why it reads the server log: PostgreSQL exposes no SQL view of a running non-exclusive
        backup. Its state is per session (``sessionBackupState``) plus an internal shared counter
        (``XLogCtl->Insert.runningBackups``); ``pg_is_in_backup()`` (removed in 15) only ever
        reported exclusive backups; ``pg_stat_progress_basebackup`` covers only walsender
        (pg_basebackup) backups; and ``pg_stat_activity.query`` shows only a session's *last*
        statement, which a keepalive ``SELECT 1`` (Barman sends one every 60 s) overwrites.
        So the rig runs every cluster with ``log_statement = 'all'``, ``log_connections`` and
        ``log_disconnections`` and a ``%m [%p]`` prefix, and replays the log: a backend that
        called ``pg_backup_start``/``pg_start_backup`` and has not called the stop function,
        errored on the start, or disconnected is in a backup, provided it is still listed in
        ``pg_stat_activity`` (a backend that crashed aborted its backup). The same logic works on
        every major. Before 15 an *exclusive* backup (not tied to a session) is also reported,
        through ``pg_is_in_backup()``.
        """
        if self.major < 15 and self.execute("SELECT pg_is_in_backup()")[0][0]:
            return True
        return bool(self.backup_pids())

    # -- WAL --------------------------------------------------------------------------------
    def switch_wal_and_wait_archived(self, timeout: float = ARCHIVE_TIMEOUT_S) -> str:
        """Switch to a new WAL segment and wait until the old one is archived; its name.

        If nothing was written since the last switch, pg_switch_wal() is a no-op and the
        returned name is that of the previous (already archived) segment.
        """
        walfile = str(self.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        deadline = time.monotonic() + timeout
        row: tuple[Any, ...] = ()
        while time.monotonic() < deadline:
            row = self.execute(
                "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver"
            )[0]
            last = row[0] or ""
            if len(last) >= 24 and re.fullmatch(r"[0-9A-F]{24}", last[:24]) and (
                last[:24] >= walfile
            ):
                return walfile
            time.sleep(0.1)
        raise RuntimeError(
            f"WAL {walfile} not archived within {timeout:.0f}s on port {self.port}"
            f" (pg_stat_archiver last_archived/failed_count/last_failed = {row});"
            f" server log tail:\n{self.log_tail()}"
        )

    # -- comparison ---------------------------------------------------------------------------
    def databases(self) -> list[str]:
        """Non-template databases that accept connections."""
        return [
            str(r[0]) for r in self.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn"
                " ORDER BY datname"
            )
        ]

    def fingerprint(self) -> dict[str, str]:
        """``db.schema.table`` -> ``"<rows>:<md5 of the rows in text order>"`` for user tables.

        Covers every permanent user table (and materialized view) in every non-template
        database. Unlogged tables are skipped: recovery resets them to empty by design.
        """
        out: dict[str, str] = {}
        for db in self.databases():
            with contextlib.closing(self.connect(db)) as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'"
                    " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                    " AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
                    " ORDER BY 1"
                )
                tables = [str(r[0]) for r in cur.fetchall()]
                for table in tables:
                    cur.execute(
                        "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n'"
                        f" ORDER BY t::text COLLATE \"C\")), '') FROM {table} t"
                    )
                    count, digest = cur.fetchone() or (0, "")
                    out[f"{db}.{table}"] = f"{count}:{digest}"
        return out

    # -- lifecycle ----------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        """The end of the server log, for error messages."""
        return tail(self.log_file, lines) if self.log_file else "<no log file>"

    def stop(self) -> None:
        """Stop the server (fast shutdown; immediate if that hangs) and remove owned dirs."""
        unregister_cleanup(self.stop)
        if self.running:
            ctl = [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.pgdata), "-s", "-w"]
            result = subprocess.run(
                as_postgres([*ctl, "-m", "fast", "-t", "30"]), env=self.server_env,
                cwd="/", capture_output=True, text=True, check=False,
            )
            if result.returncode != 0 and (self.pgdata / "postmaster.pid").exists():
                subprocess.run(
                    as_postgres([*ctl, "-m", "immediate", "-t", "30"]), env=self.server_env,
                    cwd="/", capture_output=True, text=True, check=False,
                )
            self.running = False
        if self.remove_workdir_on_stop and self.workdir is not None:
            remove_workdir(self.workdir)


def _start(cluster: PgCluster, attempts: int = 3) -> None:
    """``pg_ctl start`` as postgres; the port is passed with ``-o -p`` so a clash can retry."""
    assert cluster.log_file is not None
    for attempt in range(attempts):
        result = subprocess.run(
            as_postgres([
                cluster.bindir / "pg_ctl", "start", "-D", cluster.pgdata, "-l", cluster.log_file,
                "-w", "-t", str(START_TIMEOUT_S), "-s", "-o", f"-p {cluster.port}",
            ]),
            env=cluster.server_env, cwd="/", capture_output=True, text=True, check=False,
            start_new_session=True,  # the server must not get the terminal's Ctrl-C
        )
        if result.returncode == 0:
            cluster.running = True
            register_cleanup(cluster.stop)
            return
        log = cluster.log_tail()
        if attempt + 1 < attempts and "could not bind" in log:
            cluster.port = free_port()
            continue
        raise RuntimeError(
            f"PostgreSQL {cluster.major} failed to start in {cluster.pgdata}"
            f" (pg_ctl exit {result.returncode}): {result.stderr.strip()}\n"
            f"server log tail:\n{log}"
        )


def _rig_settings(socket_dir: Path, extra: Mapping[str, str]) -> str:
    settings = {
        "listen_addresses": _conf_quote("127.0.0.1"),
        "unix_socket_directories": _conf_quote(str(socket_dir)),
        "wal_level": "replica",
        "max_wal_senders": "5",
        "fsync": "off",  # throwaway clusters; backups are still consistent (FPW stays on)
        "log_statement": _conf_quote("all"),  # in_backup() replays the log
        "log_connections": "on",
        "log_disconnections": "on",
        "log_line_prefix": _conf_quote("%m [%p] "),
        "log_timezone": _conf_quote("UTC"),
        "logging_collector": "off",
        **extra,
    }
    body = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return f"\n# ---- added by tests/rig/pgcluster.py ----\n{body}"


def _append_conf(pgdata: Path, text: str) -> None:
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write(text)


_SEED_SQL = (
    "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, qty int NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00')",
    "INSERT INTO items (name, qty) SELECT 'item-' || g, g % 97 FROM generate_series(1, 5000) g",
    "CREATE INDEX items_name_idx ON items (name)",
)
_SEED_TBS_SQL = (
    "CREATE TABLE events (id bigint PRIMARY KEY USING INDEX TABLESPACE tbs1, kind text NOT NULL,"
    " payload text) TABLESPACE tbs1",
    "INSERT INTO events SELECT g, 'kind-' || (g % 7), md5(g::text) FROM generate_series(1, 3000) g",
    "CREATE INDEX events_kind_idx ON events (kind) TABLESPACE tbs1",
)


def init_cluster(
    workdir: Path,
    major: int = 15,
    *,
    tablespace: bool = True,
    wal_archive: WalArchive | None = None,
    remove_workdir_on_stop: bool = False,
) -> PgCluster:
    """initdb + start a cluster in ``workdir`` (which postgres must be able to traverse).

    The result listens on 127.0.0.1 only (free port), has its unix socket in its own directory,
    ``wal_level=replica``, WAL archived by Barman when ``wal_archive`` is given, a tablespace
    ``tbs1`` outside PGDATA when ``tablespace`` is true, and a database ``app`` with a table in
    the default tablespace and (with ``tablespace``) one in ``tbs1``, each with an index.
    """
    try:
        return _init_cluster(workdir, major, tablespace, wal_archive, remove_workdir_on_stop)
    except BaseException:
        # A failure (or Ctrl-C) between initdb and a running server would otherwise leave the
        # half-made cluster behind; once started, stop() (called on failure below) cleans up.
        if remove_workdir_on_stop:
            remove_workdir(workdir)
        raise


def _init_cluster(
    workdir: Path,
    major: int,
    tablespace: bool,
    wal_archive: WalArchive | None,
    remove_workdir_on_stop: bool,
) -> PgCluster:
    bindir = pg_bindir(major)
    workdir.chmod(0o755)
    pgdata, socket_dir = workdir / "pgdata", workdir / "socket"
    tbs_dir = workdir / "tbs1" if tablespace else None
    log_file = workdir / "postgres.log"
    for d in (pgdata, socket_dir, *([tbs_dir] if tbs_dir else [])):
        d.mkdir(parents=True, exist_ok=True)
        chown_to_postgres(d, mode=0o700 if d != socket_dir else 0o755)
    log_file.touch()
    chown_to_postgres(log_file, mode=0o644)

    password = secrets.token_urlsafe(18)
    pwfile = workdir / "pwfile"
    pwfile.write_text(password + "\n")
    chown_to_postgres(pwfile, mode=0o600)
    env = _server_env(wal_archive.env() if wal_archive else None)
    try:
        result = subprocess.run(
            as_postgres([
                bindir / "initdb", "-D", pgdata, "-U", "postgres", f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                "--locale=C", "--no-sync",
            ]),
            env=env, cwd="/", capture_output=True, text=True, check=False,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"initdb ({major}) failed:\n{result.stdout}\n{result.stderr}")

    extra: dict[str, str] = {"archive_mode": "off"}
    if wal_archive is not None:
        extra = {
            "archive_mode": "on",
            "archive_command": _conf_quote(wal_archive.archive_command()),
        }
    _append_conf(pgdata, _rig_settings(socket_dir, extra))

    cluster = PgCluster(
        major=major, bindir=bindir, pgdata=pgdata, port=free_port(), password=password,
        socket_dir=socket_dir, tablespace_dir=tbs_dir, log_file=log_file, workdir=workdir,
        wal_archive=wal_archive, server_env=env, remove_workdir_on_stop=remove_workdir_on_stop,
    )
    _start(cluster)
    try:
        if tbs_dir is not None:
            cluster.execute(f"CREATE TABLESPACE tbs1 LOCATION {_conf_quote(str(tbs_dir))}")
        cluster.execute("CREATE DATABASE app")
        for sql in (*_SEED_SQL, *(_SEED_TBS_SQL if tbs_dir else ())):
            cluster.execute(sql, dbname="app")
        cluster.execute("CHECKPOINT")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_restored_cluster(
    datadir: Path,
    major: int,
    *,
    wal_archive: WalArchive,
    tablespace_dirs: Sequence[Path] = (),
    password: str | None = None,
    workdir: Path | None = None,
) -> PgCluster:
    """Start what barman-cloud-restore wrote to ``datadir`` and wait for recovery to finish.

    Writes ``recovery.signal`` and ``wal_archive``'s ``restore_command`` (Barman's, or
    pgcloud-wal-restore's with ``restorer="pgcloud"``), a new free port, its own socket
    dir, ``archive_mode=off`` (a restored copy must never push into the source's archive), then
    waits until ``pg_is_in_recovery()`` is false, i.e. all archived WAL was replayed and the
    cluster promoted. ``password`` is the source's (same pg_authid); without it the rig talks to
    the restored cluster over its unix socket. Its socket and log live in ``workdir`` (a new one
    by default, removed on stop). ``datadir``'s parents must be traversable by postgres.
    """
    bindir = pg_bindir(major)
    owned = workdir is None
    workdir = workdir if workdir is not None else make_workdir(f"restored{major}")
    for d in (datadir, *tablespace_dirs):
        chown_to_postgres(d, recursive=True, mode=0o700)
    socket_dir = workdir / "socket"
    socket_dir.mkdir(exist_ok=True)
    chown_to_postgres(socket_dir, mode=0o755)
    log_file = workdir / "postgres.log"
    log_file.touch()
    chown_to_postgres(log_file, mode=0o644)

    (datadir / "postmaster.pid").unlink(missing_ok=True)
    signal_file = datadir / "recovery.signal"
    signal_file.touch()
    chown_to_postgres(signal_file, mode=0o600)
    _append_conf(datadir, _rig_settings(socket_dir, {
        "archive_mode": "off",
        "archive_command": _conf_quote(""),
        "restore_command": _conf_quote(wal_archive.restore_command()),
        "recovery_target_timeline": _conf_quote("latest"),
        "hot_standby": "on",
    }))

    cluster = PgCluster(
        major=major, bindir=bindir, pgdata=datadir, port=free_port(), password=password,
        socket_dir=socket_dir, tablespace_dir=tablespace_dirs[0] if tablespace_dirs else None,
        log_file=log_file, workdir=workdir, wal_archive=wal_archive,
        server_env=_server_env(wal_archive.env()), remove_workdir_on_stop=owned,
    )
    _start(cluster)
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    last_error: BaseException | None = None
    try:
        while time.monotonic() < deadline:
            try:
                if not cluster.execute("SELECT pg_is_in_recovery()")[0][0]:
                    return cluster
            except psycopg2.Error as exc:  # "the database system is starting up"
                last_error = exc
            time.sleep(0.2)
        raise RuntimeError(
            f"restored PostgreSQL {major} in {datadir} still in recovery after"
            f" {RECOVERY_TIMEOUT_S:.0f}s (last error: {last_error!r}); server log tail:\n"
            f"{cluster.log_tail()}"
        )
    except BaseException:
        cluster.stop()
        raise
