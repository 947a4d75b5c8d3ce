"""Check a stored backup against its manifest, without restoring it.

    pgcloud-verify [OPTIONS] SOURCE_URL SERVER_NAME BACKUP_ID   (runner/cli/verify.py)

Every archive object is streamed from the store once, decompressed and read as tar, and each
member is compared with the manifest written while the backup was taken (manifest.py): the
same members in the same order, each file with its size and checksum, directories and symlinks
with their mode and target. Also checked: backup.info says DONE; the set of archive objects
barman-cloud-restore would extract is exactly the manifest's (a stray `data_0007.tar` would be
extracted on top of the backup); each object's size is the size uploaded, and it holds one
compression stream and nothing after it (Barman's restore silently drops what follows the
first). Nothing is written. Memory stays at a few MiB whatever the archive size.

Exit codes: 0 the backup matches its manifest; 1 it does not (the first bad archive and file
are named), or it is not DONE, or it has no manifest; 2 the store is unreachable; 3 bad input.

`verify_backup(store, server_name, backup_id)` is the engine function (an Airflow task can
wrap it): it returns a VerifyReport, or raises VerifyFailed (a BackupFailed, exit code 1).
"""

from __future__ import annotations

import json
import logging
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from typing import Any

from . import backup_info as bi
from . import layout
from .archive import StoredArchive, member_type
from .catalog import resolve_backup_id
from .codecs import Decompressor, get_codec
from .errors import BackupFailed, first_line
from .manifest import FORMAT_ARCHIVE, FORMAT_INDEX, new_checksum
from .sizes import format_size
from .storage import ObjectStore

log = logging.getLogger("pgcloud")

READ_SIZE = 1 << 20


class VerifyFailed(BackupFailed):
    """The stored backup does not match its manifest. `archive`/`path` name the first bad
    archive object and member (None when the problem is not one member)."""

    def __init__(self, message: str, archive: str | None = None, path: str | None = None):
        super().__init__(message)
        self.archive, self.path = archive, path


@dataclass(frozen=True)
class VerifyReport:
    backup_id: str
    archives: int
    files: int
    bytes: int  # archived file bytes checked
    stored_bytes: int
    seconds: float

    def summary(self) -> str:
        return (f"backup {self.backup_id} matches its manifest: {self.archives} archives, "
                f"{self.files} files, {format_size(self.bytes)} checked "
                f"({format_size(self.stored_bytes)} stored) in {self.seconds:.1f}s")


# --- reading an archive object --------------------------------------------------------------

def _decompressor(compression: str | None) -> Decompressor:
    try:
        return get_codec(compression).decompressor()
    except ValueError:
        raise BackupFailed(f"unknown compression {compression!r} in the manifest") from None


# --- checks ----------------------------------------------------------------------------------

def _check_archive(store: ObjectStore, key: str, manifest: dict[str, Any],
                   stored_size: int) -> tuple[int, int]:
    """Stream one archive object and compare it with its manifest; (files, bytes) checked."""
    archive = manifest["archive"]

    def fail(message: str, path: str | None = None) -> VerifyFailed:
        where = f"{archive}: {path}: " if path is not None else f"{archive}: "
        return VerifyFailed(where + message, archive, path)

    decompressor = _decompressor(manifest.get("compression"))
    algorithm = manifest["checksum_algorithm"]
    stored_checksum = new_checksum(algorithm)
    source = StoredArchive(store.iter_object(key, READ_SIZE), decompressor, stored_checksum)
    expected = iter(manifest["members"])
    files = nbytes = 0
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=READ_SIZE) as tar:  # type: ignore[call-overload]
            for member in tar:
                want = next(expected, None)
                if want is None:
                    raise fail("in the archive but not in the manifest", member.name)
                if member.name != want["path"]:
                    raise fail(f"found where the manifest has {want['path']!r}", member.name)
                kind = member_type(member.type)
                if kind != want["type"]:
                    raise fail(f"is a {kind}, the manifest says {want['type']}", member.name)
                if member.mode != want["mode"]:
                    raise fail(f"mode {member.mode:o}, the manifest says {want['mode']:o}",
                               member.name)
                if "mtime" in want and int(member.mtime) != want["mtime"]:
                    raise fail("modification time differs from the manifest", member.name)
                if kind == "symlink" and member.linkname != want.get("target"):
                    raise fail(f"links to {member.linkname!r}, the manifest says "
                               f"{want.get('target')!r}", member.name)
                if kind != "file":
                    continue
                if member.size != want["size"]:
                    raise fail(f"{member.size} bytes, the manifest says {want['size']}",
                               member.name)
                checksum = new_checksum(algorithm)
                reader = tar.extractfile(member)
                assert reader is not None
                while data := reader.read(READ_SIZE):
                    checksum.update(data)
                if checksum.hexdigest() != want["checksum"]:
                    raise fail(f"{algorithm} checksum {checksum.hexdigest()} does not match "
                               f"the manifest's {want['checksum']}", member.name)
                files += 1
                nbytes += member.size
        missing = next(expected, None)
        if missing is not None:
            raise fail("in the manifest but not in the archive", missing["path"])
        source.drain()
    except VerifyFailed:
        raise
    except (tarfile.TarError, ValueError, EOFError, zlib.error) as exc:
        raise fail(f"unreadable: {first_line(exc)}") from None
    if decompressor.trailing:
        raise fail(f"{decompressor.trailing} bytes follow the compression stream; "
                   "barman-cloud-restore would ignore them")
    if source.stored_bytes != stored_size:
        raise fail(f"read {source.stored_bytes} bytes of a {stored_size}-byte object")
    # members first: they name what differs; then the object as a whole
    if stored_size != manifest["stored_bytes"]:
        raise fail(f"stored object is {stored_size} bytes, {manifest['stored_bytes']} were "
                   "uploaded (its files match the manifest)")
    want = manifest.get("stored_checksum")
    if want is not None and stored_checksum.hexdigest() != want:
        raise fail(f"stored object's {algorithm} checksum {stored_checksum.hexdigest()} is not "
                   f"the uploaded one's {want} (its files match the manifest)")
    return files, nbytes


def verify_backup(store: ObjectStore, server_name: str, backup_id: str) -> VerifyReport:
    """Check one stored backup against its manifest (see the module doc).

    `backup_id` may be an ID, `latest`, `oldest` or a backup name. Raises VerifyFailed at the
    first difference; returns a VerifyReport when everything matches.
    """
    started = time.monotonic()
    backup_id = resolve_backup_id(store, server_name, backup_id)
    prefix = layout.backup_prefix(store.base_path, server_name, backup_id)
    stored = dict(store.list(prefix + "/"))
    if layout.info_key(prefix) not in stored:
        raise VerifyFailed(f"backup {backup_id} of server {server_name} not found")
    info = bi.decode(store.get(layout.info_key(prefix)))
    if info.get("status") != bi.DONE:
        raise VerifyFailed(f"backup {backup_id} is {info.get('status')}, not DONE")
    try:
        index = json.loads(store.get(layout.index_key(prefix)))
    except Exception:
        if not any(k.startswith(layout.manifest_root(prefix) + "/") for k, _ in
                   store.list(layout.manifest_root(prefix) + "/")):
            raise VerifyFailed(f"backup {backup_id} has no manifest (taken by another tool, "
                               "or before manifests existed)") from None
        raise VerifyFailed(f"the manifest index of backup {backup_id} is missing or "
                           "unreadable") from None
    if index.get("format") != FORMAT_INDEX:
        raise VerifyFailed(f"{layout.index_key(prefix)} is not a pgcloud manifest")

    listed = [entry["archive"] for entry in index["archives"]]
    restorable = {key[len(prefix) + 1:] for key in stored
                  if layout.is_archive_name(key[len(prefix) + 1:])}
    extra = sorted(restorable - set(listed))
    if extra:
        raise VerifyFailed(f"{extra[0]}: barman-cloud-restore would extract it, but it is not "
                           "in the manifest", extra[0])
    archives = files = nbytes = stored_bytes = 0
    root = layout.manifest_root(prefix)
    for entry in index["archives"]:
        name = entry["archive"]
        key = f"{prefix}/{name}"
        if key not in stored:
            raise VerifyFailed(f"{name}: missing from the store", name)
        try:
            manifest = json.loads(store.get(f"{root}/{entry['manifest']}"))
        except Exception as exc:
            raise VerifyFailed(f"{name}: its manifest is missing or unreadable ({exc})",
                               name) from None
        if manifest.get("format") != FORMAT_ARCHIVE or manifest.get("archive") != name:
            raise VerifyFailed(f"{name}: its manifest does not describe it", name)
        log.debug("checking %s (%s)", name, format_size(stored[key]))
        checked_files, checked_bytes = _check_archive(store, key, manifest, stored[key])
        archives += 1
        files += checked_files
        nbytes += checked_bytes
        stored_bytes += stored[key]
    mains = {layout.archive_of(name) for name in listed}
    for stem in [layout.DATA, *(str(oid) for _, oid, _ in info.get("tablespaces") or ())]:
        if stem not in mains:
            raise VerifyFailed(f"{stem}.tar*: the main archive is missing", stem)
    damaged = index.get("checksum_failures") or []
    if damaged:
        first = damaged[0]
        names = "; ".join(
            f"{d['archive']}: {d['path']} (blocks {', '.join(map(str, d['blocks']))}"
            f"{', ' + str(d['total']) + ' in all' if d['total'] > len(d['blocks']) else ''})"
            for d in damaged)
        raise VerifyFailed(f"the archives match the manifest, but the server found pages "
                           f"whose checksum failed as it sent them: {names}",
                           first["archive"], first["path"])
    return VerifyReport(backup_id, archives, files, nbytes, stored_bytes,
                        time.monotonic() - started)


if __name__ == "__main__":
    from .cli.verify import main

    sys.exit(main())
