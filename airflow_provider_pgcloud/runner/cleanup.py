"""Remove what dead backup runs left in the store; never touch a DONE backup.

    python -m airflow_provider_pgcloud.runner.cleanup [OPTIONS] DESTINATION_URL SERVER_NAME

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
  period, and WAL uploads younger than it, are left alone. GCS resumable sessions cannot be
  listed; they expire by themselves after a week;
* manifests (`<server>/pgcloud/<id>/`) of backups that no longer exist (deleted with
  barman-cloud-backup-delete, which does not know them) are deleted.

DONE and FAILED backups are never changed. `--dry-run` prints what would be removed.
Exit codes: 0 done (or nothing to do), 1 something could not be removed, 2 the store is
unreachable, 3 bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import posixpath
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import backup_info as bi
from .argtypes import Parser
from .errors import BackupFailed, InputError
from .manifest import MANIFEST_DIR
from .storage import ObjectStore, open_store
from .storeargs import add_store_arguments, run_main, store_config

log = logging.getLogger("pgcloud")

DEFAULT_GRACE_SECONDS = 24 * 3600


class MaintainableStore(ObjectStore, Protocol):
    def delete(self, key: str) -> None: ...


@dataclass
class CleanupReport:
    removed_backups: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    removed_manifests: list[str] = field(default_factory=list)
    kept_started: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.removed_backups)} dead STARTED backups removed, "
                f"{len(self.aborted_uploads)} uploads aborted, "
                f"{len(self.removed_manifests)} orphan manifests removed, "
                f"{len(self.kept_started)} STARTED backups kept (within the grace period)")


def _group(keys: Iterable[str], prefix: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        backup_id = key[len(prefix):].split("/", 1)[0]
        if bi.is_backup_id(backup_id):
            groups[backup_id].append(key)
    return groups


def _backup_id_of(key: str, base: str, manifests: str) -> str | None:
    for prefix in (base, manifests):
        if key.startswith(prefix):
            backup_id = key[len(prefix):].split("/", 1)[0]
            return backup_id if bi.is_backup_id(backup_id) else None
    return None


def _begin_time(info: dict[str, Any], backup_id: str) -> dt.datetime:
    begin = info.get("begin_time")
    if isinstance(begin, dt.datetime):
        return begin if begin.tzinfo else begin.astimezone()
    # no begin_time: the ID is the client's local time
    return dt.datetime.strptime(backup_id, bi.BACKUP_ID_FORMAT).astimezone()


def _delete_all(store: MaintainableStore, keys: Iterable[str], dry_run: bool) -> None:
    for key in keys:
        log.debug("%s %s", "would delete" if dry_run else "deleting", key)
        if not dry_run:
            store.delete(key)


def _list_uploads(store: ObjectStore, prefix: str) -> Iterator[tuple[str, str, dt.datetime]]:
    lister = getattr(store, "list_uploads", None)
    if lister is None:
        log.debug("this store cannot list uploads in progress; none are aborted")
        return iter(())
    uploads: Iterator[tuple[str, str, dt.datetime]] = lister(prefix)
    return uploads


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
    maintainable: MaintainableStore = store  # type: ignore[assignment]
    if not hasattr(store, "delete"):
        raise BackupFailed("this store does not support deleting objects")
    now = now or dt.datetime.now(dt.UTC)
    grace = dt.timedelta(seconds=grace_seconds)
    server_prefix = posixpath.join(store.base_path, server_name)
    base = f"{server_prefix}/base/"
    manifests = f"{server_prefix}/{MANIFEST_DIR}/"
    report = CleanupReport()

    # Listed in this order so nothing written by a live run after a listing looks orphaned:
    # a run writes backup.info STARTED before any archive, manifest or upload.
    uploads = list(_list_uploads(store, server_prefix + "/"))
    manifest_groups = _group((k for k, _ in store.list(manifests)), manifests)
    base_groups = _group((k for k, _ in store.list(base)), base)

    statuses: dict[str, str] = {}
    dead: set[str] = set()
    for backup_id, keys in sorted(base_groups.items()):
        info_key = f"{base}{backup_id}/backup.info"
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
        if now - _begin_time(info, backup_id) <= grace:
            report.kept_started.append(backup_id)
            continue
        if any("/annotations/" in key for key in keys):
            log.warning("backup %s is STARTED but has annotations; left alone", backup_id)
            continue
        dead.add(backup_id)
        log.info("%s dead backup %s (STARTED at %s)", "would remove" if dry_run else "removing",
                 backup_id, _begin_time(info, backup_id).isoformat(timespec="seconds"))
        try:
            _delete_all(maintainable, (k for k in keys if k != info_key), dry_run)
            _delete_all(maintainable, manifest_groups.pop(backup_id, ()), dry_run)
            _delete_all(maintainable, [info_key], dry_run)  # last: a retry finds it again
            report.removed_backups.append(backup_id)
        except Exception as exc:
            report.errors.append(f"cannot remove backup {backup_id}: {exc}")

    for backup_id, keys in sorted(manifest_groups.items()):
        if backup_id in base_groups or backup_id in keep:
            continue
        log.info("%s orphan manifest of deleted backup %s",
                 "would remove" if dry_run else "removing", backup_id)
        try:
            _delete_all(maintainable, keys, dry_run)
            report.removed_manifests.append(backup_id)
        except Exception as exc:
            report.errors.append(f"cannot remove manifest of {backup_id}: {exc}")

    for key, upload_id, initiated in uploads:
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
            store.abort_upload(key, upload_id)  # type: ignore[attr-defined]
            report.aborted_uploads.append(key)
        except Exception as exc:
            report.errors.append(f"cannot abort the upload of {key}: {exc}")
    return report


def clean_after_backup(store: ObjectStore, server_name: str, backup_id: str) -> None:
    """The runner's tidy-up after a DONE backup: default grace period, never raises."""
    try:
        report = clean_server(store, server_name, keep=[backup_id])
    except Exception as exc:
        log.warning("cleanup of earlier runs' leftovers failed: %s",
                    (str(exc).splitlines() or [type(exc).__name__])[0])
        return
    if report.removed_backups or report.aborted_uploads or report.removed_manifests:
        log.info("cleanup of earlier runs: %s", report.summary())
    for error in report.errors:
        log.warning("cleanup: %s", error)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m airflow_provider_pgcloud.runner.cleanup",
        description="Remove what dead backup runs left in the store for one server: STARTED "
        "backups older than the grace period (their archives, manifest and backup.info), "
        "multipart uploads in progress that no live run will complete, and manifests of "
        "deleted backups. DONE and FAILED backups are never changed. The runner does the same "
        "after every successful backup, with the default grace period.",
    )
    parser.add_argument("destination_url", help="URL of the cloud destination, e.g. s3://bucket/path")
    parser.add_argument("server_name", help="the name of the server as configured in Barman")
    parser.add_argument("--grace-period", type=float, default=DEFAULT_GRACE_SECONDS,
                        metavar="SECONDS",
                        help="a STARTED backup (or an upload) older than this is taken for dead "
                        f"(default: {DEFAULT_GRACE_SECONDS}, i.e. 24 hours); keep it above your "
                        "longest backup")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="only report what would be removed")
    add_store_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.grace_period < 0:
        raise InputError("--grace-period must not be negative")
    store = open_store(store_config(args, args.destination_url))
    try:
        store.check()
        report = clean_server(store, args.server_name, grace_seconds=args.grace_period,
                              dry_run=args.dry_run)
    finally:
        store.close()
    log.info("%s%s", "dry run: " if args.dry_run else "", report.summary())
    for error in report.errors:
        log.error("%s", error)
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
