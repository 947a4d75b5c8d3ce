"""The local-files source: the cluster's own files, walked the way Barman archives them.

Every archive (PGDATA as `data`, each tablespace by its OID) is walked in one deterministic
order: entries sorted by name, a directory compared as `name/`. In that order a path sorts
right after its parent and before the parent's next sibling, so a chunk (plan.py) is fully
described by the keys of its first and last entry. That keeps chunk descriptors tiny (XCom
stays small for a million files) and lets an upload task re-walk only the subtrees its range
covers. Exclusions are Barman's and pg_basebackup's.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BackupFailed
from ..layout import DATA

if TYPE_CHECKING:
    from ..plan import Chunk

# Contents dropped, directory kept (anchored at the PGDATA root), as Barman and pg_basebackup do.
_DATA_EMPTY_DIRS = frozenset(
    {
        "pg_wal",
        "pg_xlog",
        "pg_log",
        "log",
        "pg_dynshmem",
        "pg_notify",
        "pg_replslot",
        "pg_serial",
        "pg_stat_tmp",
        "pg_snapshots",
        "pg_subtrans",
    }
)
# Files dropped at the PGDATA root. pg_control is added by the stop step, so it is the newest
# copy; backup_label/tablespace_map would be leftovers of an exclusive backup.
_DATA_ROOT_FILES = frozenset(
    {
        "postmaster.pid",
        "postmaster.opts",
        "recovery.conf",
        "standby.signal",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "backup_manifest",
    }
)
# Files dropped at the root of a finished base backup on disk (Barman's backup directory in
# hook mode): only what Barman's EXCLUDE_LIST names; its backup_label and pg_control are the
# backup's own.
_COPY_ROOT_FILES = frozenset(
    {"postmaster.pid", "postmaster.opts", "recovery.conf", "standby.signal"}
)
# Names dropped at any depth, in every archive.
_ANYWHERE = ("pgsql_tmp*", "postgresql.auto.conf.tmp", "current_logfiles.tmp", "pg_internal.init")

TAR_BLOCK = 512


@dataclass(frozen=True)
class Entry:
    """One walked filesystem entry: an archive.Member, with its place in the walk."""

    key: str  # sort key: relative path, with a trailing "/" for directories ("" is the root)
    path: str  # absolute path on disk
    name: str  # member name inside the archive
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def tar_size(self) -> int:
        """Bytes this entry takes in a tar stream (header, padded data, long-name headers)."""
        size = TAR_BLOCK
        if stat.S_ISREG(self.st.st_mode):
            size += -(-self.st.st_size // TAR_BLOCK) * TAR_BLOCK
        if len(self.name.encode()) > 99:
            size += 3 * TAR_BLOCK
        return size


@dataclass(frozen=True)
class ArchiveRoot:
    """Where one archive's files come from."""

    archive: str  # "data" or a tablespace OID
    path: str
    tablespace_prefix: str | None = None  # "PG_15_" for tablespaces: only that subtree is kept
    skip: tuple[str, ...] = ()  # relative paths to leave out (tablespaces located inside PGDATA)
    finished_copy: bool = False  # a finished backup on disk: keep pg_control and backup_label


def _excluded(root: ArchiveRoot, rel: str, name: str, is_dir: bool, depth: int) -> bool:
    if any(fnmatchcase(name, pattern) for pattern in _ANYWHERE):
        return True
    parent = rel.rpartition("/")[0]
    # temporary relations: <digits...>/t<digits>_<digits...>, e.g. base/5/t3_16384
    if not is_dir and fnmatchcase(name, "t[0-9]*_[0-9]*") and fnmatchcase(
        parent.rpartition("/")[2], "[0-9]*"
    ):
        return True
    if root.archive == DATA:
        if depth == 1:
            dropped = _COPY_ROOT_FILES if root.finished_copy else _DATA_ROOT_FILES
            return (not is_dir and name in dropped) or rel in root.skip
        if depth == 2 and parent in _DATA_EMPTY_DIRS:
            return True
        return (rel == "global/pg_control" and not root.finished_copy) or rel in root.skip
    return depth == 1 and not (is_dir and root.tablespace_prefix and name.startswith(
        root.tablespace_prefix
    ))


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def walk(root: ArchiveRoot, lo: str = "", hi: str | None = None) -> Iterator[Entry]:
    """Yield the archive's entries with lo <= key <= hi, in key order.

    Symlinked directories (pg_tblspc/<oid>, a symlinked pg_wal) are never archived, as in
    Barman; symlinks to files are kept as symlinks. Entries that vanish are skipped.
    """
    top = _lstat(root.path)
    if top is None:
        raise BackupFailed(f"directory {root.path} does not exist")
    if root.archive == DATA and lo <= "" and (hi is None or hi >= ""):
        yield Entry("", root.path, ".", top)
    yield from _walk_dir(root, root.path, "", 1, lo, hi)


def _walk_dir(
    root: ArchiveRoot, path: str, rel_dir: str, depth: int, lo: str, hi: str | None
) -> Iterator[Entry]:
    try:
        with os.scandir(path) as it:
            listing = [(e.name, e.path, e.is_dir(follow_symlinks=False)) for e in it]
    except FileNotFoundError:
        return
    except PermissionError as exc:
        raise BackupFailed(f"cannot read {path}: permission denied") from exc
    listing.sort(key=lambda item: item[0] + "/" if item[2] else item[0])
    for name, full, is_dir in listing:
        rel = f"{rel_dir}{name}"
        key = rel + "/" if is_dir else rel
        if hi is not None and key > hi:
            return
        if key < lo and not (is_dir and lo.startswith(key)):
            continue
        if _excluded(root, rel, name, is_dir, depth):
            continue
        st = _lstat(full)
        if st is None:
            continue
        if stat.S_ISLNK(st.st_mode):
            if os.path.isdir(full):
                continue  # symlinked directories are not archived
        elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            continue  # sockets, fifos, devices
        if key >= lo:
            yield Entry(key, full, rel, st)
        if is_dir:
            yield from _walk_dir(root, full, key, depth + 1, lo, hi)


def tablespace_prefix(major: str) -> str:
    """The per-version directory PostgreSQL creates inside a tablespace: `PG_15_`, `PG_9.6_`."""
    return f"PG_{major}_"


def relative_inside(path: str, pgdata: str) -> str | None:
    """The path relative to PGDATA if it lies inside it, else None."""
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(pgdata))
    try:
        return str(real.relative_to(base))
    except ValueError:
        return None


def system_identifier(pgdata: str) -> str:
    """The system identifier recorded in a data directory: the first field of
    global/pg_control, a 64-bit integer in the machine's byte order."""
    path = os.path.join(pgdata, "global", "pg_control")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except FileNotFoundError:
        raise BackupFailed(f"{path} does not exist: {pgdata} holds no PostgreSQL cluster "
                           "(run the backup on the database host)") from None
    except PermissionError:
        raise BackupFailed(f"cannot read {path}: permission denied (run as the PostgreSQL "
                           "OS user)") from None
    return str(int.from_bytes(head, sys.byteorder))


class LocalFiles:
    """The source of an archive backup taken from the cluster's files on this host."""

    def __init__(self, roots: Sequence[ArchiveRoot]) -> None:
        self.roots = list(roots)

    def root(self, archive: str) -> ArchiveRoot:
        return next(root for root in self.roots if root.archive == archive)

    def check_cluster(self, systemid: str | None) -> None:
        """Refuse files of another cluster than the one the backup is connected to.

        The data directory's path comes from the server; on another host (an Airflow worker
        that is not the database host) the same path may hold a different cluster, or a
        copy. Its system identifier says which cluster the files are.
        """
        if not systemid:
            return  # a finished backup on disk (Barman hook mode): no server to compare with
        pgdata = self.root(DATA).path
        found = system_identifier(pgdata)
        if found != str(systemid):
            raise BackupFailed(
                f"{pgdata} on this host holds the cluster with system identifier {found}, "
                f"not the one this backup is connected to ({systemid}): run the backup on the "
                "database host (in Airflow, pin its tasks there with `queue`)"
            )

    def members(self, chunk: Chunk) -> Iterator[Entry]:
        """The members of one planned chunk, in archive order."""
        return walk(self.root(chunk.archive), chunk.first, chunk.last)


def archive_roots(
    pgdata: str, tablespaces: Sequence[tuple[str, int, str]], major: str
) -> list[ArchiveRoot]:
    """The archives of a running cluster: PGDATA (without the tablespaces located inside it)
    and one per tablespace."""
    inside = tuple(
        rel for _, _, location in tablespaces if (rel := relative_inside(location, pgdata))
    )
    roots = [ArchiveRoot(DATA, os.path.realpath(pgdata), skip=inside)]
    roots += [
        ArchiveRoot(str(oid), location, tablespace_prefix=tablespace_prefix(major))
        for _, oid, location in tablespaces
    ]
    return roots
