"""Daily PostgreSQL base backup to cloud object storage, in Barman's cloud layout.

Connections: `pgcloud_postgres` (the cluster to back up; its password never leaves the
connection) and, by cloud provider, `aws_default` (S3 or an S3-compatible store: put
`endpoint_url` in its extra), `wasb_default` (Azure Blob Storage) or `google_cloud_default`.
Trigger it by hand from the UI form, or from the command line:

    airflow dags test pgcloud_backup -c '{"destination_url": "s3://bucket/path",
        "server_name": "pg", "compression": "gzip", "immediate_checkpoint": true}'

A successful run emits an asset event for `Asset("<destination_url>/<server_name>")` through the
AssetAlias `pgcloud_backups`: schedule restore tests or reports on either.

Every task reads PGDATA or talks to the backup's session keeper, so all of them must run on the
database host: set PGCLOUD_QUEUE to the queue its worker listens on. To back up from any worker
instead, over the replication protocol, use `source: streaming` in dags/pgcloud_fleet.py.
Barman restores the result: `barman-cloud-restore s3://bucket/path pg <backup_id> <dir>`.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Param

from airflow_provider_pgcloud.taskgroup import pg_cloud_backup_group

with DAG(
    dag_id="pgcloud_backup",
    description="PostgreSQL base backup to cloud object storage (Barman cloud layout)",
    schedule="@daily",
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["pgcloud", "postgres", "backup"],
    doc_md=__doc__,
    params={
        "destination_url": Param(
            "s3://pgcloud-backups/postgres",
            type="string",
            pattern=r"^[a-z0-9+.-]+://.+",
            title="Destination URL",
            description="Where the backup goes, as for barman-cloud-backup: s3://BUCKET/PATH "
            "(S3-compatible stores too: set endpoint_url in the aws_default connection), "
            "https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH or gs://BUCKET/PATH.",
        ),
        "server_name": Param(
            "pg",
            type="string",
            minLength=1,
            title="Server name",
            description="The server's name in the Barman catalog: backups go under "
            "DESTINATION_URL/SERVER_NAME/base/.",
        ),
        "backup_name": Param(
            None,
            type=["null", "string"],
            title="Backup name",
            description="Optional friendly name to restore this backup by (instead of its ID).",
        ),
        "tags": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Tags",
            description="Object tags for every uploaded file: one KEY,VALUE per line "
            "(at most 10).",
        ),
        "cloud_provider": Param(
            "aws-s3",
            type="string",
            enum=["aws-s3", "azure-blob-storage", "google-cloud-storage"],
            title="Cloud provider",
            description="The object store's API, and the connection that authenticates: "
            "aws_default, wasb_default or google_cloud_default.",
        ),
        "compression": Param(
            "none",
            type="string",
            enum=["none", "gzip", "bzip2", "snappy", "lz4", "zstd"],
            title="Compression",
            description="Codec for the archive objects; Barman restores all of them.",
        ),
        "jobs": Param(
            2,
            type="integer",
            minimum=1,
            title="Jobs",
            description="Parallelism the backup is planned for (counted up to the database "
            "host's cores): the data is cut into one archive object per job, or about four per "
            "job on clusters larger than a few GiB, each uploaded by its own task and each "
            "about the same work.",
        ),
        "max_archive_size": Param(
            "100GB",
            type="string",
            pattern=r"^[0-9]+(\.[0-9]+)?\s*([KMGTPEZYkmgtpezy][Ii]?)?[Bb]?$",
            title="Maximum archive size",
            description="Largest archive object, in Barman's notation (8MB = 8 MiB).",
        ),
        "immediate_checkpoint": Param(
            False,
            type="boolean",
            title="Immediate checkpoint",
            description="Start with a fast checkpoint instead of waiting for a spread one.",
        ),
        "retention_policy": Param(
            None,
            type=["null", "string"],
            title="Retention policy",
            description="After a DONE backup, delete the backups this policy makes obsolete "
            "and the WAL none needs, as barman-cloud-backup-delete does: REDUNDANCY 7 or "
            "RECOVERY WINDOW OF 4 WEEKS. Empty: delete nothing.",
        ),
    },
) as dag:
    pg_cloud_backup_group(
        destination_url="{{ params.destination_url }}",
        server_name="{{ params.server_name }}",
        backup_name="{{ params.backup_name }}",
        tags="{{ params.tags }}",
        cloud_provider="{{ params.cloud_provider }}",
        compression="{{ params.compression }}",
        jobs="{{ params.jobs }}",
        max_archive_size="{{ params.max_archive_size }}",
        immediate_checkpoint="{{ params.immediate_checkpoint }}",
        retention_policy="{{ params.retention_policy }}",
        queue=os.environ.get("PGCLOUD_QUEUE") or None,
        session_deadline=dt.timedelta(hours=23),
    )
