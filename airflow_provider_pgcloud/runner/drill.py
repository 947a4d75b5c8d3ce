"""A restore drill: restore a backup, start it, check it, throw it away, and report the figures.

A backup counts only once it has been restored. The drill does what an operator would do on the
day it is needed, on a scratch directory of the drill host:

1. restore the backup (`latest` DONE by default) with restore.py, every tablespace beside it;
2. fetch the WAL from the backup's begin to its end segment into `pg_wal` (wal_restore.py, the
   same store and credentials), so PostgreSQL reaches consistency by itself: it starts with no
   `restore_command`, replays from the checkpoint `backup_label` names and comes up. No
   credential ever reaches the server's settings or environment;
3. start PostgreSQL of the backup's major from `pg_bin_dir` on a Unix socket in the scratch
   directory only (no TCP), with settings that let any drill host start it (small
   shared_buffers, no preloaded libraries, archiving off, trust on that private socket);
4. run `pg_amcheck` on every database (heap relations and B-tree indexes; the amcheck extension
   is installed where missing), then the user's SQL checks, each of which must succeed and,
   when it returns a row, return true in its first column;
5. stop the server and remove the scratch directory, whatever happened.

Any failing step raises DrillFailed with the step and its reason. PostgreSQL refuses to run as
root: a drill started by root runs the server and pg_amcheck as `run_as` (e.g. `postgres`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import backup_info as bi
from . import layout
from .catalog import resolve_backup_id
from .errors import BackupFailed, InputError, first_line
from .restore import restore_backup
from .storage import ObjectStore, StoreConfig, open_store
from .wal_restore import restore_wal

log = logging.getLogger("pgcloud")

SERVER_SETTINGS = {
    "listen_addresses": "''",
    "shared_buffers": "'128MB'",
    "shared_preload_libraries": "''",
    "archive_mode": "off",
    "archive_command": "''",
    "restore_command": "''",
    "max_connections": "20",
    "logging_collector": "off",
    "hot_standby": "on",
}
"""What the drill host needs to start any cluster, appended to postgresql.auto.conf (it wins
over the backup's own settings): its own socket, memory a small host has, nothing preloaded that
the host may not have installed, and nothing pushed into the source's WAL archive."""


class DrillFailed(BackupFailed):
    """A step of the drill failed (exit 1); `step` names it."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"restore drill failed at {step}: {reason}")
        self.step, self.reason = step, reason


@dataclass(frozen=True)
class DrillOptions:
    server_name: str
    backup_id: str = "latest"
    pg_bin_dir: str = "/usr/lib/postgresql/{major}/bin"
    """PostgreSQL's server binaries (postgres, pg_ctl, pg_amcheck); `{major}` becomes the
    backup's major version."""
    scratch_dir: str | None = None  # where the scratch directory is made (default: TMPDIR)
    run_as: str | None = None  # the OS user that runs PostgreSQL when the drill runs as root
    database_user: str = "postgres"  # the cluster's superuser to check with
    sql_checks: Sequence[str] = field(default_factory=tuple)
    sql_database: str = "postgres"
    jobs: int = 2
    start_timeout: int = 3600  # seconds for WAL replay to reach consistency


@dataclass(frozen=True)
class DrillReport:
    """The figures of one drill (the Airflow task returns them and puts them on its Asset)."""

    backup_id: str
    server_name: str
    major: int
    bytes: int  # restored file bytes
    restore_seconds: float  # archives and WAL fetched and written
    replay_seconds: float  # server start until it accepted connections
    recovery_seconds: float  # the two: what a real recovery of this backup takes here
    checks: list[str]  # what passed, in order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"restore drill of backup {self.backup_id} ({self.server_name}, PostgreSQL "
                f"{self.major}) passed: restored {self.bytes / 1e6:.0f} MB in "
                f"{self.restore_seconds:.1f}s, replayed in {self.replay_seconds:.1f}s, "
                f"{self.recovery_seconds:.1f}s to recover; checks: {', '.join(self.checks)}")


def wal_segments(begin: str, end: str, segment_size: int) -> list[str]:
    """The WAL segment names from `begin` to `end` inclusive, on `begin`'s timeline."""
    per_id = 0x1_0000_0000 // segment_size
    timeline = begin[:8]

    def number(name: str) -> int:
        return int(name[8:16], 16) * per_id + int(name[16:24], 16)

    first, last = number(begin), number(end)
    if last < first:
        raise DrillFailed("fetching WAL", f"end segment {end} precedes begin segment {begin}")
    return [f"{timeline}{n // per_id:08X}{n % per_id:08X}" for n in range(first, last + 1)]


class _Runner:
    """Runs the drill's programs, as `run_as` when the drill runs as root."""

    def __init__(self, run_as: str | None) -> None:
        if os.geteuid() == 0:
            if not run_as:
                raise InputError("PostgreSQL refuses to run as root: give the drill an OS user "
                                 "to run it as (run_as, e.g. postgres)")
            account = pwd.getpwnam(run_as)
            self.uid, self.gid, self.prefix = account.pw_uid, account.pw_gid, [
                "runuser", "-u", run_as, "--"]
        else:
            self.uid, self.gid, self.prefix = os.geteuid(), os.getegid(), []

    def give(self, path: Path) -> None:
        """Hand a path and everything under it to the server's user."""
        if os.geteuid() != 0:
            return
        for root, dirs, files in os.walk(path):
            os.lchown(root, self.uid, self.gid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), self.uid, self.gid)

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def _binaries(template: str, major: int) -> Path:
    directory = Path(template.format(major=major))
    missing = [name for name in ("postgres", "pg_ctl", "pg_amcheck")
               if not os.access(directory / name, os.X_OK)]
    if missing:
        raise DrillFailed("finding PostgreSQL", f"{', '.join(missing)} of PostgreSQL {major} "
                          f"not found in {directory} (set pg_bin_dir to the server binaries "
                          f"of the backup's major version)")
    return directory


def run_drill(config: StoreConfig, options: DrillOptions,
              store: ObjectStore | None = None) -> DrillReport:
    """Run one restore drill (see the module doc); DrillFailed names the step that failed."""
    runner = _Runner(options.run_as)
    shared = store
    store = store or open_store(config)
    scratch = Path(tempfile.mkdtemp(prefix="pgcloud-drill-", dir=options.scratch_dir))
    os.chmod(scratch, 0o755)  # the server's user must reach its directories
    pg_ctl: list[str] | None = None
    try:
        backup_id = resolve_backup_id(store, options.server_name, options.backup_id)
        prefix = layout.backup_prefix(store.base_path, options.server_name, backup_id)
        info = bi.decode(store.get(layout.info_key(prefix)))
        major = int(info.get("version") or 0) // 10000
        bindir = _binaries(options.pg_bin_dir, major)
        datadir = scratch / "pgdata"
        tablespaces = {name: str(scratch / f"tablespace-{name}")
                       for name, _, _ in info.get("tablespaces") or ()}
        log.info("drill: restoring backup %s of %s into %s", backup_id, options.server_name,
                 scratch)
        started = time.monotonic()
        try:
            report = restore_backup(config, options.server_name, backup_id, str(datadir),
                                    tablespaces=tablespaces, jobs=options.jobs, store=shared)
        except BackupFailed as exc:
            raise DrillFailed("restoring the backup", str(exc)) from None
        _fetch_wal(store, options.server_name, info, datadir)
        restore_seconds = time.monotonic() - started
        _configure(datadir, scratch)
        runner.give(scratch)
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(datadir)]
        started = time.monotonic()
        done = runner.run([*pg_ctl, "-l", str(scratch / "postgres.log"), "-w", "-t",
                           str(options.start_timeout), "start"], options.start_timeout + 60)
        if done.returncode != 0:
            raise DrillFailed("starting PostgreSQL", _log_tail(scratch / "postgres.log")
                              or first_line(done.stderr or done.stdout))
        replay_seconds = time.monotonic() - started
        checks = _check(runner, bindir, scratch, options)
        result = DrillReport(backup_id, options.server_name, major, report.bytes,
                             round(restore_seconds, 3), round(replay_seconds, 3),
                             round(restore_seconds + replay_seconds, 3), checks)
        log.info("%s", result.summary())
        return result
    finally:
        if pg_ctl is not None:
            with contextlib.suppress(Exception):
                runner.run([*pg_ctl, "-m", "immediate", "-w", "stop"], 120)
        shutil.rmtree(scratch, ignore_errors=True)
        if shared is None:
            store.close()


def _fetch_wal(store: ObjectStore, server_name: str, info: dict[str, Any],
               datadir: Path) -> None:
    begin, end = info.get("begin_wal"), info.get("end_wal")
    if not begin or not end:
        raise DrillFailed("fetching WAL", "backup.info has no begin_wal/end_wal")
    segments = wal_segments(begin, end, int(info.get("xlog_segment_size") or 16 << 20))
    log.info("drill: fetching %d WAL segments (%s to %s)", len(segments), begin, end)
    for name in segments:
        try:
            restore_wal(store, server_name, name, str(datadir / "pg_wal" / name),
                        partial=False)
        except BackupFailed as exc:
            raise DrillFailed("fetching WAL", str(exc)) from None
        except Exception as exc:
            raise DrillFailed("fetching WAL", f"{name}: {first_line(exc)}") from None


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _configure(datadir: Path, scratch: Path) -> None:
    """The drill's settings (SERVER_SETTINGS, a free port, a socket and trust-only pg_hba in
    the scratch directory), appended to postgresql.auto.conf, which wins over the backup's."""
    settings = {**SERVER_SETTINGS, "port": str(_free_port()),
                "unix_socket_directories": f"'{scratch}'",
                "hba_file": f"'{scratch / 'pg_hba.conf'}'",
                "ident_file": f"'{scratch / 'pg_ident.conf'}'"}
    (scratch / "pg_hba.conf").write_text("local all all trust\n")
    (scratch / "pg_ident.conf").write_text("")
    (datadir / "postgresql.conf").touch()  # a cluster configured outside PGDATA has none
    with (datadir / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n# restore drill (pgcloud)\n"
                   + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    (datadir / "postmaster.pid").unlink(missing_ok=True)


def _port(datadir: Path) -> str:
    """The port the server took (its socket file's name; it listens on no TCP address)."""
    lines = (datadir / "postmaster.pid").read_text().splitlines()
    return lines[3].strip()


def _check(runner: _Runner, bindir: Path, scratch: Path, options: DrillOptions) -> list[str]:
    port = _port(scratch / "pgdata")
    amcheck = runner.run([str(bindir / "pg_amcheck"), "--host", str(scratch), "--port", port,
                          "--username", options.database_user, "--all", "--install-missing",
                          "--no-password"], options.start_timeout)
    if amcheck.returncode != 0:
        found = (amcheck.stdout + amcheck.stderr).strip().splitlines()
        raise DrillFailed("pg_amcheck", "; ".join(found[:5]) or f"exit {amcheck.returncode}")
    checks = ["pg_amcheck"]
    if options.sql_checks:
        import psycopg

        with psycopg.connect(host=str(scratch), port=port, user=options.database_user,
                             dbname=options.sql_database, autocommit=True) as conn:
            for sql in options.sql_checks:
                try:
                    row = conn.execute(sql).fetchone()  # type: ignore[call-overload]
                except psycopg.Error as exc:
                    raise DrillFailed(f"SQL check {sql!r}", first_line(exc)) from None
                if row is not None and not row[0]:
                    raise DrillFailed(f"SQL check {sql!r}", f"returned {row[0]!r}")
                checks.append(f"sql: {sql}")
    return checks


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
