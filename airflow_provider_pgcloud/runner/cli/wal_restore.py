"""pgcloud-wal-restore: fetch one WAL file archived by barman-cloud-wal-archive, as PostgreSQL's
restore_command (runner/wal_restore.py); barman-cloud-wal-restore's arguments.

Exit codes, as barman-cloud-wal-restore's: 0 the file was written to WAL_DEST; 1 it is not in
the archive (restore_command's contract: a file that does not exist is a non-zero exit); 2 the
store is unreachable; 3 bad input (a WAL_NAME that names no WAL file); 4 any other failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..wal_restore import check_wal_name, restore_wal
from .common import checked_store, run_main, store_command, store_config

log = logging.getLogger("pgcloud")


def build_parser() -> argparse.ArgumentParser:
    parser = store_command(
        "pgcloud-wal-restore",
        "Fetch a WAL file archived by barman-cloud-wal-archive (any compression it writes) "
        "into WAL_DEST, written whole or not at all: a restore_command for recovery, e.g. "
        "restore_command = 'pgcloud-wal-restore s3://bucket/path SERVER %f %p'. Exit 0 when "
        "written, 1 when the archive does not hold it.",
        url="source_url",
    )
    parser.add_argument("wal_name",
                        help="the name of the WAL file ('%%f' in restore_command)")
    parser.add_argument("wal_dest",
                        help="where to write it ('%%p' in restore_command)")
    parser.add_argument("-t", "--test", action="store_true",
                        help="test cloud connectivity and exit")
    parser.add_argument("--no-partial", action="store_true",
                        help="do not restore a segment's .partial file when the whole segment "
                        "was never archived")
    return parser


def run(args: argparse.Namespace) -> int:
    check_wal_name(args.wal_name)
    with checked_store(store_config(args, args.source_url)) as store:
        if args.test:
            log.info("the store is reachable and exists")
            return 0
        restore_wal(store, args.server_name, args.wal_name, args.wal_dest,
                    partial=not args.no_partial)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
