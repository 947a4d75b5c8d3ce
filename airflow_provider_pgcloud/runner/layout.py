"""Every key and name the engine reads or writes in a store, in one place.

Barman's cloud layout (what barman-cloud-backup writes and barman-cloud-restore reads), for a
destination `<store>/<path>` and a server:

    <path>/<server>/base/<backup_id>/backup.info             STARTED, then DONE or FAILED
    <path>/<server>/base/<backup_id>/data.tar[.gz|...]       PGDATA, the main archive
    <path>/<server>/base/<backup_id>/data_0001.tar[...]      more PGDATA archives
    <path>/<server>/base/<backup_id>/<oid>.tar[...]          a tablespace (and <oid>_0001...)
    <path>/<server>/base/<backup_id>/backup_label            a snapshot backup's label
    <path>/<server>/base/<backup_id>/annotations/keep        barman-cloud-backup-keep's mark:
                                                             `full` or `standalone`

and the WAL that barman-cloud-wal-archive pushes (read by wal_restore.py):

    <path>/<server>/wals/<TLI><LOG>/<segment>[.gz|.bz2|.xz|.snappy|.zst|.lz4]
    <path>/<server>/wals/<TLI><LOG>/<segment>.partial[...], <segment>.<offset>.backup[...]
    <path>/<server>/wals/<TLI>.history[...]                  history files: no hash directory

and this project's manifests, in a sibling prefix Barman never reads or deletes:

    <path>/<server>/pgcloud/<backup_id>/archives/<archive name>.json
    <path>/<server>/pgcloud/<backup_id>/manifest.json

A backup ID is Barman's: the client's local time to the second, `%Y%m%dT%H%M%S`. Archive names
are built from the codec registry (codecs.py), so the pattern that recognises one is the one
that names one.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re

from .codecs import CODECS

BASE_DIR = "base"
MANIFEST_DIR = "pgcloud"
DATA = "data"  # the archive of PGDATA; a tablespace's archive is named by its OID
INFO_NAME = "backup.info"
LABEL_NAME = "backup_label"
ANNOTATIONS_DIR = "annotations"
KEEP_ANNOTATION = "keep"

BACKUP_ID_FORMAT = "%Y%m%dT%H%M%S"
_BACKUP_ID = re.compile(r"^\d{8}T\d{6}$")
ARCHIVE_NAME = re.compile(
    r"^(?P<stem>(?P<archive>data|\d+)(?:_(?P<index>\d{4}))?)(?P<suffix>\.tar(?:"
    + "|".join(re.escape(codec.extension) for codec in CODECS.values() if codec.extension)
    + r")?)$"
)
"""An archive object's name as barman-cloud-restore recognises it: `data.tar.gz`,
`16384_0002.tar.zst`."""


# --- backup IDs ------------------------------------------------------------------------------

def new_backup_id(now: dt.datetime | None = None) -> str:
    """Barman's backup ID: the client's local time to the second."""
    return (now or dt.datetime.now()).strftime(BACKUP_ID_FORMAT)


def is_backup_id(value: str) -> bool:
    return bool(_BACKUP_ID.match(value))


# --- Barman's layout -------------------------------------------------------------------------

def server_prefix(base_path: str, server_name: str) -> str:
    """`<path>/<server>`: everything of one server."""
    return posixpath.join(base_path, server_name)


def base_prefix(base_path: str, server_name: str) -> str:
    """`<path>/<server>/base/`: the backups of one server, as a listing prefix."""
    return f"{server_prefix(base_path, server_name)}/{BASE_DIR}/"


def backup_prefix(base_path: str, server_name: str, backup_id: str) -> str:
    """`<path>/<server>/base/<backup_id>`: the directory of one backup's objects."""
    return posixpath.join(base_path, server_name, BASE_DIR, backup_id)


def server_of(backup_prefix: str) -> str:
    """The server name in `<path>/<server>/base/<id>`."""
    return posixpath.basename(posixpath.dirname(posixpath.dirname(backup_prefix)))


def backup_id_under(key: str, prefix: str) -> str | None:
    """The backup ID of `key` in `<prefix><backup_id>/...`, or None if that is not an ID."""
    if not key.startswith(prefix):
        return None
    candidate = key[len(prefix):].split("/", 1)[0]
    return candidate if is_backup_id(candidate) else None


def info_key(prefix: str) -> str:
    return f"{prefix}/{INFO_NAME}"


def label_key(prefix: str) -> str:
    """A snapshot backup's `backup_label`, stored as an object of its own."""
    return f"{prefix}/{LABEL_NAME}"


def annotation_key(prefix: str, name: str) -> str:
    """`<path>/<server>/base/<id>/annotations/<name>`: where Barman's annotations of a backup
    live (`keep`, written by barman-cloud-backup-keep)."""
    return f"{prefix}/{ANNOTATIONS_DIR}/{name}"


def keep_key(prefix: str) -> str:
    return annotation_key(prefix, KEEP_ANNOTATION)


def archive_stem(archive: str, index: int) -> str:
    """An archive object's name without its suffix, as Barman numbers split archives: `data`,
    `data_0001`, `16384_0002`."""
    return archive if index == 0 else f"{archive}_{index:04d}"


def archive_key(prefix: str, stem: str, suffix: str) -> str:
    return f"{prefix}/{stem}{suffix}"


def archive_name(key: str) -> str:
    return posixpath.basename(key)


def is_archive_name(name: str) -> bool:
    """True for an object barman-cloud-restore would extract (`data.tar.gz`, `16384_0001.tar`)."""
    return bool(ARCHIVE_NAME.match(name))


def archive_of(name: str) -> str:
    """The archive an archive object belongs to: `data` for `data_0003.tar.gz`."""
    match = ARCHIVE_NAME.match(name)
    return match["archive"] if match else name.split(".", 1)[0]


# --- WAL, as barman-cloud-wal-archive stores it -------------------------------------------------

WALS_DIR = "wals"
WAL_COMPRESSIONS: dict[str, str] = {
    **{codec.extension: codec.name for codec in CODECS.values() if codec.extension},
    ".xz": "xz",  # WAL only: barman-cloud-backup has no xz
}
"""The suffixes barman-cloud-wal-archive adds, by compression (the codec names of codecs.py)."""
_WAL_NAME = re.compile(
    r"^(?P<tli>[0-9A-Fa-f]{8})(?:(?P<log>[0-9A-Fa-f]{8})[0-9A-Fa-f]{8}"
    r"(?P<kind>\.[0-9A-Fa-f]{8}\.backup|\.partial)?|\.history)\Z"
)
"""What Barman accepts as a WAL file name: a segment (24 hex digits, either case), the same
with `.partial` or `.<offset>.backup`, or a timeline history file `<TLI>.history`."""


def is_wal_name(name: str) -> bool:
    return bool(_WAL_NAME.match(name))


def is_segment_name(name: str) -> bool:
    """A whole WAL segment: not a history, backup or partial file."""
    match = _WAL_NAME.match(name)
    return bool(match and match["log"] and not match["kind"])


def wal_timeline(name: str) -> int:
    """The timeline a WAL file name belongs to (its first 8 hex digits)."""
    match = _WAL_NAME.match(name)
    if not match:
        raise ValueError(f"{name} is not a WAL file name")
    return int(match["tli"], 16)


def is_history_name(name: str) -> bool:
    match = _WAL_NAME.match(name)
    return bool(match and not match["log"])


def is_backup_file_name(name: str) -> bool:
    """A `<segment>.<offset>.backup` file, which PostgreSQL archives at the end of a backup."""
    match = _WAL_NAME.match(name)
    return bool(match and match["kind"] and match["kind"].endswith(".backup"))


_HASH_DIR = re.compile(r"^(?P<tli>[0-9A-Fa-f]{8})(?P<log>[0-9A-Fa-f]{8})\Z")


def parse_wal_hash_dir(directory: str) -> tuple[int, int] | None:
    """(timeline, log) of a WAL hash directory name (`0000000100000002`), None for anything
    else."""
    match = _HASH_DIR.match(directory)
    return (int(match["tli"], 16), int(match["log"], 16)) if match else None


def wal_hash_dir(name: str) -> str:
    """The directory Barman files a WAL name under: timeline and log, the first 16 hex digits
    in upper case (`000000010000000A` for `000000010000000A000000FE.partial`); "" for a history
    file, which sits in `wals/` itself."""
    match = _WAL_NAME.match(name)
    if not match:
        raise ValueError(f"{name} is not a WAL file name")
    if not match["log"]:
        return ""
    return f"{match['tli']}{match['log']}".upper()


def wals_prefix(base_path: str, server_name: str) -> str:
    """`<path>/<server>/wals/`: all archived WAL of one server, as a listing prefix."""
    return f"{server_prefix(base_path, server_name)}/{WALS_DIR}/"


def wal_key(base_path: str, server_name: str, name: str, suffix: str = "") -> str:
    """`<path>/<server>/wals/<hash dir>/<name><suffix>`, e.g. suffix `.gz`."""
    return posixpath.join(base_path, server_name, WALS_DIR, wal_hash_dir(name), name + suffix)


def wal_compression(key: str) -> tuple[str, str | None]:
    """A stored WAL object's name and compression: `(name, "gzip")` for `.../<name>.gz`,
    `(name, None)` for one stored as is."""
    name = posixpath.basename(key)
    for suffix, compression in WAL_COMPRESSIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], compression
    return name, None


def stored_wal_name(key: str) -> str | None:
    """The WAL file name a stored object holds, as Barman reads its archive: the object's name
    is a WAL file name, or one plus a single compression suffix (`.gz`, `.zst`...); None for
    any other object."""
    name = posixpath.basename(key)
    if is_wal_name(name):
        return name
    stem, dot, suffix = name.rpartition(".")
    if dot and "." + suffix in WAL_COMPRESSIONS and is_wal_name(stem):
        return stem
    return None


# --- this project's manifests ----------------------------------------------------------------

def manifest_prefix(base_path: str, server_name: str) -> str:
    """`<path>/<server>/pgcloud/`: the manifests of one server, as a listing prefix."""
    return f"{server_prefix(base_path, server_name)}/{MANIFEST_DIR}/"


def manifest_root(backup_prefix: str) -> str:
    """`<path>/<server>/base/<id>` -> `<path>/<server>/pgcloud/<id>`."""
    server_dir, backup_id = posixpath.split(backup_prefix)
    return posixpath.join(posixpath.dirname(server_dir), MANIFEST_DIR, backup_id)


def archive_manifest_key(backup_prefix: str, archive: str) -> str:
    return f"{manifest_root(backup_prefix)}/archives/{archive}.json"


def index_key(backup_prefix: str) -> str:
    return f"{manifest_root(backup_prefix)}/manifest.json"
