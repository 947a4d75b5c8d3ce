"""Finding a backup in the store by what a user types: an ID, a name, `latest` or `oldest`.

verify and restore both take `BACKUP_ID` as barman-cloud-restore does
(`CloudBackupCatalog.parse_backup_id`): an ID is used as it is; `latest`/`last` and
`oldest`/`first` pick among DONE backups; anything else is a backup name, which must be unique.
"""

from __future__ import annotations

from typing import Any

from . import backup_info as bi
from . import layout
from .errors import BackupFailed, InputError
from .storage import ObjectStore


def done_backups(store: ObjectStore, server_name: str) -> list[tuple[str, dict[str, Any]]]:
    """(backup ID, backup.info) of every DONE backup of the server, oldest first."""
    base = layout.base_prefix(store.base_path, server_name)
    infos = sorted(k for k, _ in store.list(base) if k.endswith("/" + layout.INFO_NAME))
    done: list[tuple[str, dict[str, Any]]] = []
    for key in infos:
        candidate = layout.backup_id_under(key, base)
        if candidate is None:
            continue
        try:
            info = bi.decode(store.get(key))
        except Exception:
            continue
        if info.get("status") == bi.DONE:
            done.append((candidate, info))
    return done


def resolve_backup_id(store: ObjectStore, server_name: str, backup_id: str) -> str:
    """A backup ID as given, or `latest`/`last`/`oldest`/`first` (DONE backups) or a name.

    Raises BackupFailed (exit 1) when nothing matches, InputError when a name is not unique.
    """
    if layout.is_backup_id(backup_id):
        return backup_id
    done = done_backups(store, server_name)
    if backup_id in ("latest", "last") and done:
        return done[-1][0]
    if backup_id in ("oldest", "first") and done:
        return done[0][0]
    named = [candidate for candidate, info in done if info.get("backup_name") == backup_id]
    if len(named) > 1:
        raise InputError(f"Multiple backups found matching name '{backup_id}'")
    if named:
        return named[0]
    raise BackupFailed(f"no DONE backup {backup_id!r} for server {server_name}")
