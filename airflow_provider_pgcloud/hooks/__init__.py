"""Airflow connection -> engine objects (object store, PostgreSQL conninfo)."""

from __future__ import annotations

from .pgcloud import (
    CLOUD_PROVIDERS,
    DEFAULT_AWS_CONN_ID,
    DEFAULT_GCP_CONN_ID,
    DEFAULT_POSTGRES_CONN_ID,
    DEFAULT_WASB_CONN_ID,
    PgCloudHook,
    postgres_conninfo,
)

__all__ = [
    "CLOUD_PROVIDERS",
    "DEFAULT_AWS_CONN_ID",
    "DEFAULT_GCP_CONN_ID",
    "DEFAULT_POSTGRES_CONN_ID",
    "DEFAULT_WASB_CONN_ID",
    "PgCloudHook",
    "postgres_conninfo",
]
