"""Object stores behind one protocol; backends are imported only when used."""

from __future__ import annotations

from .base import MultipartUpload, ObjectStore, StoreConfig

PROVIDERS = ("aws-s3", "azure-blob-storage", "google-cloud-storage")


def open_store(config: StoreConfig, **credentials: object) -> ObjectStore:
    """Open the store named by `config.cloud_provider`.

    `credentials` lets a caller that already holds a session (an Airflow hook) pass it through;
    the runner passes nothing and the SDK reads the environment, as Barman does.
    """
    if config.cloud_provider == "aws-s3":
        from .s3 import S3Store

        return S3Store(config, **credentials)  # type: ignore[arg-type]
    if config.cloud_provider == "azure-blob-storage":
        from .azure import AzureStore

        return AzureStore(config, **credentials)  # type: ignore[arg-type]
    if config.cloud_provider == "google-cloud-storage":
        from .gcs import GCSStore

        return GCSStore(config, **credentials)  # type: ignore[arg-type]
    raise NotImplementedError(f"cloud provider {config.cloud_provider} is not supported yet")


__all__ = ["PROVIDERS", "MultipartUpload", "ObjectStore", "StoreConfig", "open_store"]
