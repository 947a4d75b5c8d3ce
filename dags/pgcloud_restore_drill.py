"""Restore drill: restore every new backup on a drill host, start it, check it, report it.

Runs on every backup the example backup DAGs make (the AssetAlias `pgcloud_backups`): it drills
that backup, whatever its destination and server. Set PGCLOUD_DRILL_SCHEDULE (a cron
expression or preset, e.g. "@weekly") to drill the latest DONE backup of `source_url` on a
schedule instead, or trigger it by hand from its form.

Each run restores the backup into a scratch directory of the worker, fetches the WAL to make it
consistent, starts PostgreSQL of the backup's major (`pg_bin_dir`; `{major}` is replaced) on a
private socket, runs pg_amcheck on every database and the SQL checks given (each must succeed
and return true), then stops and removes everything. The task returns the figures (backup ID,
bytes, restore, replay and total recovery seconds, checks passed) and emits them on the Asset
`<source_url>/<server_name>/drill` through the AssetAlias `pgcloud_drills`. Any failing step
fails the task with its reason.

The worker needs the disk of one restored backup and the PostgreSQL binaries: set
PGCLOUD_DRILL_QUEUE to the queue of such a worker. PostgreSQL refuses to run as root: a worker
running as root runs it as `run_as`.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, AssetAlias, Param

from airflow_provider_pgcloud.operators import DEFAULT_ASSET_ALIAS, RestoreDrillOperator

with DAG(
    dag_id="pgcloud_restore_drill",
    description="Restore the newest backup, start it, check it with pg_amcheck, remove it",
    schedule=os.environ.get("PGCLOUD_DRILL_SCHEDULE") or [AssetAlias(DEFAULT_ASSET_ALIAS)],
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["pgcloud", "postgres", "restore", "drill"],
    doc_md=__doc__,
    params={
        "source_url": Param("s3://pgcloud-backups/postgres", type="string",
                            pattern=r"^[a-z0-9+.-]+://.+", title="Source URL",
                            description="Where the backups are (when not drilling the backup "
                            "that triggered the run)."),
        "server_name": Param("pg", type="string", minLength=1, title="Server name"),
        "backup_id": Param("latest", type="string", title="Backup",
                           description="A backup ID, a backup name, latest or oldest."),
        "cloud_provider": Param("aws-s3", type="string",
                                enum=["aws-s3", "azure-blob-storage", "google-cloud-storage"],
                                title="Cloud provider"),
        "pg_bin_dir": Param("/usr/lib/postgresql/{major}/bin", type="string",
                            title="PostgreSQL binaries",
                            description="postgres, pg_ctl and pg_amcheck of the backup's "
                            "major version; {major} is replaced by it."),
        "sql_checks": Param([], type="array", items={"type": "string"}, title="SQL checks",
                            description="Statements run in sql_database after pg_amcheck; "
                            "each must succeed and, if it returns a row, return true."),
        "sql_database": Param("postgres", type="string", title="Database of the SQL checks"),
        "run_as": Param("postgres", type="string", title="OS user for PostgreSQL",
                        description="Used when the worker runs as root."),
    },
) as dag:
    RestoreDrillOperator(
        task_id="restore_drill",
        source_url="{{ params.source_url }}",
        server_name="{{ params.server_name }}",
        backup_id="{{ params.backup_id }}",
        cloud_provider="{{ params.cloud_provider }}",
        pg_bin_dir="{{ params.pg_bin_dir }}",
        sql_checks="{{ params.sql_checks }}",
        sql_database="{{ params.sql_database }}",
        run_as="{{ params.run_as }}",
        queue=os.environ.get("PGCLOUD_DRILL_QUEUE") or None,
    )
