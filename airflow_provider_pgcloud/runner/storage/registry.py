"""The one list of storage backends: the names `--cloud-provider` takes, and where each lives.

The command line, the Airflow hook and the snapshot code read provider names from here. A
backend's module is imported only when a store of its kind is opened, so a database host needs
only the SDK (and the pip extra) of the store it uses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import ObjectStore, StoreConfig


@dataclass(frozen=True)
class Backend:
    name: str  # the --cloud-provider value, as Barman spells it
    module: str  # the module of runner/storage/ that implements it
    store_class: str
    snapshot_provider: str  # the `provider` of Barman's snapshots_info for this cloud
    extra: str | None  # the pip extra that installs its SDK (None: a core dependency)


AWS_S3 = "aws-s3"
AZURE_BLOB = "azure-blob-storage"
GOOGLE_STORAGE = "google-cloud-storage"

BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(AWS_S3, "s3", "S3Store", "aws", None),
        Backend(AZURE_BLOB, "azure", "AzureStore", "azure", "azure"),
        Backend(GOOGLE_STORAGE, "gcs", "GCSStore", "gcp", "google"),
    )
}
PROVIDERS = tuple(BACKENDS)


def backend(cloud_provider: str) -> Backend:
    """The backend named `cloud_provider`; ValueError naming the known ones otherwise."""
    try:
        return BACKENDS[cloud_provider]
    except KeyError:
        raise ValueError(
            f"unknown cloud_provider {cloud_provider!r}: expected one of {', '.join(PROVIDERS)}"
        ) from None


def open_store(config: StoreConfig, **credentials: object) -> ObjectStore:
    """Open the store named by `config.cloud_provider`.

    `credentials` lets a caller that already holds a session (an Airflow hook) pass it through;
    the runner passes nothing and the SDK reads the environment, as Barman does.
    """
    chosen = backend(config.cloud_provider)
    module = importlib.import_module(f"{__package__}.{chosen.module}")
    store: ObjectStore = getattr(module, chosen.store_class)(config, **credentials)
    return store
