"""pgcloud-cleanup: remove what dead backup runs left in the store (runner/cleanup.py).

Exit codes: 0 done (or nothing to do), 1 something could not be removed, 2 the store is
unreachable, 3 bad input.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ..cleanup import DEFAULT_GRACE_SECONDS, clean_server
from ..errors import InputError
from .common import checked_store, run_main, store_command, store_config

log = logging.getLogger("pgcloud")


def build_parser() -> argparse.ArgumentParser:
    parser = store_command(
        "pgcloud-cleanup",
        "Remove what dead backup runs left in the store for one server: STARTED backups older "
        "than the grace period (their archives, manifest and backup.info), multipart uploads "
        "in progress that no live run will complete, and manifests of deleted backups. DONE "
        "and FAILED backups are never changed. The runner does the same after every "
        "successful backup, with the default grace period.",
    )
    parser.add_argument("--grace-period", type=float, default=DEFAULT_GRACE_SECONDS,
                        metavar="SECONDS",
                        help="a STARTED backup (or an upload) older than this is taken for dead "
                        f"(default: {DEFAULT_GRACE_SECONDS}, i.e. 24 hours); keep it above your "
                        "longest backup")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="only report what would be removed")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.grace_period < 0:
        raise InputError("--grace-period must not be negative")
    with checked_store(store_config(args, args.destination_url)) as store:
        report = clean_server(store, args.server_name, grace_seconds=args.grace_period,
                              dry_run=args.dry_run)
    log.info("%s%s", "dry run: " if args.dry_run else "", report.summary())
    for error in report.errors:
        log.error("%s", error)
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run)
