"""Apply a retention policy as a DAG task (the pgcloud-backup-delete command's engine)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from ..runner import values as v
from ..runner.errors import BackupFailed
from ..runner.retention import apply_retention
from .base import PgCloudBaseOperator

log = logging.getLogger("pgcloud")


class ApplyRetentionOperator(PgCloudBaseOperator):
    """Delete the backups `retention_policy` makes obsolete (`REDUNDANCY n` or `RECOVERY
    WINDOW OF n DAYS|WEEKS|MONTHS`, Barman's rules), with the WAL no remaining backup needs.

    The log says what was deleted and what was kept, and why; the return value holds the same.
    An empty policy skips the task (a DAG form may leave it unset). A delete that fails fails
    the task. STARTED backups younger than the cleanup's grace period are never touched.
    """

    template_fields: Sequence[str] = (
        "destination_url", "server_name", "retention_policy", "minimum_redundancy",
        "cloud_provider", "endpoint_url",
    )

    def __init__(
        self, *, destination_url: str, server_name: str, retention_policy: str | None,
        minimum_redundancy: int | str = 0, dry_run: bool = False,
        cloud_provider: str = "aws-s3", endpoint_url: str | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.destination_url, self.server_name = destination_url, server_name
        self.retention_policy, self.minimum_redundancy = retention_policy, minimum_redundancy
        self.deletes_nothing = dry_run  # BaseOperator has a dry_run() method
        self.cloud_provider, self.endpoint_url = cloud_provider, endpoint_url

    def execute(self, context: Context) -> dict[str, Any]:
        policy = v.optional_str(self.retention_policy)
        if policy is None:
            raise AirflowSkipException("no retention policy given: nothing is deleted")
        config = v.store_config(self.destination_url, {"cloud_provider": self.cloud_provider,
                                                       "endpoint_url": self.endpoint_url})
        with contextlib.closing(self.hook.open_store(config)) as store:
            report = apply_retention(
                store, self.server_name, policy, dry_run=self.deletes_nothing,
                minimum_redundancy=v.as_int(self.minimum_redundancy, "minimum_redundancy"))
        log.info("%s", report.summary())
        if report.errors:
            raise BackupFailed(f"retention of {self.server_name}: {report.errors[0]}")
        return report.to_dict()
