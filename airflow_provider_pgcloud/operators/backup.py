"""The backup as four Airflow tasks, each a thin shell over one engine step.

    start_backup (setup) -> upload_chunk.expand(chunk=...) -> take_disk_snapshots
        -> stop_backup_and_upload_label (teardown: always runs once start succeeded)

The start task hands the database session to a keeper process (a non-exclusive backup must be
stopped by the session that started it); later tasks reach it by its socket, recorded in the
state XCom. All tasks of one backup must run on the database host (give them one `queue`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from ..hooks import postgres_conninfo
from ..runner import backup_info as bi
from ..runner import steps
from ..runner.errors import BackupFailed
from ..runner.pgdata import Chunk
from ..runner.session import DEFAULT_DEADLINE_SECONDS, KeeperClient
from ..runner.sizes import format_size
from ..runner.steps import BackupState
from ..runner.storage import ObjectStore
from . import _values as v
from .base import (
    STATE_KEY,
    BackupOptionsOperator,
    PgCloudBaseOperator,
    server_name_of,
    state_from_xcom,
    state_to_xcom,
)

log = logging.getLogger("pgcloud")

CHUNK_LABEL = (
    "{{ task.chunk.archive }}{{ '_%04d' % task.chunk.index if task.chunk.index else '' }}"
)
"""map_index_template naming each mapped upload after its archive object (`data_0003`)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class StartBackupOperator(BackupOptionsOperator):
    """Start the backup in a keeper process, record backup.info STARTED and plan the chunks.

    Returns the chunk descriptors (map over them with `.expand(chunk=start.output)`) and
    pushes the state under the XCom key `state`. The keeper aborts the backup by itself if no
    stop or abort reaches it within `session_deadline`.
    """

    def __init__(
        self, *, session_deadline: dt.timedelta | float = DEFAULT_DEADLINE_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.session_deadline = session_deadline

    def execute(self, context: Context) -> list[dict[str, Any]]:
        options = self.backup_options()
        conninfo, password = postgres_conninfo(self.postgres_conn_id)
        deadline = v.as_seconds(self.session_deadline, "session_deadline")
        with contextlib.closing(self.hook.open_store(options.store)) as store:
            keeper = KeeperClient.launch(conninfo, password, deadline_seconds=deadline)
            try:
                state = steps.start_backup(options, keeper, store)
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
        if state.session_address:  # fail fast if the backup session is already gone
            KeeperClient(state.session_address).ping()
        with contextlib.closing(self.hook.open_store(state.store)) as store:
            result = steps.upload_chunk(state, chunk, store)
        return result.to_dict()


class TakeDiskSnapshotsOperator(BaseOperator):
    """Disk snapshots of the database volumes: a pass-through unless snapshot options are given.

    Snapshot backups are not implemented yet: with any snapshot option this task fails (and
    the teardown then marks the backup FAILED) instead of pretending to take one.
    """

    template_fields: Sequence[str] = ("snapshot_instance", "snapshot_disks", "snapshot_options")

    def __init__(
        self,
        *,
        snapshot_instance: str | None = None,
        snapshot_disks: Sequence[str] | str | None = None,
        snapshot_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.snapshot_instance = snapshot_instance
        self.snapshot_disks = snapshot_disks
        self.snapshot_options = snapshot_options

    def execute(self, context: Context) -> dict[str, Any]:
        given = {k: val for k, val in (self.snapshot_options or {}).items()
                 if v.optional_str(val) is not None}
        if v.optional_str(self.snapshot_instance) or v.as_list(self.snapshot_disks) or given:
            raise NotImplementedError(
                "disk snapshot backups are not supported by pgcloud yet; remove the snapshot "
                "options to back up to archive objects"
            )
        self.log.info("no snapshot options given: nothing to snapshot")
        return {"snapshots": []}


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
        results = self._upload_results(context)
        problem = self._problem(context, state, results)
        keeper = KeeperClient(state.session_address or "")
        with contextlib.closing(self.hook.open_store(state.store)) as store:
            if not self._already_finished(state, store):
                if problem:
                    steps.fail_backup(state, store, problem, keeper)
                    raise BackupFailed(problem)
                self._stop(state, store, keeper)
        self._log_total(state, results)
        self.emit_backup_asset(
            context, state.store.destination_url, server_name_of(state), state.backup_id
        )
        return {"backup_id": state.backup_id, "status": bi.DONE}

    def _upload_results(self, context: Context) -> list[dict[str, Any]]:
        pulled = context["ti"].xcom_pull(task_ids=self.upload_task_id)
        items = pulled if isinstance(pulled, list) else [pulled]
        return [item for item in items if isinstance(item, dict)]

    def _problem(
        self, context: Context, state: BackupState, results: list[dict[str, Any]]
    ) -> str | None:
        """Why the backup cannot be completed, or None if every step succeeded."""
        done = {result["name"] for result in results}
        missing = [chunk.name for chunk in state.chunks if chunk.name not in done]
        if missing:
            names = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
            return (f"failure uploading data ({len(missing)} of {len(state.chunks)} archive "
                    f"objects not uploaded: {names})")
        if self.snapshot_task_id and context["ti"].xcom_pull(task_ids=self.snapshot_task_id) \
                is None:
            return "failure taking disk snapshots (the snapshot task did not succeed)"
        return None

    def _stop(self, state: BackupState, store: ObjectStore, keeper: KeeperClient) -> None:
        try:
            steps.stop_backup(state, keeper, store)
        except BaseException as exc:
            steps.fail_backup(
                state, store, f"failure stopping the backup ({_first_line(exc)})", keeper
            )
            raise

    def _already_finished(self, state: BackupState, store: ObjectStore) -> bool:
        """True if backup.info is already DONE (a re-run teardown); raise if it is FAILED."""
        try:
            info = bi.decode(store.get(bi.info_key(state.prefix)))
        except Exception:  # unreadable: act as if it were still STARTED
            return False
        if info.get("status") == bi.FAILED:
            raise BackupFailed(f"backup {state.backup_id} already FAILED: {info.get('error')}")
        if info.get("status") == bi.DONE:
            self.log.info("backup %s is already DONE; nothing to do", state.backup_id)
            return True
        return False

    @staticmethod
    def _log_total(state: BackupState, results: list[dict[str, Any]]) -> None:
        """The whole backup's progress line, through the engine's logger like the others."""
        raw = sum(int(result["raw_bytes"]) for result in results)
        stored = sum(int(result["stored_bytes"]) for result in results)
        elapsed = max(time.time() - state.started_at, 1e-6)
        log.info(
            "backup %s: %s of %s planned (%.0f%%) in %d archive objects, %s stored, "
            "in %.1fs, %.1f MB/s", state.backup_id, format_size(raw),
            format_size(state.planned_bytes), 100 * raw / max(state.planned_bytes, 1),
            len(results), format_size(stored), elapsed, raw / elapsed / 1e6,
        )


__all__ = [
    "CHUNK_LABEL",
    "StartBackupOperator",
    "StopBackupAndUploadLabelOperator",
    "TakeDiskSnapshotsOperator",
    "UploadTablespaceChunksOperator",
]
