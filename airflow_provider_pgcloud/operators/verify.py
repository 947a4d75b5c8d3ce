"""Verify a stored backup against its manifest, as a DAG task (the `verify` command's engine)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from ..runner.storage import StoreConfig
from ..runner.verify import VerifyFailed, verify_backup
from .base import PgCloudBaseOperator

log = logging.getLogger("pgcloud")


class VerifyBackupOperator(PgCloudBaseOperator):
    """Check every stored archive of one backup against its manifest, without restoring.

    Fails naming the first archive and file that differ. `backup_id` may be an ID, a backup
    name, `latest` or `oldest`. It downloads the whole backup, so schedule it where that
    traffic is acceptable.
    """

    template_fields: Sequence[str] = (
        "destination_url", "server_name", "backup_id", "cloud_provider", "endpoint_url",
    )

    def __init__(
        self, *, destination_url: str, server_name: str, backup_id: str = "latest",
        cloud_provider: str = "aws-s3", endpoint_url: str | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.destination_url, self.server_name = destination_url, server_name
        self.backup_id, self.cloud_provider = backup_id, cloud_provider
        self.endpoint_url = endpoint_url

    def execute(self, context: Context) -> dict[str, Any]:
        config = StoreConfig(destination_url=self.destination_url,
                             cloud_provider=self.cloud_provider,
                             endpoint_url=self.endpoint_url or None)
        with contextlib.closing(self.hook.open_store(config)) as store:
            try:
                report = verify_backup(store, self.server_name, self.backup_id)
            except VerifyFailed as exc:
                log.error("%s", exc)  # the engine's logger, as the runner's verify prints it
                raise
        log.info("%s", report.summary())
        return {"backup_id": report.backup_id, "archives": report.archives,
                "files": report.files}
