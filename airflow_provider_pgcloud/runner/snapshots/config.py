"""A snapshot backup's options and the checks Barman makes of them, in Barman's order and words.

The command line (runner/cli/snapshots.py) and the Airflow operators build a SnapshotConfig
here; the providers (providers.py) read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import PgCloudError
from ..storage.registry import backend
from ..values import optional_str

LOCK_EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class SnapshotConfigError(PgCloudError):
    """Snapshot options that do not fit together (exit 4, as Barman's ConfigurationException)."""


class SnapshotPreconditionError(PgCloudError):
    """The instance, its disks or their mounts are not as the options say (exit 4); found
    before the backup starts, so nothing is written."""


class SnapshotError(PgCloudError):
    """The compute API refused or failed an operation."""


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
            return backend(self.cloud_provider).snapshot_provider
        except ValueError:
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


OPTION_NAMES = (
    "gcp_project", "gcp_zone", "azure_subscription_id", "azure_resource_group",
    "azure_credential", "aws_profile", "aws_region", "aws_await_snapshots_timeout",
    "aws_snapshot_lock_mode", "aws_snapshot_lock_duration", "aws_snapshot_lock_cool_off_period",
    "aws_snapshot_lock_expiration_date",
)
_INT_OPTIONS = ("aws_await_snapshots_timeout", "aws_snapshot_lock_duration",
                "aws_snapshot_lock_cool_off_period")


def _given(value: Any) -> Any:
    """None for None, '' and the rendered 'None'/'null' of a template; text stripped."""
    return optional_str(value) if isinstance(value, str) else value


def config_from_values(
    cloud_provider: str, instance: Any, disks: Sequence[str], options: Any = None, *,
    compression: str | None = None, kms_key_name: str | None = None,
    tags: Sequence[tuple[str, str]] = (),
) -> SnapshotConfig | None:
    """The snapshot options of a caller other than the command line (an Airflow operator):
    `options` maps the command line's destinations (`gcp_project`, `aws_region`, ...) to
    values, possibly rendered as text. Checked as the command line's are; None when no
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
