"""The whole backup in one Airflow task, from local files or streamed by the server."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from ..hooks import postgres_conninfo
from ..runner import values as v
from ..runner.backup import run_backup
from ..runner.errors import BackupFailed
from ..runner.session import LocalSession
from ..runner.sources import check_source
from ..runner.steps import BackupOptions
from ..runner.stream_backup import run_stream_backup
from ..runner.teardown import end_streamed_backup
from .base import (
    STATE_KEY,
    BackupOptionsOperator,
    PgCloudBaseOperator,
    state_from_xcom,
    state_to_xcom,
)


class PgCloudBackupOperator(BackupOptionsOperator):
    """Take a complete backup in this task, as barman-cloud-backup would.

    `source="local"` (default) reads the data directory, so the task must run on the database
    host; the database session lives in the task process and `jobs` chunks are compressed and
    uploaded at once by threads sharing one store opened with the Airflow connection's
    credentials. `source="streaming"` has the server send its files over the replication
    protocol (PostgreSQL 15+, a role with REPLICATION): the task runs on any worker, and
    records the started backup in the XCom `state` so that EndStreamedBackupOperator can end
    a backup whose task died. `accept_checksum_failures` is for streaming (see the README).

    On any failure backup.info says FAILED and the task fails. Returns the backup ID and emits
    the backup's asset through `asset_alias`. `max_bandwidth` (e.g. "50MB", per second) caps
    the upload rate of the whole backup.
    """

    template_fields: Sequence[str] = (
        *BackupOptionsOperator.template_fields, "max_bandwidth", "source",
        "accept_checksum_failures",
    )

    def __init__(self, *, max_bandwidth: int | str | None = None, source: str = "local",
                 accept_checksum_failures: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bandwidth = max_bandwidth
        self.source = source
        self.accept_checksum_failures = accept_checksum_failures

    def backup_options(self) -> BackupOptions:
        source = str(self.source).strip()
        check_source(source)
        options = dataclasses.replace(
            super().backup_options(), streaming=source == "streaming",
            accept_checksum_failures=v.as_bool(self.accept_checksum_failures,
                                               "accept_checksum_failures"),
        )
        if v.optional_str(self.max_bandwidth) is None:
            return options
        limit = v.as_size(self.max_bandwidth, "max_bandwidth")
        return dataclasses.replace(options, max_bandwidth=limit)

    def execute(self, context: Context) -> dict[str, Any]:
        options = self.backup_options()
        conninfo, password = postgres_conninfo(self.postgres_conn_id)
        options = dataclasses.replace(options, conninfo=conninfo)
        store = self.hook.open_store(options.store)
        if options.streaming:
            backup_id = run_stream_backup(
                options, password=password, store=store,
                on_started=lambda state: context["ti"].xcom_push(
                    key=STATE_KEY, value=state_to_xcom(state)),
            )
        else:
            try:
                session = LocalSession(conninfo, password)
            except BaseException:
                store.close()
                raise
            backup_id = run_backup(options, session=session, store=store)
        self.emit_backup_asset(
            context, options.store.destination_url, options.server_name, backup_id
        )
        return {"backup_id": backup_id, "status": "DONE"}


class EndStreamedBackupOperator(PgCloudBaseOperator):
    """Runs after a streamed backup's task whatever became of it (trigger rule `all_done`):
    a backup its task left STARTED (the worker died) is recorded FAILED, and this task fails
    unless the backup is DONE, so the DAG run says what happened."""

    template_fields: Sequence[str] = ("backup_task_id",)

    def __init__(self, *, backup_task_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.backup_task_id = backup_task_id

    def execute(self, context: Context) -> None:
        data = context["ti"].xcom_pull(task_ids=self.backup_task_id, key=STATE_KEY)
        state = state_from_xcom(data) if isinstance(data, dict) else None
        if state is None:
            raise BackupFailed("the backup task failed before the backup started")
        with contextlib.closing(self.hook.open_store(state.store)) as store:
            end_streamed_backup(state, store)
