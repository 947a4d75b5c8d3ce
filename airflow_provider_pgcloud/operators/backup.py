"""The backup as Airflow tasks, each a thin shell over one engine step.

    start_backup (setup) -> upload_chunk.expand(chunk=...) [-> take_disk_snapshots]
        -> stop_backup_and_upload_label (teardown: always runs once start succeeded)

The start task hands the database session to a keeper process (a non-exclusive backup must be
stopped by the session that started it); later tasks reach it by its socket, recorded in the
state XCom. All tasks of one backup must run on the database host (give them one `queue`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from ..hooks import postgres_conninfo
from ..runner import backup_info as bi
from ..runner import steps
from ..runner import values as v
from ..runner.plan import Chunk
from ..runner.session import DEFAULT_DEADLINE_SECONDS, KeeperClient
from ..runner.snapshot_backup import start_snapshot_backup, take_disk_snapshots
from ..runner.snapshots import SnapshotConfig, config_from_values
from ..runner.teardown import finish_backup
from ..runner.watch import SessionWatch
from .base import (
    STATE_KEY,
    BackupOptionsOperator,
    PgCloudBaseOperator,
    state_from_xcom,
    state_to_xcom,
)

WATCH_SECONDS = 10.0
"""How often a running upload task checks that the backup's database session is alive."""

CHUNK_LABEL = (
    "{{ task.chunk.archive }}{{ '_%04d' % task.chunk.index if task.chunk.index else '' }}"
)
"""map_index_template naming each mapped upload after its archive object (`data_0003`)."""

TASK_MIN_ARCHIVE_SIZE = 4 << 30
"""StartBackupOperator's default `min_archive_size`: every archive object is a mapped task,
and a task costs 0.5-1 s of scheduling and start-up. A job compresses and uploads 250-350 MB/s
with gzip or zstd, so a 4 GiB object is 12-16 s of work and the fixed cost stays near 5%; a
retried task redoes at most that. Objects are not cut below it unless that would leave a
parallel job (at most one per core) without one."""


def snapshot_config(
    cloud_provider: str, instance: Any, disks: Any, options: Any, *,
    compression: str | None = None, kms_key_name: str | None = None,
    tags: Sequence[tuple[str, str]] = (),
) -> SnapshotConfig | None:
    """The rendered snapshot arguments as the engine's options; None if none are given."""
    return config_from_values(
        cloud_provider, instance, v.as_list(disks), v.literal(options),
        compression=compression, kms_key_name=kms_key_name, tags=tags,
    )


class StartBackupOperator(BackupOptionsOperator):
    """Start the backup in a keeper process, record backup.info STARTED and plan the chunks.

    Returns the chunk descriptors (map over them with `.expand(chunk=start.output)`) and
    pushes the state under the XCom key `state`. The keeper aborts the backup by itself if no
    stop or abort reaches it within `session_deadline`.

    With `snapshot_instance` and `snapshot_disks` (and the provider's `snapshot_options`, as
    for TakeDiskSnapshotsOperator) it starts a disk snapshot backup instead: it checks the
    disks are attached and hold the cluster, and plans no chunks.

    `min_archive_size` (Barman's size notation or bytes) is the smallest archive object worth
    an upload task of its own, unless there would otherwise be fewer objects than parallel
    jobs (at most one per core of this host); the data is cut into about four objects per job
    above it. Objects are cut equal in estimated work, not bytes (runner/workload.py), and
    the returned list starts with the most work.
    """

    template_fields: Sequence[str] = (
        *BackupOptionsOperator.template_fields,
        "snapshot_instance", "snapshot_disks", "snapshot_options", "min_archive_size",
    )

    def __init__(
        self, *, session_deadline: dt.timedelta | float = DEFAULT_DEADLINE_SECONDS,
        min_archive_size: int | str = TASK_MIN_ARCHIVE_SIZE,
        snapshot_instance: str | None = None,
        snapshot_disks: Sequence[str] | str | None = None,
        snapshot_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.session_deadline = session_deadline
        self.snapshot_instance = snapshot_instance
        self.snapshot_disks = snapshot_disks
        self.snapshot_options = snapshot_options
        self.min_archive_size = min_archive_size

    def execute(self, context: Context) -> list[dict[str, Any]]:
        options = dataclasses.replace(
            self.backup_options(),
            min_archive_size=v.as_size(self.min_archive_size, "min_archive_size"),
        )
        snapshot = snapshot_config(
            options.store.cloud_provider, self.snapshot_instance, self.snapshot_disks,
            self.snapshot_options, compression=options.compression,
            kms_key_name=options.store.kms_key_name, tags=options.store.tags,
        )
        conninfo, password = postgres_conninfo(self.postgres_conn_id)
        deadline = v.as_seconds(self.session_deadline, "session_deadline")
        with contextlib.closing(self.hook.open_store(options.store)) as store:
            keeper = KeeperClient.launch(conninfo, password, deadline_seconds=deadline)
            try:
                if snapshot is None:
                    state = steps.start_backup(options, keeper, store)
                else:
                    state = start_snapshot_backup(
                        options, snapshot, keeper, store,
                        provider=self.hook.snapshot_provider(snapshot),
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    keeper.abort()
                raise
        state.session_address = keeper.address
        context["ti"].xcom_push(key=STATE_KEY, value=state_to_xcom(state))
        return [chunk.to_dict() for chunk in state.chunks]


class UploadTablespaceChunksOperator(PgCloudBaseOperator):
    """Upload one archive object (a chunk of PGDATA or of a tablespace); use with
    `.partial(state=start.output["state"]).expand(chunk=start.output)`.

    A retry writes the same key again, so retries are safe.
    """

    template_fields: Sequence[str] = ("state", "chunk")

    def __init__(self, *, state: Any, chunk: Any, **kwargs: Any) -> None:
        kwargs.setdefault("map_index_template", CHUNK_LABEL)
        super().__init__(**kwargs)
        self.state = state
        self.chunk = chunk

    def execute(self, context: Context) -> dict[str, Any]:
        state = state_from_xcom(self.state)
        chunk = Chunk.from_dict(self.chunk)
        # Pings the keeper now and every few seconds while uploading: once the database
        # session is lost (PostgreSQL restarted, backend killed) this task fails fast.
        watch = (SessionWatch(KeeperClient(state.session_address, timeout=30), WATCH_SECONDS)
                 if state.session_address else None)
        with contextlib.closing(self.hook.open_store(state.store)) as store:
            result = steps.upload_chunk(state, chunk, store, cancelled=watch)
        return result.to_dict()


class TakeDiskSnapshotsOperator(PgCloudBaseOperator):
    """Disk snapshots of the database volumes: a pass-through unless snapshot options are given.

    With `snapshot_instance` and `snapshot_disks` it snapshots each disk of the instance (on
    EC2, Compute Engine or Azure, after the backup's `cloud_provider`) between the start and
    the stop of the backup in `state`, and returns `{"snapshots_info": ...}` for the stop.
    `snapshot_options` holds barman-cloud-backup's provider options by their destination
    names: gcp_project, gcp_zone, azure_subscription_id, azure_resource_group,
    azure_credential, aws_region, aws_await_snapshots_timeout, aws_snapshot_lock_mode,
    aws_snapshot_lock_duration, aws_snapshot_lock_cool_off_period,
    aws_snapshot_lock_expiration_date. The backup's state is `state`, or the `state` XCom of
    `start_task_id` (read at run time, so that this task need not follow the setup task
    directly: it runs when the uploads, then empty, were skipped).
    """

    template_fields: Sequence[str] = (
        "state", "snapshot_instance", "snapshot_disks", "snapshot_options",
    )

    def __init__(
        self,
        *,
        state: Any = None,
        start_task_id: str | None = None,
        snapshot_instance: str | None = None,
        snapshot_disks: Sequence[str] | str | None = None,
        snapshot_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.state = state
        self.start_task_id = start_task_id
        self.snapshot_instance = snapshot_instance
        self.snapshot_disks = snapshot_disks
        self.snapshot_options = snapshot_options

    def execute(self, context: Context) -> dict[str, Any]:
        data = self.state
        if data is None and self.start_task_id:
            data = context["ti"].xcom_pull(task_ids=self.start_task_id, key=STATE_KEY)
        state = state_from_xcom(data) if isinstance(data, dict) else None
        cloud_provider = state.store.cloud_provider if state else "aws-s3"
        config = snapshot_config(cloud_provider, self.snapshot_instance, self.snapshot_disks,
                                 self.snapshot_options, tags=state.store.tags if state else ())
        if config is None:
            self.log.info("no snapshot options given: nothing to snapshot")
            return {"snapshots": []}
        if state is None:
            raise ValueError("take_disk_snapshots needs the started backup's state")
        if state.session_address:  # fail fast if the backup session is already gone
            KeeperClient(state.session_address).ping()
        info = take_disk_snapshots(state, config, provider=self.hook.snapshot_provider(config))
        return {"snapshots_info": info}


class StopBackupAndUploadLabelOperator(PgCloudBaseOperator):
    """Teardown: finish the backup if every planned chunk was uploaded, else record it FAILED.

    On success it stops the backup through the keeper, uploads pg_control and backup_label,
    checks every object exists and writes backup.info DONE, then emits the backup's asset
    (through `asset_alias`). Otherwise it aborts the database backup, writes backup.info
    FAILED with the reason and fails, so the DAG run fails. Run it as a teardown with
    `on_failure_fail_dagrun=True`. Running it again on a finished backup changes nothing.
    """

    template_fields: Sequence[str] = ("state", "chunks", "upload_task_id", "snapshot_task_id")

    def __init__(
        self,
        *,
        state: Any,
        chunks: Any,
        upload_task_id: str,
        snapshot_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.chunks = chunks
        self.upload_task_id = upload_task_id
        self.snapshot_task_id = snapshot_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        state = state_from_xcom(self.state, self.chunks)
        ti = context["ti"]
        pulled = ti.xcom_pull(task_ids=self.upload_task_id)
        results = [item for item in (pulled if isinstance(pulled, list) else [pulled])
                   if isinstance(item, dict)]
        snapshot = ti.xcom_pull(task_ids=self.snapshot_task_id) if self.snapshot_task_id \
            else None
        with contextlib.closing(self.hook.open_store(state.store)) as store:
            finish_backup(state, store, KeeperClient(state.session_address or ""),
                          results=results, snapshots_expected=bool(self.snapshot_task_id),
                          snapshot_result=snapshot if isinstance(snapshot, dict) else None)
        self.emit_backup_asset(
            context, state.store.destination_url, state.server_name, state.backup_id
        )
        return {"backup_id": state.backup_id, "status": bi.DONE}


__all__ = [
    "CHUNK_LABEL",
    "StartBackupOperator",
    "StopBackupAndUploadLabelOperator",
    "TakeDiskSnapshotsOperator",
    "UploadTablespaceChunksOperator",
]
