"""A restore drill as a DAG task: runner/drill.py's engine, with the store from a connection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset, AssetAlias, Context

from ..runner import values as v
from ..runner.drill import DrillFailed, DrillOptions, run_drill
from .base import PgCloudBaseOperator

log = logging.getLogger("pgcloud")

DEFAULT_DRILL_ALIAS = "pgcloud_drills"
"""The AssetAlias a passed drill emits `Asset("<source_url>/<server_name>/drill")` through."""


def drill_asset(source_url: str, server_name: str) -> Asset:
    """The Asset a drill updates, with the drill's figures as the event's extra."""
    return Asset(f"{source_url.rstrip('/')}/{server_name}/drill")


class RestoreDrillOperator(PgCloudBaseOperator):
    """Restore a backup on this worker, start it, check it with pg_amcheck and `sql_checks`,
    then remove it; return the figures (backup ID, bytes, restore, replay and recovery seconds,
    checks passed) and emit them on the drill Asset. Any failing step fails the task with its
    reason.

    With `use_triggering_backup` (the default), a run triggered by a backup's asset event
    drills that backup (its destination, server and ID from the event); otherwise the
    `source_url`, `server_name` and `backup_id` given. `pg_bin_dir` holds the server binaries
    (`{major}` is replaced by the backup's major). A worker running as root runs PostgreSQL as
    `run_as`. The worker needs the disk space of a restored backup under `scratch_dir`.
    """

    template_fields: Sequence[str] = (
        "source_url", "server_name", "backup_id", "pg_bin_dir", "sql_checks", "sql_database",
        "cloud_provider", "endpoint_url", "run_as",
    )

    def __init__(
        self, *, source_url: str, server_name: str, backup_id: str = "latest",
        pg_bin_dir: str = "/usr/lib/postgresql/{major}/bin", sql_checks: Sequence[str] = (),
        sql_database: str = "postgres", run_as: str | None = None,
        database_user: str = "postgres", scratch_dir: str | None = None, jobs: int = 2,
        cloud_provider: str = "aws-s3", endpoint_url: str | None = None,
        use_triggering_backup: bool = True, asset_alias: str | None = DEFAULT_DRILL_ALIAS,
        **kwargs: Any,
    ) -> None:
        super().__init__(asset_alias=asset_alias, **kwargs)
        self.source_url, self.server_name, self.backup_id = source_url, server_name, backup_id
        self.pg_bin_dir, self.sql_checks, self.sql_database = pg_bin_dir, sql_checks, sql_database
        self.run_as, self.database_user, self.scratch_dir = run_as, database_user, scratch_dir
        self.jobs, self.cloud_provider, self.endpoint_url = jobs, cloud_provider, endpoint_url
        self.use_triggering_backup = use_triggering_backup

    def _target(self, context: Context) -> tuple[str, str, str]:
        """(source URL, server, backup ID): the triggering backup's, else the arguments'."""
        if self.use_triggering_backup:
            events = context.get("triggering_asset_events") or {}
            extras = [event.extra for batch in events.values() for event in batch
                      if {"destination_url", "server_name", "backup_id"} <= set(event.extra)]
            if extras:
                last = extras[-1]
                return last["destination_url"], last["server_name"], last["backup_id"]
        return self.source_url, self.server_name, self.backup_id

    def execute(self, context: Context) -> dict[str, Any]:
        source_url, server_name, backup_id = self._target(context)
        config = v.store_config(source_url, {"cloud_provider": self.cloud_provider,
                                             "endpoint_url": self.endpoint_url})
        checks = v.literal(self.sql_checks)  # a rendered list comes back as its repr
        checks = [checks] if isinstance(checks, str) else [str(sql) for sql in checks or ()]
        options = DrillOptions(
            server_name=server_name, backup_id=backup_id, pg_bin_dir=self.pg_bin_dir,
            scratch_dir=self.scratch_dir, run_as=v.optional_str(self.run_as),
            database_user=self.database_user, sql_checks=tuple(checks),
            sql_database=self.sql_database, jobs=int(self.jobs),
        )
        with contextlib.closing(self.hook.open_store(config)) as store:
            try:
                report = run_drill(config, options, store)
            except DrillFailed as exc:
                log.error("%s", exc)
                raise
        figures = report.to_dict()
        if self.asset_alias:
            context["outlet_events"][AssetAlias(self.asset_alias)].add(
                drill_asset(source_url, server_name), extra=figures)
        return figures
