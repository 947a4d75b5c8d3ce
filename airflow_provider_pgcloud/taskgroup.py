"""`pg_cloud_backup_group(...)`: a PostgreSQL backup in any DAG, in one line.

    with DAG(...):
        pg_cloud_backup_group(destination_url="s3://bucket/path", server_name="pg")

builds

    start_backup (setup) -> upload_chunk.expand(chunk=...) [-> take_disk_snapshots]
        -> stop_backup_and_upload_label (teardown, on_failure_fail_dagrun)

(take_disk_snapshots only in a snapshot backup, when `snapshot_instance` is given.)

Every task of the group reads PGDATA or talks to the backup's keeper over a local socket, so
all of them must run on the database host: pass the `queue` its worker listens on.
"""

from __future__ import annotations

from . import _need_airflow  # noqa: F401  (first: a clear error without Airflow)

# isort: split

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk import TaskGroup, XComArg

from .hooks import (
    DEFAULT_AWS_CONN_ID,
    DEFAULT_GCP_CONN_ID,
    DEFAULT_POSTGRES_CONN_ID,
    DEFAULT_WASB_CONN_ID,
)
from .operators import (
    CHUNK_LABEL,
    DEFAULT_ASSET_ALIAS,
    STATE_KEY,
    ApplyRetentionOperator,
    EndStreamedBackupOperator,
    PgCloudBackupOperator,
    StartBackupOperator,
    StopBackupAndUploadLabelOperator,
    TakeDiskSnapshotsOperator,
    UploadTablespaceChunksOperator,
    VerifyBackupOperator,
)
from .runner.session import DEFAULT_DEADLINE_SECONDS
from .runner.sources import check_source


def pg_cloud_backup_group(
    destination_url: str,
    server_name: str,
    *,
    group_id: str = "pgcloud_backup",
    postgres_conn_id: str = DEFAULT_POSTGRES_CONN_ID,
    aws_conn_id: str | None = DEFAULT_AWS_CONN_ID,
    wasb_conn_id: str = DEFAULT_WASB_CONN_ID,
    gcp_conn_id: str = DEFAULT_GCP_CONN_ID,
    queue: str | None = None,
    session_deadline: dt.timedelta | float = DEFAULT_DEADLINE_SECONDS,
    upload_retries: int = 2,
    upload_retry_delay: dt.timedelta = dt.timedelta(seconds=30),
    max_parallel_uploads: int | None = None,
    snapshot_instance: str | None = None,
    snapshot_disks: Sequence[str] | str | None = None,
    snapshot_options: dict[str, Any] | None = None,
    asset_alias: str | None = DEFAULT_ASSET_ALIAS,
    verify: bool = False,
    source: str = "local",
    retention_policy: str | None = None,
    minimum_redundancy: int | str = 0,
    **backup_options: Any,
) -> TaskGroup:
    """Add a backup of the `postgres_conn_id` cluster to `destination_url` to the current DAG.

    `backup_options` are StartBackupOperator's (all templated): cloud_provider, compression,
    jobs, max_archive_size, min_archive_size, min_chunk_size, immediate_checkpoint,
    backup_name, tags, endpoint_url, encryption, sse_kms_key_id, read_timeout. The keeper
    aborts the database backup by itself if the group has not finished within
    `session_deadline`. On success an
    asset event for `Asset("<destination_url>/<server_name>")` is emitted through the
    `asset_alias` AssetAlias. With `snapshot_instance` and `snapshot_disks` (provider options
    in `snapshot_options`, see TakeDiskSnapshotsOperator) it is a disk snapshot backup: no
    archive objects, the disks snapshotted between start and stop, as barman-cloud-backup does.
    With `verify`, a last task checks the stored archives against the backup's manifest.
    With `retention_policy` (`REDUNDANCY n` or `RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`,
    templated; an empty rendered value skips the task), a task after a DONE backup (and after
    verify) deletes the backups the policy makes obsolete and the WAL none needs; it never runs
    after a failed backup.

    `source="streaming"` has the server send its files over the replication protocol: one
    task takes the whole backup (one connection carries the cluster) and needs no access to
    the data directory, so neither it nor the task after it (`end_backup`, which records
    FAILED if the backup task died, and fails unless the backup is DONE) needs the database
    host; `queue` is then optional. `upload_*`, `session_deadline` and the snapshot options
    are for local files only.
    """
    check_source(source)
    retention = {"retention_policy": retention_policy, "minimum_redundancy": minimum_redundancy}
    if source == "streaming":
        return _streamed_backup_group(
            destination_url, server_name, group_id=group_id, postgres_conn_id=postgres_conn_id,
            aws_conn_id=aws_conn_id, wasb_conn_id=wasb_conn_id, gcp_conn_id=gcp_conn_id,
            queue=queue, asset_alias=asset_alias, verify=verify, retention=retention,
            **backup_options,
        )
    placement: dict[str, Any] = {"queue": queue} if queue else {}
    connections: dict[str, Any] = {
        "aws_conn_id": aws_conn_id, "wasb_conn_id": wasb_conn_id, "gcp_conn_id": gcp_conn_id,
    }
    with TaskGroup(group_id=group_id, tooltip="PostgreSQL base backup to cloud storage") as group:
        start = StartBackupOperator(
            task_id="start_backup", destination_url=destination_url, server_name=server_name,
            postgres_conn_id=postgres_conn_id, session_deadline=session_deadline,
            snapshot_instance=snapshot_instance, snapshot_disks=snapshot_disks,
            snapshot_options=snapshot_options, **connections, **placement, **backup_options,
        )
        state = XComArg(start, key=STATE_KEY)
        upload = UploadTablespaceChunksOperator.partial(
            task_id="upload_chunk", state=state,
            map_index_template=CHUNK_LABEL, retries=upload_retries,
            retry_delay=upload_retry_delay, max_active_tis_per_dagrun=max_parallel_uploads,
            **connections, **placement,
        ).expand(chunk=start.output)
        # the snapshot task exists only in a snapshot backup: every task is a scheduling
        # round trip, which a backup of a few GB would notice
        snapshots = None if snapshot_instance is None else TakeDiskSnapshotsOperator(
            task_id="take_disk_snapshots", start_task_id=start.task_id,
            snapshot_instance=snapshot_instance,
            snapshot_disks=snapshot_disks, snapshot_options=snapshot_options,
            **connections, **placement,
        )
        stop = StopBackupAndUploadLabelOperator(
            task_id="stop_backup_and_upload_label", state=state,
            chunks=start.output, upload_task_id=upload.task_id,
            snapshot_task_id=snapshots.task_id if snapshots else None,
            asset_alias=asset_alias, **connections, **placement,
        )
        teardown = stop.as_teardown(setups=start, on_failure_fail_dagrun=True)
        if snapshots:
            start >> upload >> snapshots >> teardown
        else:
            start >> upload >> teardown
        last: Any = stop
        if verify and not snapshot_instance:
            last = stop >> _verify_task(destination_url, server_name, stop.task_id,
                                        backup_options, **connections, **placement)
        if retention_policy:
            last >> _retention_task(destination_url, server_name, backup_options, retention,
                                    **connections, **placement)
    return group


def _streamed_backup_group(
    destination_url: str, server_name: str, *, group_id: str, postgres_conn_id: str,
    aws_conn_id: str | None, wasb_conn_id: str, gcp_conn_id: str, queue: str | None,
    asset_alias: str | None, verify: bool, retention: dict[str, Any], **backup_options: Any,
) -> TaskGroup:
    placement: dict[str, Any] = {"queue": queue} if queue else {}
    connections: dict[str, Any] = {
        "aws_conn_id": aws_conn_id, "wasb_conn_id": wasb_conn_id, "gcp_conn_id": gcp_conn_id,
    }
    with TaskGroup(group_id=group_id, tooltip="PostgreSQL base backup streamed to cloud storage"
                   ) as group:
        backup = PgCloudBackupOperator(
            task_id="backup", destination_url=destination_url, server_name=server_name,
            postgres_conn_id=postgres_conn_id, source="streaming", asset_alias=asset_alias,
            **connections, **placement, **backup_options,
        )
        end = EndStreamedBackupOperator(task_id="end_backup", backup_task_id=backup.task_id,
                                        **connections, **placement)
        last: Any = backup >> end
        if verify:
            last = end >> _verify_task(destination_url, server_name, backup.task_id,
                                       backup_options, **connections, **placement)
        if retention["retention_policy"]:
            last >> _retention_task(destination_url, server_name, backup_options, retention,
                                    **connections, **placement)
    return group


def _retention_task(destination_url: str, server_name: str, backup_options: dict[str, Any],
                    retention: dict[str, Any], **kwargs: Any) -> ApplyRetentionOperator:
    """Applies the retention policy; only after its upstream succeeded (the backup is DONE)."""
    return ApplyRetentionOperator(
        task_id="apply_retention", destination_url=destination_url, server_name=server_name,
        cloud_provider=backup_options.get("cloud_provider", "aws-s3"),
        endpoint_url=backup_options.get("endpoint_url"), **retention, **kwargs,
    )


def _verify_task(destination_url: str, server_name: str, returned_by: str,
                 backup_options: dict[str, Any], **kwargs: Any) -> VerifyBackupOperator:
    """Checks the backup whose ID the task `returned_by` returned against its manifest."""
    return VerifyBackupOperator(
        task_id="verify_backup", destination_url=destination_url, server_name=server_name,
        backup_id=f"{{{{ ti.xcom_pull(task_ids='{returned_by}')['backup_id'] }}}}",
        cloud_provider=backup_options.get("cloud_provider", "aws-s3"),
        endpoint_url=backup_options.get("endpoint_url"), **kwargs,
    )
