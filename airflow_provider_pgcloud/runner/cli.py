"""The command line: barman-cloud-backup's options, validation and exit codes.

Exit codes follow the spec: 0 success, 1 backup not successful, 2 cloud connection failed,
3 bad command input, 4 any other failure. Every failure is one line on stderr, never a
traceback (run with -v to see one for an unexpected error).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from collections.abc import Sequence

from .. import __version__
from . import hook, snapshots
from .argtypes import Parser, configure_verbosity, non_negative, positive, report_failures, size
from .backup import run_backup
from .backup_info import check_backup_name
from .codecs import get_codec
from .errors import InputError, PgCloudError
from .postgres import build_conninfo
from .sizes import parse_size
from .snapshot_backup import run_snapshot_backup
from .steps import DEFAULT_MIN_CHUNK_SIZE, BackupOptions
from .storage import PROVIDERS, StoreConfig, open_store

PROG = "pgcloud"
log = logging.getLogger("pgcloud")


def _backup_name(text: str) -> str:
    try:
        return check_backup_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tag(text: str) -> tuple[str, str]:
    try:
        fields = next(csv.reader([text], delimiter=","))
    except (csv.Error, StopIteration) as exc:
        raise argparse.ArgumentTypeError(f"Error parsing tag {text}: {exc}") from None
    if len(fields) != 2:
        raise argparse.ArgumentTypeError(f"Invalid tag format: {text}")
    return fields[0], fields[1]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        add_help=False,
        description="Back up a running PostgreSQL cluster to cloud object storage, in the "
        "layout barman-cloud-backup writes and barman-cloud-restore reads.",
        epilog="After a successful backup, what earlier runs that died left behind (STARTED "
        "backups older than 24 hours, their uploads in progress) is removed; "
        "`python -m airflow_provider_pgcloud.runner.cleanup` does it on demand and "
        "`python -m airflow_provider_pgcloud.runner.verify` checks a stored backup against "
        "its manifest.",
    )
    parser.add_argument("destination_url", help="URL of the cloud destination, e.g. s3://bucket/path")
    parser.add_argument("server_name", help="the name of the server as configured in Barman")
    general = parser.add_argument_group("general")
    general.add_argument("--help", action="help", help="show this help message and exit")
    general.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    verbosity = general.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="increase output verbosity (-vv is more than -v)")
    verbosity.add_argument("-q", "--quiet", action="count", default=0,
                           help="decrease output verbosity (-qq is less than -q)")
    general.add_argument("-t", "--test", action="store_true",
                         help="test cloud connectivity and exit")
    general.add_argument("--cloud-provider", choices=list(PROVIDERS), default="aws-s3",
                         help="the cloud provider to use as a storage backend")
    compression = general.add_mutually_exclusive_group()
    for flags, name, text in (
        (("-z", "--gzip"), "gzip", "gzip"),
        (("-j", "--bzip2"), "bzip2", "bzip2"),
        (("--snappy",), "snappy", "snappy"),
        (("--lz4",), "lz4", "lz4"),
        (("--zstd",), "zstd", "zstd"),
    ):
        compression.add_argument(*flags, dest="compression", action="store_const", const=name,
                                 help=f"{text}-compress the backup while uploading to the cloud")
    postgres = parser.add_argument_group("PostgreSQL connection (libpq defaults and PG* apply)")
    postgres.add_argument("-h", "--host", help="host or Unix socket for PostgreSQL connection")
    postgres.add_argument("-p", "--port", help="port for PostgreSQL connection")
    postgres.add_argument("-U", "--user", help="user name for PostgreSQL connection")
    postgres.add_argument("-d", "--dbname",
                          help="database name or conninfo string for Postgres connection "
                          "(default: postgres)")
    backup = parser.add_argument_group("backup")
    backup.add_argument("--immediate-checkpoint", action="store_true",
                        help="forces the initial checkpoint to be done as quickly as possible")
    backup.add_argument("-J", "--jobs", type=positive, default=2,
                        help="number of archive objects compressed and uploaded in "
                        "parallel, by at most one process per CPU core (default: 2)")
    backup.add_argument("-S", "--max-archive-size", type=size, default=parse_size("100GB"),
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
    backup.add_argument("-n", "--name", dest="backup_name", type=_backup_name,
                        help="a name which can be used to reference this backup in "
                        "barman-cloud-restore and barman-cloud-backup-delete")
    backup.add_argument("--tags", type=_tag, nargs="*", default=[], metavar="KEY,VALUE",
                        help="tags to be added to all uploaded files in cloud storage")
    s3 = parser.add_argument_group("aws-s3")
    s3.add_argument("--endpoint-url", help="override default S3 endpoint URL with the given one")
    s3.add_argument("-P", "--aws-profile", "--profile", dest="aws_profile",
                    help="profile name (e.g. INI section in the AWS credentials file); "
                    "--profile is deprecated")
    s3.add_argument("--read-timeout", type=positive, default=60,
                    help="seconds until a timeout is raised when waiting to read from a "
                    "connection (default: 60)")
    s3.add_argument("-e", "--encryption", choices=["AES256", "aws:kms"],
                    help="server-side encryption of the uploaded data in S3")
    s3.add_argument("--sse-kms-key-id",
                    help="the AWS KMS key ID used to encrypt the data; only with -e aws:kms")
    azure = parser.add_argument_group("azure-blob-storage")
    azure.add_argument("--azure-credential", "--credential", dest="azure_credential",
                       choices=["azure-cli", "managed-identity", "default"],
                       help="type of credential to use when authenticating with Azure; if "
                       "omitted, credentials come from the environment (connection string, "
                       "account key or SAS token); --credential is deprecated")
    azure.add_argument("--encryption-scope",
                       help="the name of an encryption scope defined in the Azure Blob Storage "
                       "service, used to encrypt the data in Azure")
    gcs = parser.add_argument_group("google-cloud-storage")
    gcs.add_argument("--kms-key-name",
                     help="the name of the GCP KMS key used to encrypt the data in GCS")
    snapshots.add_arguments(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    return parser.parse_args(argv)


def check_option_rules(args: argparse.Namespace) -> None:
    """Rules across options that parse one by one. Barman checks them after parsing and exits
    4 (not argparse's 3), whatever its documentation's wording; so do we, like its snapshot
    option rules."""
    if args.sse_kms_key_id and args.encryption != "aws:kms":
        raise PgCloudError('Encryption type must be "aws:kms" if SSE KMS Key ID is specified')
    if len(args.tags) > 10:
        raise PgCloudError("Maximum number of tags per object exceeded: no more than 10 tags")
    keys = [key for key, _ in args.tags]
    if len(set(keys)) != len(keys):
        raise PgCloudError("Duplicate tag keys found. Tag keys must be unique.")


def store_config(args: argparse.Namespace) -> StoreConfig:
    return StoreConfig(
        destination_url=args.destination_url,
        cloud_provider=args.cloud_provider,
        endpoint_url=args.endpoint_url,
        aws_profile=args.aws_profile,
        read_timeout=args.read_timeout,
        encryption=args.encryption,
        sse_kms_key_id=args.sse_kms_key_id,
        tags=tuple(args.tags),
        azure_credential=args.azure_credential,
        encryption_scope=args.encryption_scope,
        kms_key_name=args.kms_key_name,
    )


def run(args: argparse.Namespace) -> int:
    check_option_rules(args)
    config = store_config(args)
    snapshot = snapshots.config_from_args(args)
    log.debug("%s %s to %s (%s)", PROG, __version__, config.destination_url,
              config.cloud_provider)
    if args.test:
        store = open_store(config)
        try:
            store.check()
        finally:
            store.close()
        log.info("cloud storage %s is reachable", args.destination_url)
        return 0
    if hook.is_hook_script(os.environ):
        return hook.run_hook(args, store_config(args), os.environ)
    try:
        get_codec(args.compression)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    options = BackupOptions(
        server_name=args.server_name,
        store=config,
        conninfo=build_conninfo(args.host, args.port, args.user, args.dbname),
        compression=args.compression,
        jobs=args.jobs,
        max_archive_size=args.max_archive_size,
        min_chunk_size=args.min_chunk_size,
        immediate_checkpoint=args.immediate_checkpoint,
        backup_name=args.backup_name,
        max_bandwidth=args.max_bandwidth,
        keepalive_interval=args.keepalive_interval,
    )
    if snapshot is not None:
        run_snapshot_backup(options, snapshot)
        return 0
    run_backup(options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_verbosity(args)
    return report_failures(lambda: run(args), "backup was interrupted by the user")
