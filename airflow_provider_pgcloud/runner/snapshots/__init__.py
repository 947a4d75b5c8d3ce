"""Disk snapshot backups: options, checks, and the provider interface behind aws/gcp/azure.

A snapshot backup takes no copy of the files: between pg_backup_start and pg_backup_stop each
named disk of the database host is snapshotted through the cloud's compute API, and only
`backup_label` and `backup.info` (with `snapshots_info`) go to the object store, in the shape
Barman's `barman-cloud-restore` and `barman-cloud-backup-delete` read.

The provider modules import their SDK only when opened, so a host needs only the one it uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..argtypes import positive
from ..errors import BackupFailed, PgCloudError
from .mounts import Mount, MountTable

log = logging.getLogger("pgcloud")

PROVIDER_OF_STORE = {"aws-s3": "aws", "google-cloud-storage": "gcp", "azure-blob-storage": "azure"}
LOCK_EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class SnapshotConfigError(PgCloudError):
    """Snapshot options that do not fit together (exit 4, as Barman's ConfigurationException)."""


class SnapshotPreconditionError(PgCloudError):
    """The instance, its disks or their mounts are not as the options say (exit 4); found
    before the backup starts, so nothing is written."""


class SnapshotError(PgCloudError):
    """The compute API refused or failed an operation."""


def missing_module(name: str) -> BackupFailed:
    """Barman exits 1 with this message when an optional SDK is not installed."""
    return BackupFailed(f"Missing required python module: {name}")


@dataclass(frozen=True)
class SnapshotConfig:
    """The snapshot options of one backup; JSON-able, no secrets (credentials come from the
    environment, a profile, or the cloud's default chain, as for the object store)."""

    cloud_provider: str
    instance: str | None = None
    disks: tuple[str, ...] = ()
    gcp_project: str | None = None
    gcp_zone: str | None = None
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_credential: str | None = None
    aws_profile: str | None = None
    aws_region: str | None = None
    aws_await_snapshots_timeout: int = 3600
    aws_snapshot_lock_mode: str | None = None
    aws_snapshot_lock_duration: int | None = None
    aws_snapshot_lock_cool_off_period: int | None = None
    aws_snapshot_lock_expiration_date: str | None = None  # LOCK_EXPIRATION_FORMAT
    tags: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def provider(self) -> str:
        """`aws`, `gcp` or `azure`: the `provider` of Barman's snapshots_info."""
        try:
            return PROVIDER_OF_STORE[self.cloud_provider]
        except KeyError:
            raise SnapshotConfigError(
                f"No snapshot provider for cloud provider: {self.cloud_provider}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["disks"] = list(self.disks)
        data["tags"] = [list(tag) for tag in self.tags]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotConfig:
        values = dict(data)
        values["disks"] = tuple(values.get("disks") or ())
        values["tags"] = tuple(tuple(tag) for tag in values.get("tags") or ())
        return cls(**values)


# --- validation, in Barman's order and words ----------------------------------------------

def is_snapshot_backup(instance: str | None, disks: Sequence[str] | None) -> bool:
    return bool(instance) or bool(disks)


def check_general(
    config: SnapshotConfig, compression: str | None, kms_key_name: str | None = None
) -> None:
    """The checks Barman makes before anything else (even `-t`)."""
    if is_snapshot_backup(config.instance, config.disks) and compression:
        raise SnapshotConfigError("Compression options cannot be used with snapshot backups")
    if config.aws_snapshot_lock_mode == "governance" and config.aws_snapshot_lock_cool_off_period:
        raise SnapshotConfigError(
            "'aws_snapshot_lock_mode' = 'governance' cannot be used with "
            "'aws_snapshot_lock_cool_off_period'"
        )
    if config.cloud_provider == "google-cloud-storage" and kms_key_name and config.instance:
        raise SnapshotConfigError("KMS key cannot be specified for snapshot backups")


def check_provider_options(config: SnapshotConfig) -> None:
    """The checks Barman makes when it opens the snapshot provider: the account option first,
    then every option the provider needs, named by its attribute name."""
    provider = config.provider
    if provider == "gcp" and config.gcp_project is None:
        raise SnapshotConfigError(
            "--gcp-project option must be set for snapshot backups when cloud provider is "
            "google-cloud-storage"
        )
    if provider == "azure" and config.azure_subscription_id is None:
        raise SnapshotConfigError(
            "--azure-subscription-id option must be set for snapshot backups when cloud "
            "provider is azure-blob-storage"
        )
    required = {
        "snapshot_disks": config.disks,
        "snapshot_instance": config.instance,
    }
    if provider == "gcp":
        required["gcp_zone"] = config.gcp_zone
    if provider == "azure":
        required["azure_resource_group"] = config.azure_resource_group
    missing = [name for name, value in required.items() if not value]
    if missing:
        raise SnapshotConfigError(
            "Incomplete options for snapshot backup - missing: " + ", ".join(missing)
        )


# --- the provider interface ---------------------------------------------------------------

@dataclass
class Volume:
    """A disk attached to the instance, as the compute API describes it, and where this host
    has it mounted once `resolve` has run."""

    name: str  # as given with --snapshot-disk
    devices: tuple[str, ...]  # the host's names for it, best first
    attrs: dict[str, Any] = field(default_factory=dict)  # the provider's own facts
    problem: str | None = None  # why it cannot be found on this host, if known already
    mount: Mount | None = None

    def resolve(self, mounts: MountTable) -> Mount:
        if self.problem:
            raise SnapshotError(self.problem)
        for device in self.devices:
            found = mounts.find_device(device)
            if found is not None:
                self.mount = found
                return found
        raise SnapshotError(
            f"Could not find device {' or '.join(self.devices) or self.name} at any mount point"
        )

    def mount_metadata(self) -> dict[str, Any]:
        """snapshots_info's `mount` entry, as Barman writes it."""
        return {
            "mount_options": self.mount.options if self.mount else None,
            "mount_point": self.mount.mount_point if self.mount else None,
        }


class SnapshotProvider(Protocol):
    """What a snapshot backup needs from a cloud's compute API."""

    name: str

    def instance_exists(self, instance: str) -> bool: ...

    def attached_volumes(
        self, instance: str, disks: Sequence[str], fail_on_missing: bool = True
    ) -> dict[str, Volume]:
        """The named disks attached to the instance, keyed by the name given; with
        `fail_on_missing`, raise SnapshotError if any is not attached."""
        ...

    def take_snapshots(
        self, backup_id: str, instance: str, volumes: dict[str, Volume]
    ) -> dict[str, Any]:
        """Snapshot every volume (named `<disk>-<backup_id lower-cased>`), wait until they are
        complete, and return `snapshots_info` exactly as Barman stores it."""
        ...


def open_provider(config: SnapshotConfig, client: Any = None) -> SnapshotProvider:
    """The provider for `config.cloud_provider`.

    `client` is the SDK client a caller already holds (an Airflow hook's, with a connection's
    credentials): an EC2 client, a `gcp.GcpClients`, or a ComputeManagementClient. Without
    one it is made from the environment (the SDK's default credential chain), as Barman does.
    """
    provider = config.provider
    if provider == "aws":
        from .aws import AwsProvider

        return AwsProvider(
            profile=config.aws_profile, region=config.aws_region,
            await_timeout=config.aws_await_snapshots_timeout,
            lock_mode=config.aws_snapshot_lock_mode,
            lock_duration=config.aws_snapshot_lock_duration,
            lock_cool_off_period=config.aws_snapshot_lock_cool_off_period,
            lock_expiration_date=config.aws_snapshot_lock_expiration_date,
            tags=config.tags, client=client,
        )
    if provider == "gcp":
        from .gcp import GcpProvider

        assert config.gcp_project is not None
        return GcpProvider(config.gcp_project, config.gcp_zone, clients=client)
    from .azure import AzureProvider

    assert config.azure_subscription_id is not None
    return AzureProvider(
        config.azure_subscription_id, config.azure_resource_group,
        credential=config.azure_credential, client=client,
    )


def snapshot_name(disk: str, backup_id: str) -> str:
    """Barman's name, which barman-cloud-backup-delete checks before deleting a snapshot."""
    return f"{disk}-{backup_id.lower()}"


def check_all_attached(
    instance: str, disks: Sequence[str], volumes: Mapping[str, Volume],
    lookup: Callable[[str], object] | None = None,
) -> None:
    """Raise Barman's "Disks not attached" error for any of `disks` missing from `volumes`.

    `lookup` (the provider's disk lookup) runs first on each missing disk, so that a disk
    that does not exist at all is reported as such rather than as unattached."""
    unattached = [disk for disk in disks if disk not in volumes]
    if lookup is not None:
        for disk in unattached:
            lookup(disk)
    if unattached:
        raise SnapshotError(f"Disks not attached to instance {instance}: {', '.join(unattached)}")


def find_volumes(
    provider: SnapshotProvider, instance: str, disks: Sequence[str], mounts: MountTable
) -> dict[str, Volume]:
    """Barman's preconditions: the instance exists, every disk is attached to it and mounted
    on this host. Returns the volumes with their mounts resolved."""
    if not provider.instance_exists(instance):
        raise SnapshotPreconditionError(f"Cannot find compute instance {instance}")
    volumes = provider.attached_volumes(instance, disks, fail_on_missing=False)
    missing = [disk for disk in disks if disk not in volumes]
    if missing:
        raise SnapshotPreconditionError(
            f"Cannot find disks attached to compute instance {instance}: {', '.join(missing)}"
        )
    unmounted = []
    for disk in disks:
        try:
            volumes[disk].resolve(mounts)
        except SnapshotError as exc:
            log.warning("Error resolving mount point: %s", exc)
            unmounted.append(disk)
    if unmounted:
        raise SnapshotPreconditionError(
            f"Cannot find disks mounted on compute instance {instance}: {', '.join(unmounted)}"
        )
    return volumes


def check_cluster_on_disks(
    volumes: dict[str, Volume], locations: Iterable[tuple[str, str]], mounts: MountTable
) -> None:
    """Every location (PGDATA, each tablespace) must be on a filesystem of a snapshotted
    disk, or the snapshots would not hold the cluster."""
    disk_mounts = [v.mount for v in volumes.values() if v.mount is not None]
    where = ", ".join(
        f"{name} at {v.mount.mount_point}" for name, v in volumes.items() if v.mount
    )
    for what, path in locations:
        mount = mounts.containing(path)
        if mount is None or not any(mounts.same_filesystem(mount, d) for d in disk_mounts):
            on = f" (it is on {mount.source} mounted at {mount.mount_point})" if mount else ""
            raise SnapshotPreconditionError(
                f"{what} {path} is not on any of the snapshotted disks ({where}){on}"
            )


# --- the command line ---------------------------------------------------------------------

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
        azure_credential=getattr(args, "azure_credential", None),
        aws_profile=getattr(args, "aws_profile", None),
        aws_region=args.aws_region,
        aws_await_snapshots_timeout=args.aws_await_snapshots_timeout,
        aws_snapshot_lock_mode=args.aws_snapshot_lock_mode,
        aws_snapshot_lock_duration=args.aws_snapshot_lock_duration,
        aws_snapshot_lock_cool_off_period=args.aws_snapshot_lock_cool_off_period,
        aws_snapshot_lock_expiration_date=args.aws_snapshot_lock_expiration_date,
        tags=tuple(getattr(args, "tags", None) or ()),
    )
    check_general(config, args.compression, getattr(args, "kms_key_name", None))
    return config if is_snapshot_backup(config.instance, config.disks) else None


OPTION_NAMES = (
    "gcp_project", "gcp_zone", "azure_subscription_id", "azure_resource_group",
    "azure_credential", "aws_profile", "aws_region", "aws_await_snapshots_timeout",
    "aws_snapshot_lock_mode", "aws_snapshot_lock_duration", "aws_snapshot_lock_cool_off_period",
    "aws_snapshot_lock_expiration_date",
)
_INT_OPTIONS = ("aws_await_snapshots_timeout", "aws_snapshot_lock_duration",
                "aws_snapshot_lock_cool_off_period")


def _given(value: Any) -> Any:
    """None for None, '' and the rendered 'None'/'null' of a template."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return value.strip() if isinstance(value, str) else value


def config_from_values(
    cloud_provider: str, instance: Any, disks: Sequence[str], options: Any = None, *,
    compression: str | None = None, kms_key_name: str | None = None,
    tags: Sequence[tuple[str, str]] = (),
) -> SnapshotConfig | None:
    """The snapshot options of a caller other than the command line (an Airflow operator):
    `options` maps the command line's destinations (`gcp_project`, `aws_region`, ...) to
    values, possibly rendered as text. Checked as `config_from_args` checks; None when no
    snapshot backup is asked for."""
    values = {key: _given(value) for key, value in dict(options or {}).items()}
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise SnapshotConfigError(
            f"unknown snapshot options: {', '.join(unknown)} (known: {', '.join(OPTION_NAMES)})"
        )
    for key in _INT_OPTIONS:
        if values.get(key) is not None:
            try:
                values[key] = int(values[key])
            except (TypeError, ValueError):
                raise SnapshotConfigError(f"{key} must be an integer, not {values[key]!r}") \
                    from None
    if values.get("aws_await_snapshots_timeout") is None:
        values.pop("aws_await_snapshots_timeout", None)
    config = SnapshotConfig(
        cloud_provider=cloud_provider, instance=_given(instance),
        disks=tuple(d for d in (_given(disk) for disk in disks) if d), tags=tuple(tags),
        **values,
    )
    check_general(config, compression, kms_key_name)
    return config if is_snapshot_backup(config.instance, config.disks) else None


__all__ = [
    "Mount",
    "MountTable",
    "SnapshotConfig",
    "SnapshotConfigError",
    "SnapshotError",
    "SnapshotPreconditionError",
    "SnapshotProvider",
    "Volume",
    "add_arguments",
    "check_cluster_on_disks",
    "check_general",
    "check_provider_options",
    "config_from_args",
    "config_from_values",
    "find_volumes",
    "open_provider",
    "snapshot_name",
]
