"""barman-cloud-backup's snapshot options on the command line, and the SnapshotConfig they make."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from ..snapshots.config import (
    LOCK_EXPIRATION_FORMAT,
    SnapshotConfig,
    check_general,
    is_snapshot_backup,
)
from .common import positive


def _in_range(low: int, high: int, name: str, unit: str) -> Any:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a valid input") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be between {low} and {high:,} {unit}."
            )
        return value

    return check


def _expiration_date(text: str) -> str:
    try:
        dt.datetime.strptime(text, LOCK_EXPIRATION_FORMAT)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Invalid date: '{text}'. Expected format is '{LOCK_EXPIRATION_FORMAT}'."
        ) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """barman-cloud-backup's snapshot options (with their deprecated spellings)."""
    group = parser.add_argument_group(
        "snapshot backups (disk snapshots instead of archive objects)"
    )
    group.add_argument("--snapshot-instance",
                       help="instance where the disks to be backed up as snapshots are attached")
    group.add_argument("--snapshot-disk", metavar="NAME", action="append", default=[],
                       dest="snapshot_disks",
                       help="name of a disk from which snapshots should be taken (repeatable)")
    group.add_argument("--gcp-project", "--snapshot-gcp-project", dest="gcp_project",
                       help="GCP project under which disk snapshots should be stored "
                       "(--snapshot-gcp-project is deprecated)")
    group.add_argument("--gcp-zone", "--snapshot-zone", dest="gcp_zone",
                       help="zone of the disks from which snapshots should be taken "
                       "(--snapshot-zone is deprecated)")
    group.add_argument("--azure-subscription-id",
                       help="the ID of the Azure subscription which owns the instance and "
                       "disks named by --snapshot-instance and --snapshot-disk")
    group.add_argument("--azure-resource-group",
                       help="the Azure resource group of the instance and disks")
    group.add_argument("--aws-region",
                       help="the AWS region of the EC2 instance and volumes (default: the "
                       "profile's region)")
    group.add_argument("--aws-await-snapshots-timeout", type=positive, default=3600,
                       help="seconds to wait for the EC2 snapshots to complete "
                       "(default: 3600)")
    group.add_argument("--aws-snapshot-lock-mode", choices=["governance", "compliance"],
                       help="lock the EC2 snapshots in this mode")
    group.add_argument("--aws-snapshot-lock-cool-off-period",
                       type=_in_range(1, 72, "aws_snapshot_lock_cool_off_period", "hours"),
                       help="cool-off period in hours (1-72) of a compliance-mode lock")
    target = group.add_mutually_exclusive_group()
    target.add_argument("--aws-snapshot-lock-expiration-date", type=_expiration_date,
                        help="when the snapshot lock expires, as YYYY-MM-DDThh:mm:ss.sssZ")
    target.add_argument("--aws-snapshot-lock-duration",
                        type=_in_range(1, 36500, "aws_snapshot_lock_duration", "days"),
                        help="days (1-36500) for which the snapshots stay locked")


def config_from_args(args: argparse.Namespace) -> SnapshotConfig | None:
    """The snapshot options of a parsed command line, checked as Barman checks them first;
    None when the command line asks for no snapshot backup."""
    config = SnapshotConfig(
        cloud_provider=args.cloud_provider,
        instance=args.snapshot_instance,
        disks=tuple(args.snapshot_disks or ()),
        gcp_project=args.gcp_project,
        gcp_zone=args.gcp_zone,
        azure_subscription_id=args.azure_subscription_id,
        azure_resource_group=args.azure_resource_group,
        azure_credential=args.azure_credential,
        aws_profile=args.aws_profile,
        aws_region=args.aws_region,
        aws_await_snapshots_timeout=args.aws_await_snapshots_timeout,
        aws_snapshot_lock_mode=args.aws_snapshot_lock_mode,
        aws_snapshot_lock_duration=args.aws_snapshot_lock_duration,
        aws_snapshot_lock_cool_off_period=args.aws_snapshot_lock_cool_off_period,
        aws_snapshot_lock_expiration_date=args.aws_snapshot_lock_expiration_date,
        tags=tuple(args.tags),
    )
    check_general(config, args.compression, args.kms_key_name)
    return config if is_snapshot_backup(config.instance, config.disks) else None
