"""pgcloud-backup-keep: keep a backup whatever the retention policy says, show or release the
keep, as barman-cloud-backup-keep does and in the same object (runner/keep.py).

Exit codes: 0 done, 1 the backup is not DONE (only DONE backups can be kept), 2 the store is
unreachable, 3 bad input, 4 any other failure (no such backup).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..keep import TARGETS, keep_backup, keep_status, release_keep, resolve
from .common import checked_store, run_main, store_command, store_config

log = logging.getLogger("pgcloud")


def build_parser() -> argparse.ArgumentParser:
    parser = store_command(
        "pgcloud-backup-keep",
        "Mark a backup to be kept whatever the retention policy says (full: with all WAL "
        "from it on; standalone: with only the WAL it needs), show the mark, or release it. "
        "Marks are barman-cloud-backup-keep's: each command honours the other's.",
        url="source_url",
    )
    parser.add_argument("backup_id",
                        help="the backup: an ID, a name, or latest, oldest, last-failed")
    parser.add_argument("-t", "--test", action="store_true",
                        help="test cloud connectivity and exit")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-r", "--release", action="store_true",
                      help="remove the keep: the backup can then be deleted by retention")
    what.add_argument("-s", "--status", action="store_true",
                      help="print the keep status of the backup (full, standalone or nokeep)")
    what.add_argument("--target", choices=TARGETS,
                      help="keep the backup for this recovery target")
    return parser


def run(args: argparse.Namespace) -> int:
    with checked_store(store_config(args, args.source_url)) as store:
        if args.test:
            log.info("the store is reachable and exists")
            return 0
        backup_id = resolve(store, args.server_name, args.backup_id)
        if args.release:
            release_keep(store, args.server_name, backup_id)
        elif args.status:
            print(f"Keep: {keep_status(store, args.server_name, backup_id)}")
        else:
            keep_backup(store, args.server_name, backup_id, args.target)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
