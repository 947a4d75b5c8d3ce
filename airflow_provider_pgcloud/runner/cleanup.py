"""Remove what dead backup runs left in the store; never touch a DONE backup.

    pgcloud-cleanup [OPTIONS] DESTINATION_URL SERVER_NAME   (runner/cli/cleanup.py)

A run that fails aborts its own uploads and writes backup.info FAILED. A run that is killed
(SIGKILL, the host going down, an Airflow worker lost) cannot: it leaves backup.info STARTED,
archive objects that no restore will use and multipart uploads in progress, which are invisible
but billed. This command, and the runner itself after every successful backup, removes them
for one server:

* a backup whose backup.info says STARTED and began more than the grace period ago
  (`--grace-period`, default 24 hours, the Airflow keeper's default deadline too) is taken
  for dead: its archive objects, its pgcloud manifest and then its backup.info are deleted,
  so barman-cloud-backup-list no longer shows it. Keep the grace period above your longest
  backup: a STARTED backup younger than that may belong to a run still going, and is kept.
  A backup with a keep annotation is never removed;
* multipart uploads in progress (S3; on Azure, blobs that have only uncommitted blocks) under
  the server's prefix are aborted when their backup is DONE, FAILED, removed or gone, or when
  they began more than the grace period ago. Uploads of a STARTED backup within the grace
  period, and WAL uploads younger than it, are left alone. Stores that cannot list uploads in
  progress say so in their capabilities (GCS: its resumable sessions expire by themselves
  after a week);
* manifests (`<server>/pgcloud/<id>/`) of backups that no longer exist (deleted with
  barman-cloud-backup-delete, which does not know them) are deleted.

Objects the store still locks (a run with `--lock-days` locks each archive and manifest as it
writes it) are not deleted: such a dead backup, or orphan manifest, is left whole and logged
with the date its lock ends, and removed by a run after that.

DONE and FAILED backups are never changed. `--dry-run` prints what would be removed.
Exit codes: 0 done (or nothing to do), 1 something could not be removed, 2 the store is
unreachable, 3 bad input.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import backup_info as bi
from . import layout
from .errors import first_line
from .storage import ObjectStore, Upload
from .storage.locks import lock_reason

log = logging.getLogger("pgcloud")

DEFAULT_GRACE_SECONDS = 24 * 3600


@dataclass
class CleanupReport:
    removed_backups: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    removed_manifests: list[str] = field(default_factory=list)
    kept_started: list[str] = field(default_factory=list)
    kept_locked: list[str] = field(default_factory=list)  # backup IDs whose objects are locked
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.removed_backups)} dead STARTED backups removed, "
                f"{len(self.aborted_uploads)} uploads aborted, "
                f"{len(self.removed_manifests)} orphan manifests removed, "
                f"{len(self.kept_started)} STARTED backups kept (within the grace period)"
                + (f", {len(self.kept_locked)} kept while locked" if self.kept_locked else ""))


def _group(keys: Iterable[str], prefix: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        backup_id = layout.backup_id_under(key, prefix)
        if backup_id is not None:
            groups[backup_id].append(key)
    return groups


def _backup_id_of(key: str, base: str, manifests: str) -> str | None:
    for prefix in (base, manifests):
        if key.startswith(prefix):
            return layout.backup_id_under(key, prefix)
    return None


def begin_time(info: dict[str, Any], backup_id: str) -> dt.datetime:
    """When a backup began: its begin_time, else its ID (the client's local time)."""
    begin = info.get("begin_time")
    if isinstance(begin, dt.datetime):
        return begin if begin.tzinfo else begin.astimezone()
    # no begin_time: the ID is the client's local time
    return dt.datetime.strptime(backup_id, layout.BACKUP_ID_FORMAT).astimezone()


def _delete_all(store: ObjectStore, keys: Iterable[str], dry_run: bool) -> None:
    for key in keys:
        log.debug("%s %s", "would delete" if dry_run else "deleting", key)
        if not dry_run:
            store.delete(key)


def _locked(store: ObjectStore, keys: Sequence[str], now: dt.datetime, report: CleanupReport,
            what: str, backup_id: str) -> bool:
    """True, logged and reported, if the store still locks any of `keys`."""
    try:
        reason = lock_reason(store.object_locks(keys), now)
    except Exception as exc:
        report.errors.append(f"cannot read the locks of the {what}: {first_line(exc)}")
        return True
    if reason:
        log.info("%s left alone: %s", what, reason)
        report.kept_locked.append(backup_id)
    return reason is not None


def _list_uploads(store: ObjectStore, prefix: str) -> list[Upload]:
    if not store.capabilities.lists_uploads:
        log.debug("this store cannot list uploads in progress; none are aborted")
        return []
    return list(store.list_uploads(prefix))


def clean_server(
    store: ObjectStore,
    server_name: str,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    keep: Sequence[str] = (),
) -> CleanupReport:
    """Remove dead runs' leftovers for `server_name` (see the module doc); never raises for
    one object that cannot be removed: the report lists it in `errors`.

    `keep` names backup IDs to leave alone whatever their state (the caller's own backup).
    """
    now = now or dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=grace_seconds)
    base = layout.base_prefix(store.base_path, server_name)
    manifests = layout.manifest_prefix(store.base_path, server_name)
    report = CleanupReport()

    # Listed in this order so nothing written by a live run after a listing looks orphaned:
    # a run writes backup.info STARTED before any archive, manifest or upload.
    uploads = _list_uploads(store, layout.server_prefix(store.base_path, server_name) + "/")
    manifest_groups = _group((k for k, _ in store.list(manifests)), manifests)
    base_groups = _group((k for k, _ in store.list(base)), base)

    statuses: dict[str, str] = {}
    dead: set[str] = set()
    for backup_id, keys in sorted(base_groups.items()):
        info_key = layout.info_key(f"{base}{backup_id}")
        if info_key not in keys:
            continue  # no backup.info: not ours to judge (a delete in progress, say)
        try:
            info = bi.decode(store.get(info_key))
        except Exception as exc:
            report.errors.append(f"cannot read {info_key}: {exc}")
            continue
        status = str(info.get("status"))
        statuses[backup_id] = status
        if status != bi.STARTED or backup_id in keep:
            continue
        if now - begin_time(info, backup_id) <= grace:
            report.kept_started.append(backup_id)
            continue
        if any("/annotations/" in key for key in keys):
            log.warning("backup %s is STARTED but has annotations; left alone", backup_id)
            continue
        dead.add(backup_id)
        if _locked(store, [*keys, *manifest_groups.get(backup_id, ())], now, report,
                   f"dead backup {backup_id}", backup_id):
            manifest_groups.pop(backup_id, None)
            continue
        log.info("%s dead backup %s (STARTED at %s)", "would remove" if dry_run else "removing",
                 backup_id, begin_time(info, backup_id).isoformat(timespec="seconds"))
        try:
            _delete_all(store, (k for k in keys if k != info_key), dry_run)
            _delete_all(store, manifest_groups.pop(backup_id, ()), dry_run)
            _delete_all(store, [info_key], dry_run)  # last: a retry finds it again
            report.removed_backups.append(backup_id)
        except Exception as exc:
            report.errors.append(f"cannot remove backup {backup_id}: {exc}")

    for backup_id, keys in sorted(manifest_groups.items()):
        if backup_id in base_groups or backup_id in keep:
            continue
        if _locked(store, keys, now, report, f"orphan manifest of deleted backup {backup_id}",
                   backup_id):
            continue
        log.info("%s orphan manifest of deleted backup %s",
                 "would remove" if dry_run else "removing", backup_id)
        try:
            _delete_all(store, keys, dry_run)
            report.removed_manifests.append(backup_id)
        except Exception as exc:
            report.errors.append(f"cannot remove manifest of {backup_id}: {exc}")

    for upload in uploads:
        key, initiated = upload.key, upload.initiated
        owner = _backup_id_of(key, base, manifests)
        old = now - initiated > grace
        if owner is not None and owner in keep:
            continue
        if owner is None:
            abandoned = old  # WAL and anything else: only by age
        else:
            known = statuses.get(owner)
            abandoned = old or owner in dead or known in (bi.DONE, bi.FAILED) or (
                known is None and owner not in base_groups)
        if not abandoned:
            continue
        log.info("%s upload in progress of %s (begun %s)",
                 "would abort" if dry_run else "aborting", key,
                 initiated.isoformat(timespec="seconds"))
        if dry_run:
            report.aborted_uploads.append(key)
            continue
        try:
            store.abort_upload(upload)
            report.aborted_uploads.append(key)
        except Exception as exc:
            report.errors.append(f"cannot abort the upload of {key}: {exc}")
    return report


def clean_after_backup(store: ObjectStore, server_name: str, backup_id: str) -> None:
    """The runner's tidy-up after a DONE backup: default grace period, never raises."""
    try:
        report = clean_server(store, server_name, keep=[backup_id])
    except Exception as exc:
        log.warning("cleanup of earlier runs' leftovers failed: %s", first_line(exc))
        return
    if report.removed_backups or report.aborted_uploads or report.removed_manifests:
        log.info("cleanup of earlier runs: %s", report.summary())
    for error in report.errors:
        log.warning("cleanup: %s", error)


if __name__ == "__main__":
    from .cli.cleanup import main

    sys.exit(main())
