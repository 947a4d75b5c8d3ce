"""pgcloud-backup: barman-cloud-backup's command line, validation and exit codes.

Exit codes follow the spec: 0 success, 1 backup not successful, 2 cloud connection failed,
3 bad command input, 4 any other failure. Every failure is one line on stderr, never a
traceback (run with -v to see one for an unexpected error). Run as Barman's post-backup hook
script it uploads the backup Barman took (barman_hook.py) instead of taking one.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

from ... import __version__
from .. import barman_hook
from ..backup import run_backup
from ..backup_info import check_backup_name
from ..codecs import get_codec
from ..errors import InputError, PgCloudError
from ..snapshot_backup import run_snapshot_backup
from ..steps import DEFAULT_MAX_ARCHIVE_SIZE, DEFAULT_MIN_CHUNK_SIZE, BackupOptions
from ..storage import StoreConfig
from ..stream_backup import run_stream_backup
from ..values import check_tags
from . import snapshots
from .common import (
    Parser,
    add_location,
    add_postgres_arguments,
    add_store_arguments,
    add_verbosity,
    checked_store,
    conninfo,
    non_negative,
    positive,
    run_main,
    size,
    store_config,
)

PROG = "pgcloud-backup"
log = logging.getLogger("pgcloud")


def _backup_name(text: str) -> str:
    try:
        return check_backup_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        add_help=False,
        description="Back up a running PostgreSQL cluster to cloud object storage, in the "
        "layout barman-cloud-backup writes and barman-cloud-restore reads.",
        epilog="After a successful backup, what earlier runs that died left behind (STARTED "
        "backups older than 24 hours, their uploads in progress) is removed; "
        "pgcloud-cleanup does it on demand and pgcloud-verify checks a stored backup "
        "against its manifest.",
    )
    add_location(parser)
    general = parser.add_argument_group("general")
    general.add_argument("--help", action="help", help="show this help message and exit")
    general.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    add_verbosity(general)
    general.add_argument("-t", "--test", action="store_true",
                         help="test cloud connectivity and exit")
    compression = general.add_mutually_exclusive_group()
    for flags, name in (
        (("-z", "--gzip"), "gzip"),
        (("-j", "--bzip2"), "bzip2"),
        (("--snappy",), "snappy"),
        (("--lz4",), "lz4"),
        (("--zstd",), "zstd"),
    ):
        compression.add_argument(*flags, dest="compression", action="store_const", const=name,
                                 help=f"{name}-compress the backup while uploading to the cloud")
    add_postgres_arguments(parser)
    backup = parser.add_argument_group("backup")
    backup.add_argument("--immediate-checkpoint", action="store_true",
                        help="forces the initial checkpoint to be done as quickly as possible")
    backup.add_argument("-J", "--jobs", type=positive, default=2,
                        help="number of archive objects compressed and uploaded in "
                        "parallel, by at most one process per CPU core (default: 2)")
    backup.add_argument("-S", "--max-archive-size", type=size, default=DEFAULT_MAX_ARCHIVE_SIZE,
                        help="maximum size of an archive when uploading to cloud storage "
                        "(default: 100GB)")
    backup.add_argument("--min-chunk-size", type=size, default=DEFAULT_MIN_CHUNK_SIZE,
                        help="minimum size of an individual upload part (default: 5MB)")
    backup.add_argument("--max-bandwidth", type=size,
                        help="the maximum amount of data to be uploaded per second, for the "
                        "whole backup across all jobs (default: no limit)")
    backup.add_argument("--keepalive-interval", type=non_negative, default=60,
                        help="seconds between checks that the PostgreSQL session holding the "
                        "backup is alive; 0 checks only between archive objects (default: 60)")
    backup.add_argument("--streaming", action="store_true",
                        help="have the server send its files over the replication protocol "
                        "(BASE_BACKUP, PostgreSQL 15 or later) instead of reading the data "
                        "directory: runs on any host, as a role with REPLICATION")
    backup.add_argument("--accept-checksum-failures", action="store_true",
                        help="with --streaming: pages whose checksum fails are recorded in "
                        "the manifest and logged, and the run still succeeds (default: it "
                        "exits 1 naming the files, after storing the backup)")
    backup.add_argument("-n", "--name", dest="backup_name", type=_backup_name,
                        help="a name which can be used to reference this backup in "
                        "barman-cloud-restore and barman-cloud-backup-delete")
    add_store_arguments(parser, writes=True, groups={"general": general, "backup": backup})
    snapshots.add_arguments(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_option_rules(args: argparse.Namespace) -> None:
    """Rules across options that parse one by one. Barman checks them after parsing and exits
    4 (not argparse's 3), whatever its documentation's wording; so do we, like its snapshot
    option rules."""
    if args.sse_kms_key_id and args.encryption != "aws:kms":
        raise PgCloudError('Encryption type must be "aws:kms" if SSE KMS Key ID is specified')
    check_tags(args.tags)
    if args.lock_mode and not args.lock_days:  # ours, not Barman's: bad input, exit 3
        raise InputError("--lock-mode is the mode of --lock-days: give both")


def _codec(args: argparse.Namespace) -> None:
    try:
        get_codec(args.compression)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    check_option_rules(args)
    config = store_config(args, args.destination_url)
    snapshot = snapshots.config_from_args(args)
    log.debug("%s %s to %s (%s)", PROG, __version__, config.destination_url,
              config.cloud_provider)
    if args.test:
        with checked_store(config):
            pass
        log.info("cloud storage %s is reachable", args.destination_url)
        return 0
    if barman_hook.is_hook_script(os.environ):
        return run_hook(args, config, os.environ)
    _codec(args)
    options = BackupOptions(
        server_name=args.server_name,
        store=config,
        conninfo=conninfo(args),
        compression=args.compression,
        jobs=args.jobs,
        max_archive_size=args.max_archive_size,
        min_chunk_size=args.min_chunk_size,
        immediate_checkpoint=args.immediate_checkpoint,
        backup_name=args.backup_name,
        max_bandwidth=args.max_bandwidth,
        keepalive_interval=args.keepalive_interval,
        streaming=args.streaming,
        accept_checksum_failures=args.accept_checksum_failures,
    )
    if options.streaming:
        if snapshot is not None:
            raise PgCloudError("--streaming cannot be used with snapshot backups")
        run_stream_backup(options)
        return 0
    if snapshot is not None:
        run_snapshot_backup(options, snapshot)
        return 0
    run_backup(options)
    return 0


def run_hook(args: argparse.Namespace, config: StoreConfig, environ: Mapping[str, str]) -> int:
    """Hook mode: check, upload the backup Barman took, exit 0 (or raise with the exit code)."""
    if args.backup_name:
        # exit 4, as barman-cloud-backup: the option is valid, the situation is not
        raise PgCloudError("Cannot set backup name when running as a hook script")
    backup = barman_hook.read_barman_backup(environ)
    _codec(args)
    options = BackupOptions(
        server_name=args.server_name,
        store=config,
        compression=args.compression,
        jobs=args.jobs,
        max_archive_size=args.max_archive_size,
        min_chunk_size=args.min_chunk_size,
        max_bandwidth=args.max_bandwidth,
    )
    barman_hook.upload_barman_backup(backup, options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, run, "backup was interrupted by the user")
