"""A real Barman server (3.20.1, ``backup_method = postgres``) backing up a rig cluster.

Why: in hook-script mode the product uploads a backup directory that Barman itself made
(``pg_basebackup`` output plus Barman's ``backup.info``) and is run by Barman with Barman's own
environment. Faking either would test our idea of Barman, not Barman.

The minimal setup that lets ``barman backup`` pass its pre-backup checks without touching the
cluster's own WAL archive (``archive_command`` stays ``barman-cloud-wal-archive`` to S3, which
the restore test needs): WAL reaches Barman by streaming only (``streaming_archiver = on``,
``archiver = off``) through ``barman receive-wal`` (pg_receivewal) on a replication slot
created with ``receive-wal --create-slot``; one WAL switch puts the first segment in Barman's
WAL catalogue (its "WAL archive" check; see ``_prime_wal_catalogue``). ``barman backup --wait``
then waits until the end WAL is received, so the backup is DONE (not WAITING_FOR_WALS) when
Barman runs the post-backup hooks. Barman runs as the current OS user (``barman_user``; root
in CI); the database password reaches Barman, pg_basebackup and pg_receivewal through
``PGPASSFILE`` only.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.rig.pgcluster import PgCluster
from tests.rig.tools import barman_bin, register_cleanup, remove_workdir, tail, unregister_cleanup

BARMAN_TIMEOUT_S = 120
RECEIVER_START_TIMEOUT_S = 30.0

# Variables that must not leak from the test process into Barman (and its hooks).
_SCRUBBED_ENV_PREFIXES = ("PG", "AWS_", "AZURE_", "GOOGLE_", "PYTHON", "VIRTUAL_ENV", "BARMAN_")


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass
class BarmanServer:
    """A configured Barman server streaming WAL from ``cluster`` (stop it with :meth:`stop`)."""

    name: str
    workdir: Path
    config_file: Path
    home: Path
    log_file: Path
    cluster: PgCluster
    env: dict[str, str] = field(repr=False)
    receiver: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    remove_workdir_on_stop: bool = True

    def barman(
        self, *args: str, check: bool = True, timeout: float = BARMAN_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """``barman -c <config> ARGS``; with ``check`` a failure raises with output and log."""
        argv = [str(barman_bin("barman")), "-c", str(self.config_file), *args]
        try:
            result = subprocess.run(
                argv, env=self.env, cwd=str(self.workdir), capture_output=True, text=True,
                timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"barman {' '.join(args)} timed out after {timeout:.0f}s; Barman log tail:\n"
                f"{self.log_tail()}"
            ) from exc
        if check and result.returncode != 0:
            raise RuntimeError(
                f"barman {' '.join(args)} exited {result.returncode}\n--- stdout ---\n"
                f"{result.stdout}\n--- stderr ---\n{result.stderr}\n--- Barman log tail ---\n"
                f"{self.log_tail()}"
            )
        return result

    def backup(self, *extra: str) -> str:
        """``barman backup --wait`` (the backup is DONE when hooks run); its backup ID.

        Barman prints errors but exits 0 when its pre-backup checks fail, so success is judged
        by the new backup.info's status.
        """
        before = set(self.backup_ids())
        result = self.barman("backup", "--wait", "--wait-timeout", "60", *extra, self.name)
        new = sorted(set(self.backup_ids()) - before)
        if len(new) != 1 or self.status(new[0]) != "DONE":
            raise RuntimeError(
                f"barman backup made {new} (status {[self.status(b) for b in new]})\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
                f"--- Barman log tail ---\n{self.log_tail()}"
            )
        return new[0]

    def backup_ids(self) -> list[str]:
        base = self.home / self.name / "base"
        return sorted(p.name for p in base.iterdir()) if base.is_dir() else []

    def backup_dir(self, backup_id: str) -> Path:
        """``BARMAN_BACKUP_DIR``: holds ``backup.info``, ``data/`` and one dir per tablespace."""
        return self.home / self.name / "base" / backup_id

    def backup_info_path(self, backup_id: str) -> Path:
        """``BARMAN_BACKUP_INFO_PATH``: Barman 3.20 keeps it in ``<server>/meta/``."""
        meta = self.home / self.name / "meta" / f"{backup_id}-backup.info"
        return meta if meta.exists() else self.backup_dir(backup_id) / "backup.info"

    def status(self, backup_id: str) -> str:
        for line in self.backup_info_path(backup_id).read_text().splitlines():
            if line.startswith("status="):
                return line.partition("=")[2]
        return ""

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)

    def stop(self) -> None:
        """Stop ``receive-wal``, drop its slot (the cluster may outlive us), remove the dir."""
        unregister_cleanup(self.stop)
        proc, self.receiver = self.receiver, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.cluster.running:
            with contextlib.suppress(Exception):
                _drop_slot(self.cluster, _slot_name(self.name))
        if self.remove_workdir_on_stop:
            remove_workdir(self.workdir)


def _slot_name(server: str) -> str:
    return f"barman_{server}".replace("-", "_")


def _drop_slot(cluster: PgCluster, slot: str, timeout: float = 10.0) -> None:
    """Drop the slot once pg_receivewal's walsender has gone (it stays active a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = cluster.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        if not rows:
            return
        if not rows[0][0]:
            cluster.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"replication slot {slot} still active after {timeout:.0f}s")
        time.sleep(0.1)


def _write_config(
    path: Path, name: str, home: Path, log_file: Path, cluster: PgCluster,
    hooks: Mapping[str, str],
) -> None:
    conninfo = f"host={cluster.host} port={cluster.port} user={cluster.user}"
    server = {
        "description": "pgcloud test server",
        "conninfo": f"{conninfo} dbname=postgres",
        "streaming_conninfo": conninfo,
        "backup_method": "postgres",
        "streaming_archiver": "on",
        "archiver": "off",
        "slot_name": _slot_name(name),
        "path_prefix": str(cluster.bindir),
        "minimum_redundancy": "0",
        "check_timeout": "30",
        **hooks,
    }
    for key, value in server.items():
        if "\n" in value or "%" in value:
            raise ValueError(f"Barman option {key} cannot hold {value!r}")
    lines = [
        "[barman]",
        f"barman_home = {home}",
        f"barman_user = {getpass.getuser()}",
        f"log_file = {log_file}",
        "log_level = DEBUG",
        "",
        f"[{name}]",
        *(f"{key} = {value}" for key, value in server.items()),
    ]
    path.write_text("\n".join(lines) + "\n")


def start_barman_server(
    workdir: Path,
    cluster: PgCluster,
    *,
    name: str = "pg",
    hooks: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    remove_workdir_on_stop: bool = True,
) -> BarmanServer:
    """Configure Barman for ``cluster``, start streaming its WAL, and make it ready to back up.

    ``hooks`` are extra server options (``post_backup_retry_script = ...``); ``env`` is added
    to Barman's environment and so reaches its hook scripts (S3 credentials, for instance).
    The cluster needs ``wal_level = replica``, a free WAL sender and a ``host replication``
    pg_hba line for 127.0.0.1 (initdb's default, which the rig keeps).
    """
    if cluster.password is None:
        raise ValueError("the cluster's password is needed for Barman's pgpass file")
    home, log_file = workdir / "home", workdir / "barman.log"
    home.mkdir(exist_ok=True)
    pgpass = workdir / "pgpass"
    pgpass.write_text(
        f"{cluster.host}:{cluster.port}:*:{_pgpass_escape(cluster.user)}:"
        f"{_pgpass_escape(cluster.password)}\n"
    )
    pgpass.chmod(0o600)
    config_file = workdir / "barman.conf"
    _write_config(config_file, name, home, log_file, cluster, hooks or {})
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    full_env.update({"PGPASSFILE": str(pgpass), "LC_ALL": "C.UTF-8"})
    full_env.update(env or {})
    server = BarmanServer(
        name=name, workdir=workdir, config_file=config_file, home=home, log_file=log_file,
        cluster=cluster, env=full_env, remove_workdir_on_stop=remove_workdir_on_stop,
    )
    register_cleanup(server.stop)
    try:
        server.barman("receive-wal", "--create-slot", name)
        server.receiver = _start_receiver(server)
        _prime_wal_catalogue(server)
    except BaseException:
        server.stop()
        raise
    return server


def _prime_wal_catalogue(server: BarmanServer, timeout: float = 30.0) -> None:
    """Put one streamed WAL segment into Barman's catalogue (its "WAL archive" check).

    ``barman switch-wal --archive`` alone can wait ~15 s: Barman's streaming archiver always
    leaves the newest complete segment in place unless a ``.partial`` follows it, and
    pg_receivewal opens the next ``.partial`` only when new WAL arrives. So the switch is
    followed by a committed transaction, and Barman archives once both files are there.
    """
    cluster = server.cluster
    cluster.execute("SELECT txid_current()")
    closed = str(cluster.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    cluster.execute("SELECT txid_current()")
    streaming = server.home / server.name / "streaming"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = sorted(p.name for p in streaming.iterdir()) if streaming.is_dir() else []
        if closed in names and any(n.endswith(".partial") and n > closed for n in names):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(
            f"pg_receivewal did not deliver {closed} within {timeout:.0f}s:\n"
            f"{tail(server.workdir / 'receive-wal.out')}"
        )
    server.barman("archive-wal", server.name)


def _start_receiver(server: BarmanServer) -> subprocess.Popen[bytes]:
    """``barman receive-wal`` in the foreground of its own process group; wait until it streams.

    Streaming is seen as the slot turning active, so the switch-wal that follows is received.
    """
    argv: Sequence[str] = [
        str(barman_bin("barman")), "-c", str(server.config_file), "receive-wal", server.name,
    ]
    out = (server.workdir / "receive-wal.out").open("wb")
    try:
        proc = subprocess.Popen(
            argv, env=server.env, cwd=str(server.workdir), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        out.close()
    slot = _slot_name(server.name)
    deadline = time.monotonic() + RECEIVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        rows = server.cluster.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        if rows and rows[0][0]:
            return proc
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    raise RuntimeError(
        f"barman receive-wal did not start streaming (exit {proc.returncode}):\n"
        f"{tail(server.workdir / 'receive-wal.out')}\n--- Barman log tail ---\n"
        f"{server.log_tail()}"
    )
