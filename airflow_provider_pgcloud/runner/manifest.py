"""The backup manifest: every archived file with its size and checksum, computed while streaming.

Barman stores no checksums, so a damaged archive object is found only when a restore fails (or,
worse, when a restored cluster misbehaves). Each archive object here gets a manifest written by
whoever uploads it (a runner worker process, an Airflow upload task), from the bytes as they go
into the tar stream: nothing is read twice. The stop step then writes an index naming every
archive of the backup, before backup.info says DONE. `verify.py` checks the stored archives
against it without restoring anything.

Where (for backup `<path>/<server>/base/<id>/`):
  <path>/<server>/pgcloud/<id>/archives/<archive object name>.json   one per archive object
  <path>/<server>/pgcloud/<id>/manifest.json                         the index, written last

A sibling prefix, not `base/<id>/`: barman-cloud-backup-list reads only `base/`, restore only
the archives and backup.info it recognises, and barman-cloud-backup-delete deletes only those,
so nothing of Barman's sees these objects; an object inside `base/<id>/` would be left behind
by barman-cloud-backup-delete as a directory without backup.info. Manifests whose backup was
deleted are removed by `cleanup.py`. Both are written once, under the store's retention lock
when the backup has one (`--lock-days`), as the archives are.

Archive manifest (JSON):
  {"format": "pgcloud-archive-manifest", "version": 1, "backup_id": ..., "archive": "data.tar.gz",
   "compression": "gzip" | null, "checksum_algorithm": "CRC32C" | "SHA256",
   "stored_bytes": <object size>, "stored_checksum": <checksum of the object's bytes>,
   "tar_bytes": <uncompressed tar size>,
   "members": [{"path": "base/1/1259", "type": "file", "mode": 384, "mtime": 1700000000,
                "size": 8192, "checksum": "<hex>"},
               {"path": "base", "type": "dir", "mode": 448, "mtime": ...},
               {"path": "x", "type": "symlink", "target": "/elsewhere", ...}, ...]}
Members are in archive order. The document is written out as the archive grows
(`ArchiveManifestWriter`): the keys known only at the end come after "members".
`checksum` is CRC32C (as PostgreSQL's backup_manifest uses by default; hex of the big-endian
value) when the CPU has CRC32C instructions (the `crc32c`
package uses them), else SHA-256; the manifest says which. It covers exactly the bytes
archived for the file (a file that shrank while it was read is archived zero-padded, one that
grew is cut at its header size).
`stored_checksum` (same algorithm) covers the object as uploaded, compressed: it catches damage
the member checks cannot see (tar padding, a recompressed but equal archive).

Index (JSON):
  {"format": "pgcloud-manifest", "version": 1, "backup_id": ..., "server_name": ...,
   "created": <ISO time>, "archives": [{"archive": "data.tar.gz",
   "manifest": "archives/data.tar.gz.json", "manifest_bytes": <size>}, ...]}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable
from typing import Any, Protocol

import crc32c

from .archive import TarWriter, member_type
from .codecs import Compressor
from .errors import BackupFailed
from .layout import archive_manifest_key, index_key, is_archive_name, manifest_root
from .storage.base import ObjectStore
from .upload import PartWriter

FORMAT_ARCHIVE = "pgcloud-archive-manifest"
FORMAT_INDEX = "pgcloud-manifest"
VERSION = 1


class Checksum(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc32c:
    """CRC32C through the `crc32c` package: SSE4.2/ARMv8 instructions, any buffer without a
    copy, the GIL released on large ones (about 20 GB/s here; google-crc32c's Checksum does
    4.5 GB/s and wants read-only bytes, so every bytearray view had to be copied first)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = crc32c.crc32c(data, self._value)

    def hexdigest(self) -> str:
        return self._value.to_bytes(4, "big").hex()


def default_algorithm() -> str:
    """CRC32C when the CPU computes it (GB/s), else SHA-256 (faster than CRC32C in software)."""
    return "CRC32C" if crc32c.hardware_based else "SHA256"


def new_checksum(algorithm: str) -> Checksum:
    if algorithm == "SHA256":
        return hashlib.sha256()
    if algorithm == "CRC32C":
        return _Crc32c()
    raise BackupFailed(f"unknown checksum algorithm {algorithm!r}")


# --- recording while streaming ---------------------------------------------------------------

class ManifestTarWriter(TarWriter):
    """A TarWriter that records every member, checksumming file data as it streams past.

    It relies on TarWriter sending each filesystem member through `_header` and every byte
    through `_write` (the data of a file right after its header); in-memory members come
    through `add_bytes`. The verify tests compare what it records with what is stored.
    """

    def __init__(self, compressor: Compressor, sink: Callable[[bytes], None],
                 algorithm: str | None = None,
                 record: Callable[[dict[str, Any]], None] | None = None) -> None:
        """`record` gets each member's entry once it is complete, in archive order (a file's
        after its data, with its checksum); without it they are kept in `entries`."""
        self.algorithm = algorithm or default_algorithm()
        self._stored = new_checksum(self.algorithm)  # of the compressed bytes, as stored

        def checksummed(data: bytes) -> None:
            self._stored.update(data)
            sink(data)

        super().__init__(compressor, checksummed)
        self.entries: list[dict[str, Any]] = []
        self._record = record or self.entries.append
        self._checksum: Checksum | None = None
        self._remaining = 0
        self._current: dict[str, Any] = {}

    def _header(self, name: str, st: os.stat_result, kind: bytes, size: int = 0,
                linkname: str = "") -> None:
        super()._header(name, st, kind, size, linkname)
        entry: dict[str, Any] = {"path": name, "type": member_type(kind),
                                 "mode": stat.S_IMODE(st.st_mode), "mtime": int(st.st_mtime)}
        if kind == tarfile.SYMTYPE:
            entry["target"] = linkname
        elif kind == tarfile.REGTYPE:
            entry["size"] = size
            self._checksum, self._remaining, self._current = (
                new_checksum(self.algorithm), size, entry)
            if not size:
                self._finish_file()
            return  # recorded when its data is complete
        self._record(entry)

    def _write(self, data: bytes) -> None:
        super()._write(data)
        if self._remaining and self._checksum is not None:
            piece = data if len(data) <= self._remaining else memoryview(data)[:self._remaining]
            self._checksum.update(piece)
            self._remaining -= len(piece)
            if not self._remaining:
                self._finish_file()

    @property
    def stored_checksum(self) -> str:
        """Checksum of the whole object as uploaded (after the tar is closed)."""
        return self._stored.hexdigest()

    def _finish_file(self) -> None:
        assert self._checksum is not None
        self._current["checksum"] = self._checksum.hexdigest()
        self._record(self._current)
        self._checksum, self._current = None, {}

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600) -> None:
        super().add_bytes(name, data, mode)
        checksum = new_checksum(self.algorithm)
        checksum.update(data)
        self._record({"path": name, "type": "file", "mode": mode, "size": len(data),
                      "checksum": checksum.hexdigest()})


class ArchiveManifestWriter:
    """The manifest of one archive object, written out as the archive grows.

    Entries are serialised as they complete (BATCH at a time) and sent through a PartWriter
    of the store's smallest part size, so a chunk of a million small files holds a few MiB of
    manifest, not a million entries, until its end. The figures known only at the end
    (stored size and checksum, tar size) close the JSON object; its readers take the keys in
    any order. Call `close` after the archive object is stored (a manifest names only a
    stored archive), or `abort`.
    """

    def __init__(self, store: ObjectStore, backup_prefix: str, key: str,
                 compression: str | None) -> None:
        self.algorithm = default_algorithm()  # the ManifestTarWriter's too
        archive = posixpath.basename(key)
        self.key = archive_manifest_key(backup_prefix, archive)
        self._writer = PartWriter(store, self.key, store.min_part_size, max_in_flight=1,
                                  lock=True)
        head = {"format": FORMAT_ARCHIVE, "version": VERSION,
                "backup_id": posixpath.basename(backup_prefix), "archive": archive,
                "compression": compression, "checksum_algorithm": self.algorithm}
        self._writer.write(json.dumps(head, separators=(",", ":"))[:-1].encode()
                           + b',"members":[')
        self._entries: list[dict[str, Any]] = []
        self._first = True

    BATCH = 4096
    """Entries serialised together (one json.dumps call costs less per entry for many)."""

    def add(self, entry: dict[str, Any]) -> None:
        self._entries.append(entry)
        if len(self._entries) >= self.BATCH:
            self._flush_entries()

    def _flush_entries(self) -> None:
        if self._entries:
            text = json.dumps(self._entries, separators=(",", ":"))[1:-1]
            self._writer.write((text if self._first else "," + text).encode())
            self._first = False
            self._entries.clear()

    def close(self, tar: ManifestTarWriter, stored_bytes: int) -> str:
        self._flush_entries()
        tail = {"stored_bytes": stored_bytes, "stored_checksum": tar.stored_checksum,
                "tar_bytes": tar.raw_bytes}
        self._writer.write(b"]," + json.dumps(tail, separators=(",", ":"))[1:].encode())
        self._writer.close()
        return self.key

    def abort(self) -> None:
        self._writer.abort()


def seal_archives(store: ObjectStore, backup_prefix: str, archive_keys: list[str],
                  server_name: str, checksum_failures: list[dict[str, Any]] | None = None) -> str:
    """The completeness check every backup with archives passes before backup.info says DONE:
    every expected archive object is stored, no other one is (barman-cloud-restore would
    extract a leftover `data_0007.tar` of an earlier attempt on top of this backup), and every
    archive has its manifest; then the manifest's index is written. Raises BackupFailed naming
    what is missing or left over."""
    stored = {key for key, _ in store.list(backup_prefix + "/")}
    missing = [key for key in archive_keys if key not in stored]
    if missing:
        raise BackupFailed(f"archive objects missing from the store: {', '.join(missing)}")
    stale = sorted(key for key in stored - set(archive_keys)
                   if is_archive_name(key[len(backup_prefix) + 1:]))
    if stale:
        raise BackupFailed(
            f"objects of an earlier upload remain under {backup_prefix}/: {', '.join(stale)}"
            " (delete them, or upload with the options used before)"
        )
    return write_index(store, backup_prefix, archive_keys, server_name, checksum_failures)


def write_index(store: ObjectStore, backup_prefix: str, archive_keys: list[str],
                server_name: str, checksum_failures: list[dict[str, Any]] | None = None) -> str:
    """Write the index of a finished backup's manifest; every archive must have its manifest.

    Raises BackupFailed naming the archives whose manifest is missing, so a backup is never
    DONE without a complete manifest. `checksum_failures` (archive, path, blocks, total) are
    the pages the server found damaged while it sent them: recorded, and reported by verify.
    """
    root = manifest_root(backup_prefix)
    stored = dict(store.list(f"{root}/archives/"))
    archives, missing = [], []
    for key in archive_keys:
        name = posixpath.basename(key)
        manifest_key = archive_manifest_key(backup_prefix, name)
        if manifest_key not in stored:
            missing.append(name)
            continue
        archives.append({"archive": name, "manifest": manifest_key[len(root) + 1:],
                         "manifest_bytes": stored[manifest_key]})
    if missing:
        raise BackupFailed(f"archive manifests missing from the store: {', '.join(missing)}")
    document = {
        "format": FORMAT_INDEX,
        "version": VERSION,
        "backup_id": posixpath.basename(backup_prefix),
        "server_name": server_name,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "archives": archives,
    }
    if checksum_failures:
        document["checksum_failures"] = checksum_failures
    key = index_key(backup_prefix)
    store.put(key, json.dumps(document, indent=1).encode(), lock=True)
    return key


