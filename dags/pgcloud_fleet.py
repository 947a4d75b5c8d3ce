"""One backup DAG per PostgreSQL cluster of a fleet, from a YAML file.

The file is PGCLOUD_FLEET_FILE, or `pgcloud_fleet.yaml` beside this file (no DAGs without
either: copy `pgcloud_fleet.example.yaml` to start); its format is in
`airflow_provider_pgcloud/fleet.py`. Each entry becomes the DAG `pgcloud_fleet_<server_name>`,
with the entry's schedule, source, queue, compression and jobs. A wrong file is a DAG import
error naming the entry and the key.

Where the tasks run: a `source: local` entry reads the cluster's data directory, so its `queue`
must be one that only a worker on the database host listens to. A `source: streaming` entry
reads nothing but its connection (a role with REPLICATION, allowed by an ordinary pg_hba.conf
line for the database), so any worker that can reach the server can take it.

A successful run emits an asset event for `Asset("<destination_url>/<server_name>")` through the
AssetAlias `pgcloud_backups`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow.sdk import DAG

from airflow_provider_pgcloud.fleet import read_fleet
from airflow_provider_pgcloud.taskgroup import pg_cloud_backup_group

DEFAULT_FLEET_FILE = Path(__file__).with_name("pgcloud_fleet.yaml")
FLEET_FILE = os.environ.get("PGCLOUD_FLEET_FILE") or (
    str(DEFAULT_FLEET_FILE) if DEFAULT_FLEET_FILE.exists() else None)

for cluster in read_fleet(FLEET_FILE) if FLEET_FILE else []:
    with DAG(
        dag_id=cluster.dag_id,
        description=f"Base backup of {cluster.server_name} ({cluster.source} source)",
        schedule=cluster.schedule,
        start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["pgcloud", "postgres", "backup", "fleet"],
        doc_md=__doc__,
    ) as dag:
        pg_cloud_backup_group(**cluster.group_arguments())
    globals()[cluster.dag_id] = dag
