"""Airflow connections -> the engine's objects: a libpq conninfo and an open object store.

This is the only place that reads Airflow connections. Secrets stay in memory: the PostgreSQL
password is returned apart from the conninfo (the keeper receives it on its stdin), and cloud
credentials travel inside the SDK session the official provider hook builds, never in a
`StoreConfig`, an XCom value, a log line or a process argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg2.extensions
from airflow.sdk import BaseHook

from ..runner.snapshots import SnapshotConfig, SnapshotProvider, open_provider
from ..runner.storage import ObjectStore, StoreConfig, backend, open_store
from ..runner.storage.registry import AZURE_BLOB, GOOGLE_STORAGE

DEFAULT_POSTGRES_CONN_ID = "pgcloud_postgres"
DEFAULT_AWS_CONN_ID = "aws_default"
DEFAULT_WASB_CONN_ID = "wasb_default"
DEFAULT_GCP_CONN_ID = "google_cloud_default"


# libpq keywords a connection's extra may set. Secrets (password, sslpassword) are never taken
# from the extra, and application_name is the engine's ("pgcloud_backup").
_LIBPQ_EXTRA = frozenset(
    {
        "hostaddr", "passfile", "channel_binding", "connect_timeout", "client_encoding",
        "options", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
        "tcp_user_timeout", "gssencmode", "sslmode", "sslnegotiation", "sslcompression",
        "sslcert", "sslkey", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
        "requirepeer", "require_auth", "ssl_min_protocol_version", "ssl_max_protocol_version",
        "krbsrvname", "gsslib", "gssdelegation", "service", "target_session_attrs",
        "load_balance_hosts",
    }
)


def postgres_conninfo(conn_id: str = DEFAULT_POSTGRES_CONN_ID) -> tuple[str, str | None]:
    """(libpq conninfo without the password, password) for an Airflow postgres connection.

    Mirrors PostgresHook.get_conn: host, port, login, schema (the database, default
    `postgres`) and libpq keywords from the extra; an `iam` connection gets its token as the
    password, as PostgresHook does.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id)
    conn = hook.get_connection(conn_id)
    login, password, port = conn.login, conn.password, conn.port
    extra = conn.extra_dejson
    if extra.get("iam"):
        login, password, port = hook.get_iam_token(conn)
    params: dict[str, Any] = {"dbname": conn.schema or "postgres"}
    for key, value in (("host", conn.host), ("port", port), ("user", login)):
        if value not in (None, ""):
            params[key] = str(value)
    params.update({k: str(v) for k, v in extra.items() if k in _LIBPQ_EXTRA and v is not None})
    return psycopg2.extensions.make_dsn(**params), password or None


class PgCloudHook(BaseHook):
    """Opens the engine's object store with the credentials of an Airflow connection.

    `cloud_provider` (in the StoreConfig) picks the connection and the official hook that
    reads it: `aws_conn_id` through S3Hook for aws-s3 (`endpoint_url` in its extra is
    honoured), `wasb_conn_id` through WasbHook for azure-blob-storage, `gcp_conn_id` through
    GCSHook for google-cloud-storage. The hook's SDK session or client goes to the engine's
    store as is, so the credentials never leave it.
    """

    def __init__(
        self,
        *,
        aws_conn_id: str | None = DEFAULT_AWS_CONN_ID,
        wasb_conn_id: str = DEFAULT_WASB_CONN_ID,
        gcp_conn_id: str = DEFAULT_GCP_CONN_ID,
    ) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.wasb_conn_id = wasb_conn_id
        self.gcp_conn_id = gcp_conn_id

    def open_store(self, config: StoreConfig) -> ObjectStore:
        """The engine's store for `config`, authenticated through the Airflow connection."""
        backend(config.cloud_provider)  # ValueError naming the known ones
        if config.cloud_provider == AZURE_BLOB:
            from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

            return open_store(config, service_client=WasbHook(self.wasb_conn_id).get_conn())
        if config.cloud_provider == GOOGLE_STORAGE:
            from airflow.providers.google.cloud.hooks.gcs import GCSHook

            return open_store(config, client=GCSHook(gcp_conn_id=self.gcp_conn_id).get_conn())
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3 = S3Hook(aws_conn_id=self.aws_conn_id)
        if config.endpoint_url is None:
            endpoint = s3.conn_config.get_service_endpoint_url("s3")
            config = dataclasses.replace(config, endpoint_url=endpoint or None)
        return open_store(config, session=s3.get_session())

    def snapshot_provider(self, config: SnapshotConfig) -> SnapshotProvider:
        """The engine's disk snapshot provider for `config`: EC2 through `aws_conn_id` (an
        `ec2` endpoint_url in its extra's service_config is honoured), Compute Engine with
        `gcp_conn_id`'s credentials; Azure authenticates with `azure_credential` (default:
        DefaultAzureCredential), as barman-cloud-backup does."""
        if config.provider == "aws":
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            ec2 = AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="ec2",
                              region_name=config.aws_region)
            return open_provider(config, client=ec2.get_conn())
        if config.provider == "gcp":
            from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
            from google.cloud import compute_v1

            from ..runner.snapshots.gcp import GcpClients

            credentials, _ = GoogleBaseHook(gcp_conn_id=self.gcp_conn_id) \
                .get_credentials_and_project_id()
            return open_provider(config, client=GcpClients(
                compute_v1.InstancesClient(credentials=credentials),
                compute_v1.DisksClient(credentials=credentials),
                compute_v1.SnapshotsClient(credentials=credentials),
            ))
        return open_provider(config)
