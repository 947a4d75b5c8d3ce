"""Daily PostgreSQL backup made of cloud disk snapshots, as barman-cloud-backup --snapshot-* takes.

Between pg_backup_start and pg_backup_stop each named disk of the database VM is snapshotted
through the cloud's compute API (EC2, Compute Engine or Azure, after the cloud provider); the
object store receives only `backup_label` and `backup.info` (with `snapshots_info`), so
`barman-cloud-restore --snapshot-recovery-instance` and `barman-cloud-backup-delete` handle the
backup. PGDATA and every tablespace must be on the snapshotted disks.

Connections: `pgcloud_postgres` (the cluster), and by cloud provider `aws_default` (S3 and EC2;
an `ec2` endpoint_url may go in its extra's service_config), `google_cloud_default` (GCS and
Compute Engine) or `wasb_default` (the blob store; Azure Compute authenticates with
DefaultAzureCredential, e.g. the VM's managed identity). Trigger it from the UI form, or:

    airflow dags test pgcloud_snapshot_backup -c '{"destination_url": "s3://bucket/path",
        "server_name": "pg", "snapshot_instance": "pg-vm", "snapshot_disks": ["pgdata"],
        "aws_region": "eu-west-1"}'

Every task talks to the backup's session keeper and reads the host's mount table, so all of
them must run on the database VM: set PGCLOUD_QUEUE to the queue its worker listens on.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Param

from airflow_provider_pgcloud.taskgroup import pg_cloud_backup_group


def _optional(title: str, description: str) -> Param:
    return Param(None, type=["null", "string"], title=title, description=description)


with DAG(
    dag_id="pgcloud_snapshot_backup",
    description="PostgreSQL backup as cloud disk snapshots (Barman cloud layout)",
    schedule="@daily",
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["pgcloud", "postgres", "backup", "snapshot"],
    doc_md=__doc__,
    params={
        "destination_url": Param(
            "s3://pgcloud-backups/postgres",
            type="string",
            pattern=r"^[a-z0-9+.-]+://.+",
            title="Destination URL",
            description="Where backup_label and backup.info go, as for barman-cloud-backup: "
            "s3://BUCKET/PATH, https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH or "
            "gs://BUCKET/PATH.",
        ),
        "server_name": Param(
            "pg",
            type="string",
            minLength=1,
            title="Server name",
            description="The server's name in the Barman catalog: backups go under "
            "DESTINATION_URL/SERVER_NAME/base/.",
        ),
        "backup_name": _optional(
            "Backup name", "Optional friendly name to restore this backup by (instead of its ID)."
        ),
        "cloud_provider": Param(
            "aws-s3",
            type="string",
            enum=["aws-s3", "azure-blob-storage", "google-cloud-storage"],
            title="Cloud provider",
            description="The object store, and with it the compute API that takes the "
            "snapshots: EC2, Azure Compute or Compute Engine.",
        ),
        "snapshot_instance": Param(
            "pg-vm",
            type="string",
            minLength=1,
            title="Instance",
            description="The VM the disks are attached to: an EC2 instance ID or Name tag, a "
            "Compute Engine or Azure VM name.",
        ),
        "snapshot_disks": Param(
            ["pgdata"],
            type="array",
            minItems=1,
            items={"type": "string"},
            title="Disks",
            description="The disks to snapshot, one per line: EBS volume IDs or Name tags, "
            "Compute Engine or Azure disk names. PGDATA and tablespaces must be on them.",
        ),
        "aws_region": _optional(
            "AWS region", "EC2: the region of the instance and volumes (default: the "
            "connection's)."
        ),
        "gcp_project": _optional(
            "GCP project", "Compute Engine: the project the snapshots are stored under."
        ),
        "gcp_zone": _optional("GCP zone", "Compute Engine: the zone of the instance and disks."),
        "azure_subscription_id": _optional(
            "Azure subscription", "Azure: the subscription of the VM and disks."
        ),
        "azure_resource_group": _optional(
            "Azure resource group", "Azure: the resource group of the VM and disks."
        ),
        "immediate_checkpoint": Param(
            True,
            type="boolean",
            title="Immediate checkpoint",
            description="Start with a fast checkpoint instead of waiting for a spread one.",
        ),
    },
) as dag:
    pg_cloud_backup_group(
        destination_url="{{ params.destination_url }}",
        server_name="{{ params.server_name }}",
        backup_name="{{ params.backup_name }}",
        cloud_provider="{{ params.cloud_provider }}",
        immediate_checkpoint="{{ params.immediate_checkpoint }}",
        snapshot_instance="{{ params.snapshot_instance }}",
        snapshot_disks="{{ params.snapshot_disks }}",
        snapshot_options={
            "aws_region": "{{ params.aws_region }}",
            "gcp_project": "{{ params.gcp_project }}",
            "gcp_zone": "{{ params.gcp_zone }}",
            "azure_subscription_id": "{{ params.azure_subscription_id }}",
            "azure_resource_group": "{{ params.azure_resource_group }}",
        },
        queue=os.environ.get("PGCLOUD_QUEUE") or None,
        session_deadline=dt.timedelta(hours=23),
    )
