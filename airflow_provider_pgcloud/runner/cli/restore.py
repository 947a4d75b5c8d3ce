"""pgcloud-restore: restore a backup from the store into a directory (runner/restore.py).

Exit codes: 0 restored; 1 the restore failed (the archive object and file are named; the
directory is left without global/pg_control, so PostgreSQL will not start on it); 2 the store
is unreachable; 3 bad input (a non-empty directory, an unknown tablespace, a bad target).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Sequence

from ..errors import InputError
from ..restore import TARGET_ACTIONS, RecoverySettings, restore_backup
from ..storage import StoreConfig
from .common import (
    positive,
    run_main,
    store_arguments,
    store_command,
    store_config,
)

log = logging.getLogger("pgcloud")


def _tablespace(text: str) -> tuple[str, str]:
    name, sep, directory = text.partition(":")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME:DIRECTORY, got {text!r}")
    return name, directory


def build_parser() -> argparse.ArgumentParser:
    parser = store_command(
        "pgcloud-restore",
        "Restore a backup from cloud storage into RECOVERY_DIR, as barman-cloud-restore does, "
        "with -J archive objects fetched and unpacked at once and, when the backup has a "
        "pgcloud manifest, every file checked against it. Optionally writes the recovery "
        "settings (recovery.signal, a restore_command calling pgcloud-wal-restore, a target).",
        url="source_url",
    )
    parser.add_argument("backup_id", help="the backup ID, a backup name, or latest/oldest")
    parser.add_argument("recovery_dir", help="the directory to restore into (missing or empty)")
    parser.add_argument("--tablespace", action="append", type=_tablespace, default=[],
                        metavar="NAME:DIRECTORY",
                        help="restore tablespace NAME into DIRECTORY instead of its original "
                        "location (repeatable)")
    parser.add_argument("-J", "--jobs", type=positive, default=2,
                        help="archive objects restored at once (default: 2)")
    recovery = parser.add_argument_group(
        "recovery", "PostgreSQL settings appended to postgresql.auto.conf, with recovery.signal")
    recovery.add_argument("-R", "--write-recovery-conf", action="store_true",
                          help="write recovery.signal and a restore_command that fetches WAL "
                          "with pgcloud-wal-restore from SOURCE_URL (credentials come from the "
                          "server's environment, as for this command); implied by a target")
    targets = recovery.add_mutually_exclusive_group()
    targets.add_argument("--target-time", help="recover up to this time (recovery_target_time)")
    targets.add_argument("--target-lsn", help="recover up to this LSN (recovery_target_lsn)")
    targets.add_argument("--target-xid",
                         help="recover up to this transaction ID (recovery_target_xid)")
    targets.add_argument("--target-name",
                         help="recover up to this restore point (recovery_target_name)")
    targets.add_argument("--target-immediate", action="store_true",
                         help="stop as soon as the backup is consistent (recovery_target)")
    recovery.add_argument("--target-action", choices=TARGET_ACTIONS,
                          help="what the server does at the target (recovery_target_action; "
                          "PostgreSQL's default: pause)")
    recovery.add_argument("--wal-restore-command",
                          help="the program that fetches WAL (default: pgcloud-wal-restore "
                          "beside this interpreter)")
    return parser


def wal_restore_program() -> list[str]:
    """pgcloud-wal-restore as the server will run it: the console script beside this Python
    (it may not be on the server's PATH), else this interpreter running the module."""
    script = os.path.join(os.path.dirname(sys.executable), "pgcloud-wal-restore")
    if os.access(script, os.X_OK):
        return [script]
    found = shutil.which("pgcloud-wal-restore")
    if found:
        return [found]
    return [sys.executable, "-m", "airflow_provider_pgcloud.runner.cli.wal_restore"]


def recovery_settings(args: argparse.Namespace, config: StoreConfig
                      ) -> RecoverySettings | None:
    target: tuple[str, str | None] | None = None
    for kind in ("time", "lsn", "xid", "name"):
        value = getattr(args, f"target_{kind}")
        if value is not None:
            if not value.strip():
                raise InputError(f"--target-{kind} must not be empty")
            target = (kind, value)
    if args.target_immediate:
        target = ("immediate", None)
    if target is None and not args.write_recovery_conf:
        if args.target_action:
            raise InputError("--target-action needs a recovery target")
        return None
    program = (shlex.split(args.wal_restore_command) if args.wal_restore_command
               else wal_restore_program())
    command = shlex.join([*program, *store_arguments(config), args.source_url,
                          args.server_name]) + " %f %p"
    return RecoverySettings(restore_command=command, target=target,
                            target_action=args.target_action)


def run(args: argparse.Namespace) -> int:
    config = store_config(args, args.source_url)
    recovery = recovery_settings(args, config)
    tablespaces = dict(args.tablespace)
    if len(tablespaces) != len(args.tablespace):
        raise InputError("--tablespace: a tablespace is named twice")
    report = restore_backup(config, args.server_name, args.backup_id, args.recovery_dir,
                            tablespaces=tablespaces, jobs=args.jobs, recovery=recovery)
    log.info("%s", report.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run, interrupted="interrupted: the recovery "
                    "directory is incomplete (no global/pg_control) and must be emptied")


if __name__ == "__main__":
    sys.exit(main())
