"""pgcloud-verify: check a stored backup against its manifest (runner/verify.py).

Exit codes: 0 the backup matches its manifest; 1 it does not (the first bad archive and file
are named), or it is not DONE, or it has no manifest; 2 the store is unreachable; 3 bad input.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ..verify import verify_backup
from .common import checked_store, run_main, store_command, store_config

log = logging.getLogger("pgcloud")


def build_parser() -> argparse.ArgumentParser:
    parser = store_command(
        "pgcloud-verify",
        "Check a stored backup against the manifest written while it was taken: every archive "
        "object is streamed, decompressed and each file's size and checksum compared, without "
        "restoring anything. Exit 0 when everything matches, 1 at the first difference (the "
        "archive and file are named).",
        url="source_url",
    )
    parser.add_argument("backup_id", help="the backup ID, a backup name, or latest/oldest")
    return parser


def run(args: argparse.Namespace) -> int:
    with checked_store(store_config(args, args.source_url)) as store:
        report = verify_backup(store, args.server_name, args.backup_id)
    log.info("%s", report.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run)
