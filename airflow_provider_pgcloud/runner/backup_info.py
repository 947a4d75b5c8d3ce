"""Barman-compatible `backup.info`: its fields, their encoding, and the names it accepts.

Barman's reader refuses an unknown key for *every* backup in the catalog, so only Barman's own
field names are written, each encoded the way `barman.infofile` loads it. Keys whose value is
None are left out, which keeps the file readable by older Barman releases too.
"""

from __future__ import annotations

import ast
import datetime as dt
from typing import Any

from .layout import is_backup_id

# Barman 3.20's BackupInfo fields, by how their values are written.
_PLAIN = frozenset(
    {
        "pgdata", "begin_xlog", "end_xlog", "begin_wal", "end_wal", "status", "server_name",
        "error", "mode", "config_file", "hba_file", "ident_file", "systemid", "compression",
        "backup_name", "data_checksums", "summarize_wal", "parent_backup_id", "encryption",
        "children_backup_ids",
    }
)
_INT = frozenset(
    {
        "version", "timeline", "begin_offset", "end_offset", "xlog_segment_size", "size",
        "deduplicated_size", "cluster_size",
    }
)
_TIME = frozenset({"begin_time", "end_time"})
_LITERAL = frozenset(
    {"backup_label", "tablespaces", "included_files", "copy_stats", "snapshots_info"}
)
FIELDS = _PLAIN | _INT | _TIME | _LITERAL

STARTED, DONE, FAILED = "STARTED", "DONE", "FAILED"
RESERVED_NAMES = frozenset(
    {"latest", "last", "oldest", "first", "last-failed", "latest-full", "last-full", "auto"}
)


def encode(info: dict[str, Any]) -> bytes:
    """Serialise to Barman's `key=value` lines, sorted by key, None values omitted."""
    unknown = set(info) - FIELDS
    if unknown:
        raise ValueError(f"not Barman backup.info fields: {sorted(unknown)}")
    lines = []
    for key in sorted(info):
        value = info[key]
        if value is None:
            continue
        text = repr(value) if key in _LITERAL else str(value)
        if "\n" in text:
            raise ValueError(f"backup.info value of {key} spans lines")
        lines.append(f"{key}={text}\n")
    return "".join(lines).encode("utf-8")


def decode(data: bytes) -> dict[str, Any]:
    """Parse a `backup.info` as Barman does (values typed per field)."""
    info: dict[str, Any] = {}
    for line in data.decode("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, text = line.partition("=")
        key, text = key.strip(), text.strip()
        if text == "None":
            info[key] = None
        elif key in _INT:
            info[key] = int(text)
        elif key in _TIME:
            info[key] = dt.datetime.fromisoformat(text)
        elif key in _LITERAL:
            info[key] = ast.literal_eval(text)
        else:
            info[key] = text
    return info


def check_backup_name(name: str) -> str:
    """Refuse names Barman cannot resolve back to a backup, with Barman's messages."""
    if not name:
        raise ValueError("Backup name cannot be empty")
    if is_backup_id(name):
        raise ValueError(f"Backup name '{name}' is not allowed: backup ID")
    if name in RESERVED_NAMES:
        raise ValueError(f"Backup name '{name}' is not allowed: reserved word")
    return name


def wal_name(lsn: str, timeline: int, segment_size: int) -> tuple[str, int]:
    """The WAL file holding `lsn` (`X/X` text form) and the offset in it."""
    high, low = (int(part, 16) for part in lsn.split("/"))
    position = (high << 32) | low
    segno, offset = divmod(position, segment_size)
    per_id = 0x1_0000_0000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}", offset
