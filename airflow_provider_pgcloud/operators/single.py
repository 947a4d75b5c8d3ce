"""The whole backup in one Airflow task (start, every chunk, stop), for small clusters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from ..hooks import postgres_conninfo
from ..runner import values as v
from ..runner.backup import run_backup
from ..runner.session import LocalSession
from ..runner.steps import BackupOptions
from .base import BackupOptionsOperator


class PgCloudBackupOperator(BackupOptionsOperator):
    """Take a complete backup in this task, as barman-cloud-backup would.

    The database session lives in the task process; `jobs` chunks are compressed and uploaded
    at once by threads sharing one store opened with the Airflow connection's credentials. On
    any failure backup.info says FAILED and the task fails. Returns the backup ID and emits the
    backup's asset through `asset_alias`. `max_bandwidth` (e.g. "50MB", per second) caps the
    upload rate of the whole backup.
    """

    template_fields: Sequence[str] = (*BackupOptionsOperator.template_fields, "max_bandwidth")

    def __init__(self, *, max_bandwidth: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bandwidth = max_bandwidth

    def backup_options(self) -> BackupOptions:
        options = super().backup_options()
        if v.optional_str(self.max_bandwidth) is None:
            return options
        limit = v.as_size(self.max_bandwidth, "max_bandwidth")
        return dataclasses.replace(options, max_bandwidth=limit)

    def execute(self, context: Context) -> dict[str, Any]:
        options = self.backup_options()
        conninfo, password = postgres_conninfo(self.postgres_conn_id)
        store = self.hook.open_store(options.store)
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
