"""The last step of a backup whose steps ran apart, as Airflow's teardown task runs it.

When the uploads (and the disk snapshots) ran in tasks of their own, the step that ends the
backup must first decide what happened: every planned archive object reported uploaded and the
snapshots taken means stop and write DONE; anything else means abort the database backup and
write FAILED with the reason. Running it again on a finished backup changes nothing. The
operator only gathers what the other tasks reported and calls `finish_backup`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from . import backup_info as bi
from . import layout
from .cleanup import clean_after_backup
from .errors import BackupFailed, first_line
from .session import BackupSession
from .sizes import format_size
from .snapshot_backup import stop_snapshot_backup
from .steps import BackupState, fail_backup, stop_backup
from .storage.base import ObjectStore

log = logging.getLogger("pgcloud")


def missing_work(state: BackupState, uploaded: Iterable[str], *, snapshots_expected: bool,
                 snapshots_taken: bool) -> str | None:
    """Why the backup cannot be completed (as backup.info's `error`), or None if every
    planned archive object was uploaded and the snapshots, if any, were taken."""
    done = set(uploaded)
    missing = [chunk.name for chunk in state.chunks if chunk.name not in done]
    if missing:
        names = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        return (f"failure uploading data ({len(missing)} of {len(state.chunks)} archive "
                f"objects not uploaded: {names})")
    if snapshots_expected and not snapshots_taken:
        return "failure taking disk snapshots (the snapshot task did not succeed)"
    return None


def already_finished(state: BackupState, store: ObjectStore) -> bool:
    """True if backup.info is already DONE (a re-run teardown); raise if it is FAILED."""
    try:
        info = bi.decode(store.get(layout.info_key(state.prefix)))
    except Exception:  # unreadable: act as if it were still STARTED
        return False
    if info.get("status") == bi.FAILED:
        raise BackupFailed(f"backup {state.backup_id} already FAILED: {info.get('error')}")
    if info.get("status") == bi.DONE:
        log.info("backup %s is already DONE; nothing to do", state.backup_id)
        return True
    return False


def finish_backup(
    state: BackupState, store: ObjectStore, session: BackupSession, *,
    results: Iterable[Mapping[str, Any]], snapshots_expected: bool = False,
    snapshot_result: Mapping[str, Any] | None = None,
) -> None:
    """Stop the backup and write DONE if every step before succeeded, else FAILED.

    `results` are the upload steps' ChunkResult dicts (those that succeeded);
    `snapshot_result` is what the snapshot step returned (None if it did not succeed), with
    `snapshots_info` in a snapshot backup. Raises BackupFailed, after writing FAILED, when the
    backup cannot be completed.
    """
    results = list(results)
    problem = missing_work(state, (result["name"] for result in results),
                           snapshots_expected=snapshots_expected,
                           snapshots_taken=snapshot_result is not None)
    snapshots_info = snapshot_result.get("snapshots_info") if snapshot_result else None
    if snapshots_info:  # a FAILED backup.info records them too, for barman-cloud-backup-delete
        state.info["snapshots_info"] = snapshots_info
    if not already_finished(state, store):
        if problem:
            fail_backup(state, store, problem, session)
            raise BackupFailed(problem)
        try:
            if snapshots_info:
                stop_snapshot_backup(state, snapshots_info, session, store)
            else:
                stop_backup(state, session, store)
        except BaseException as exc:
            fail_backup(state, store, f"failure stopping the backup ({first_line(exc)})",
                        session)
            raise
        clean_after_backup(store, state.server_name, state.backup_id)
    log_total(state, results)


def end_streamed_backup(state: BackupState, store: ObjectStore) -> None:
    """After a streamed backup's one task, whatever became of it: DONE stays DONE; a backup
    the task left STARTED (its process died before it could record anything) becomes FAILED.
    Raises BackupFailed unless the backup is DONE."""
    if already_finished(state, store):
        return
    reason = "failure uploading data (the backup task ended without finishing the backup)"
    fail_backup(state, store, reason)
    raise BackupFailed(reason)


def log_total(state: BackupState, results: Iterable[Mapping[str, Any]]) -> None:
    """The whole backup's progress line, from what the upload steps reported."""
    results = list(results)
    raw = sum(int(result["raw_bytes"]) for result in results)
    stored = sum(int(result["stored_bytes"]) for result in results)
    elapsed = max(time.time() - state.started_at, 1e-6)
    log.info(
        "backup %s: %s of %s planned (%.0f%%) in %d archive objects, %s stored, "
        "in %.1fs, %.1f MB/s", state.backup_id, format_size(raw),
        format_size(state.planned_bytes), 100 * raw / max(state.planned_bytes, 1),
        len(results), format_size(stored), elapsed, raw / elapsed / 1e6,
    )
