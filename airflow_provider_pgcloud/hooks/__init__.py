"""Airflow connection -> engine objects (object store, PostgreSQL conninfo)."""

from __future__ import annotations

from .. import _need_airflow  # noqa: F401  (first: a clear error without Airflow)

# isort: split

from .pgcloud import (
    DEFAULT_AWS_CONN_ID,
    DEFAULT_GCP_CONN_ID,
    DEFAULT_POSTGRES_CONN_ID,
    DEFAULT_WASB_CONN_ID,
    PgCloudHook,
    postgres_conninfo,
)

__all__ = [
    "DEFAULT_AWS_CONN_ID",
    "DEFAULT_GCP_CONN_ID",
    "DEFAULT_POSTGRES_CONN_ID",
    "DEFAULT_WASB_CONN_ID",
    "PgCloudHook",
    "postgres_conninfo",
]
