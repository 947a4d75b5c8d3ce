"""pgcloud-backup-delete: delete backups by retention policy or by ID, with the WAL no remaining
backup needs, as barman-cloud-backup-delete does (runner/retention.py).

Exit codes: 0 done (or nothing to delete, or a dry run), 1 something could not be deleted or a
delete was refused (a keep annotation, the minimum redundancy, a run that may still be going,
an unreadable backup.info), 2 the store is unreachable, 3 bad input, 4 any other failure (a
backup name that matches nothing).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..cleanup import DEFAULT_GRACE_SECONDS
from ..errors import InputError
from ..retention import apply_retention, delete_backup, parse_policy
from .common import checked_store, non_negative, run_main, store_command, store_config

log = logging.getLogger("pgcloud")


def build_parser() -> argparse.ArgumentParser:
    parser = store_command(
        "pgcloud-backup-delete",
        "Delete backups of one server, by retention policy or by ID, with the WAL that no "
        "remaining backup needs, as barman-cloud-backup-delete does. Backups kept with "
        "pgcloud-backup-keep or barman-cloud-backup-keep are never deleted.",
        url="source_url",
    )
    parser.add_argument("-t", "--test", action="store_true",
                        help="test cloud connectivity and exit")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-b", "--backup-id",
                       help="the backup to delete: an ID, a name, or latest, oldest, "
                       "last-failed")
    which.add_argument("-r", "--retention-policy",
                       help="delete every backup this policy makes obsolete: REDUNDANCY n or "
                       "RECOVERY WINDOW OF n {DAYS|WEEKS|MONTHS}")
    parser.add_argument("-m", "--minimum-redundancy", type=non_negative, default=0,
                        help="the number of backups that must always remain (default: 0)")
    parser.add_argument("--dry-run", action="store_true",
                        help="find what would be deleted and delete nothing")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                        help="the most objects deleted in one request (default, and most: "
                        "1000 for aws-s3, 256 for azure-blob-storage, 100 for "
                        "google-cloud-storage)")
    parser.add_argument("--grace-period", type=float, default=DEFAULT_GRACE_SECONDS,
                        metavar="SECONDS",
                        help="a STARTED backup that began less than this ago may belong to a "
                        "run still going: it and its WAL are never deleted (default: "
                        f"{DEFAULT_GRACE_SECONDS}, i.e. 24 hours, as pgcloud-cleanup)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.grace_period < 0:
        raise InputError("--grace-period must not be negative")
    policy = parse_policy(args.retention_policy) if args.retention_policy else None
    with checked_store(store_config(args, args.source_url)) as store:
        if args.test:
            log.info("the store is reachable and exists")
            return 0
        options = {"minimum_redundancy": args.minimum_redundancy, "dry_run": args.dry_run,
                   "batch_size": args.batch_size, "grace_seconds": args.grace_period}
        if policy is not None:
            report = apply_retention(store, args.server_name, policy, **options)
        else:
            report = delete_backup(store, args.server_name, args.backup_id, **options)
    log.info("%s%s", "dry run: " if args.dry_run else "", report.summary())
    for error in report.errors:
        log.error("%s", error)
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
