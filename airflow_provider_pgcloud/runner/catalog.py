"""Finding a backup in the store by what a user types: an ID, a name, `latest` or `oldest`;
and the whole catalog of a server, as barman-cloud-backup-delete and -keep read it.

verify and restore both take `BACKUP_ID` as barman-cloud-restore does
(`CloudBackupCatalog.parse_backup_id`): an ID is used as it is; `latest`/`last` and
`oldest`/`first` pick among DONE backups; anything else is a backup name, which must be unique.

`read_catalog` lists a server's `base/` once and reads every backup.info and keep annotation in
it; `parse_backup_id` resolves what a user typed over that catalog the way the delete and keep
commands do (shortcuts skip only STARTED backups, names match backups of any status).
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from . import backup_info as bi
from . import layout
from .errors import BackupFailed, InputError, PgCloudError, first_line
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


# --- the whole catalog, as the delete and keep commands read it ----------------------------

@dataclass
class CatalogEntry:
    """One backup of the catalog: its backup.info, its objects and its keep annotation."""

    backup_id: str
    info: dict[str, Any]
    keys: list[str] = field(default_factory=list)  # every object under base/<backup_id>/
    has_keep: bool = False  # a keep annotation exists (whatever it says)
    keep: str | None = None  # its first line, as Barman reads it ("full", "standalone")

    @property
    def status(self) -> str:
        return str(self.info.get("status") or "EMPTY")  # Barman's default for no status

    @property
    def timeline(self) -> int | None:
        value = self.info.get("timeline")
        return value if isinstance(value, int) else None

    @property
    def begin_wal(self) -> str | None:
        return self.info.get("begin_wal")

    @property
    def end_wal(self) -> str | None:
        return self.info.get("end_wal")

    @property
    def backup_name(self) -> str | None:
        return self.info.get("backup_name")


@dataclass
class Catalog:
    """Every backup of one server that has a readable backup.info, by ID."""

    server_name: str
    base: str  # <path>/<server>/base/
    backups: dict[str, CatalogEntry] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # backup ID -> why

    def ids(self) -> list[str]:
        """Backup IDs in Barman's order: sorted as text, which is oldest first."""
        return sorted(self.backups)

    def prefix(self, backup_id: str) -> str:
        return f"{self.base}{backup_id}"


def _first_line_of(data: bytes) -> str:
    """What Barman takes from an annotation: its first line, newline included."""
    return io.BytesIO(data).readline().decode("utf-8")


def read_catalog(store: ObjectStore, server_name: str) -> Catalog:
    """The server's backups: one listing of `<path>/<server>/base/`, then each backup.info
    and each keep annotation that exists. A directory without backup.info is no backup (as
    for barman-cloud-backup-list); one whose backup.info cannot be read is in `unreadable`."""
    base = layout.base_prefix(store.base_path, server_name)
    catalog = Catalog(server_name, base)
    groups: dict[str, list[str]] = defaultdict(list)
    for key, _size in store.list(base):
        directory, slash, _rest = key[len(base):].partition("/")
        if slash and directory:
            groups[directory].append(key)
    for backup_id in sorted(groups):
        keys = groups[backup_id]
        info_key = layout.info_key(catalog.prefix(backup_id))
        if info_key not in keys:
            continue
        try:
            info = bi.decode(store.get(info_key))
            unknown = set(info) - bi.FIELDS
            if unknown:
                raise ValueError(f"unknown fields {sorted(unknown)}")
        except Exception as exc:
            catalog.unreadable[backup_id] = first_line(exc)
            continue
        entry = CatalogEntry(backup_id, info, keys)
        keep_key = layout.keep_key(catalog.prefix(backup_id))
        if keep_key in keys:
            entry.has_keep = True
            entry.keep = _first_line_of(store.get(keep_key))
        catalog.backups[backup_id] = entry
    return catalog


def parse_backup_id(catalog: Catalog, text: str) -> str:
    """What barman-cloud-backup-delete -b and barman-cloud-backup-keep accept: a backup ID as
    it is (whether or not it exists); `latest`/`last` and `oldest`/`first`, the newest and
    oldest backup that is not STARTED; `last-failed`, the newest FAILED one; otherwise a backup
    name, which must match exactly one backup of any status. PgCloudError (exit 4, as Barman)
    when nothing matches or the name is not unique."""
    if layout.is_backup_id(text):
        return text
    ids = catalog.ids()
    candidates: list[str] = []
    if text in ("latest", "last"):
        candidates = [i for i in reversed(ids) if catalog.backups[i].status != bi.STARTED]
    elif text in ("oldest", "first"):
        candidates = [i for i in ids if catalog.backups[i].status != bi.STARTED]
    elif text == "last-failed":
        candidates = [i for i in reversed(ids) if catalog.backups[i].status == bi.FAILED]
    if candidates:
        return candidates[0]
    named = [i for i in ids if catalog.backups[i].backup_name == text]
    if len(named) > 1:
        raise PgCloudError(f"more than one backup is named {text!r} (use a backup ID): "
                           + " ".join(named))
    if not named:
        raise PgCloudError(f"no backup {text!r} for server {catalog.server_name}")
    return named[0]
