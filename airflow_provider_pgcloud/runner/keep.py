"""Keep annotations: marking a backup to be kept whatever the retention policy says, as
barman-cloud-backup-keep does, in the same object and with the same content.

    pgcloud-backup-keep [OPTIONS] SOURCE_URL SERVER_NAME BACKUP_ID (runner/cli/backup_keep.py)

A kept backup has the object `<path>/<server>/base/<backup_id>/annotations/keep`, holding its
recovery target, `full` or `standalone`:

* `full`: the backup and every WAL file from its start on are kept, so it can be recovered to
  any point after it;
* `standalone`: the backup and only the WAL it needs to be consistent (its begin_wal to its
  end_wal) are kept; the WAL around it goes with the backups the retention policy deletes.

Only a DONE backup can be marked. Releasing the keep deletes the object; the backup is then
subject to the retention policy again. Barman's commands and these read each other's marks:
barman-cloud-backup-delete never deletes a backup marked here, and pgcloud-backup-delete never
deletes one marked with barman-cloud-backup-keep.
"""

from __future__ import annotations

import logging
import sys

from . import backup_info as bi
from . import layout
from .catalog import parse_backup_id, read_catalog
from .errors import BackupFailed, PgCloudError
from .storage import ObjectStore

log = logging.getLogger("pgcloud")

TARGET_FULL = "full"
TARGET_STANDALONE = "standalone"
TARGETS = (TARGET_FULL, TARGET_STANDALONE)
NO_KEEP = "nokeep"  # what the status shows for a backup without a keep


def _keep_key(store: ObjectStore, server_name: str, backup_id: str) -> str:
    return layout.keep_key(layout.backup_prefix(store.base_path, server_name, backup_id))


def keep_target(store: ObjectStore, server_name: str, backup_id: str) -> str | None:
    """The backup's keep target as Barman reads it (the annotation's first line), or None
    when it has no keep annotation."""
    key = _keep_key(store, server_name, backup_id)
    if not any(found == key for found, _size in store.list(key)):
        return None
    data = store.get(key)
    return data.split(b"\n", 1)[0].decode("utf-8") + ("\n" if b"\n" in data else "")


def keep_status(store: ObjectStore, server_name: str, backup_id: str) -> str:
    """`full`, `standalone` or `nokeep`: what `pgcloud-backup-keep --status` prints after
    `Keep: `."""
    return keep_target(store, server_name, backup_id) or NO_KEEP


def keep_backup(store: ObjectStore, server_name: str, backup_id: str, target: str) -> None:
    """Mark a DONE backup to be kept with `target` (`full` or `standalone`).

    BackupFailed (exit 1) when the backup is not DONE; PgCloudError (exit 4) when it does not
    exist or the target is unknown."""
    if target not in TARGETS:
        raise PgCloudError(f"unsupported keep target {target!r}: expected full or standalone")
    info_key = layout.info_key(layout.backup_prefix(store.base_path, server_name, backup_id))
    if not any(found == info_key for found, _size in store.list(info_key)):
        raise PgCloudError(f"backup {backup_id} of server {server_name} not found")
    status = bi.decode(store.get(info_key)).get("status") or "EMPTY"
    if status != bi.DONE:
        raise BackupFailed(f"backup {backup_id} is {status}: only a DONE backup can be kept")
    store.put(_keep_key(store, server_name, backup_id), target.encode("utf-8"))
    log.info("backup %s of server %s is kept (%s)", backup_id, server_name, target)


def release_keep(store: ObjectStore, server_name: str, backup_id: str) -> None:
    """Remove the backup's keep annotation (nothing to do when it has none): the retention
    policy applies to it again."""
    key = _keep_key(store, server_name, backup_id)
    errors = store.delete_many([key])
    if errors:
        raise PgCloudError(f"cannot delete {key}: {errors[key]}")
    log.info("backup %s of server %s is no longer kept", backup_id, server_name)


def resolve(store: ObjectStore, server_name: str, backup_id: str) -> str:
    """A backup ID as typed, or the ID of a name or shortcut (catalog.parse_backup_id)."""
    if layout.is_backup_id(backup_id):
        return backup_id
    return parse_backup_id(read_catalog(store, server_name), backup_id)


if __name__ == "__main__":
    from .cli.backup_keep import main

    sys.exit(main())
