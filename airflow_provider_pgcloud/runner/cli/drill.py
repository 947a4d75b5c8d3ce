"""pgcloud-drill: restore a backup, start it, check it, remove it (runner/drill.py).

Prints the drill's figures as one JSON object on stdout. Exit codes: 0 the drill passed; 1 a
step failed (named, with its reason); 2 the store is unreachable; 3 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..drill import DrillOptions, run_drill
from .common import checked_store, positive, run_main, store_command, store_config


def build_parser() -> argparse.ArgumentParser:
    parser = store_command(
        "pgcloud-drill",
        "Restore a backup into a scratch directory, fetch its WAL, start PostgreSQL on a "
        "private socket, run pg_amcheck on every database and the SQL checks given, then stop "
        "and remove everything. Prints the figures (restore, replay and recovery seconds) as "
        "JSON.",
        url="source_url",
    )
    parser.add_argument("backup_id", nargs="?", default="latest",
                        help="the backup ID, a backup name, or latest/oldest (default: latest)")
    parser.add_argument("--pg-bin-dir", default=DrillOptions.pg_bin_dir,
                        help="PostgreSQL's server binaries; {major} becomes the backup's major "
                        "(default: %(default)s)")
    parser.add_argument("--sql-check", action="append", default=[], dest="sql_checks",
                        metavar="SQL", help="a statement that must succeed and, if it returns "
                        "a row, return true (repeatable)")
    parser.add_argument("--sql-database", default="postgres",
                        help="the database the SQL checks run in (default: postgres)")
    parser.add_argument("--database-user", default="postgres",
                        help="the cluster's superuser to check with (default: postgres)")
    parser.add_argument("--run-as", help="the OS user that runs PostgreSQL when this command "
                        "runs as root")
    parser.add_argument("--scratch-dir", help="where the scratch directory is made "
                        "(default: the temporary directory)")
    parser.add_argument("-J", "--jobs", type=positive, default=2,
                        help="archive objects restored at once (default: 2)")
    return parser


def run(args: argparse.Namespace) -> int:
    config = store_config(args, args.source_url)
    with checked_store(config):
        pass
    report = run_drill(config, DrillOptions(
        server_name=args.server_name, backup_id=args.backup_id, pg_bin_dir=args.pg_bin_dir,
        scratch_dir=args.scratch_dir, run_as=args.run_as, database_user=args.database_user,
        sql_checks=tuple(args.sql_checks), sql_database=args.sql_database, jobs=args.jobs,
    ))
    print(json.dumps(report.to_dict()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
