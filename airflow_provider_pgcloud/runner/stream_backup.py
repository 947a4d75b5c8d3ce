"""A backup taken over the replication protocol: the server streams its files (sources/stream.py).

    start (BASE_BACKUP: checkpoint, backup.info STARTED)
      -> upload (each archive the server sends, re-cut into objects of Barman's layout)
      -> stop (end position, completeness check, backup.info DONE) -- or FAILED on any error

The stored backup is the local-files backup's layout: `data.tar*` objects (then `data_0001`...)
holding PGDATA with `backup_label` and `global/pg_control` as the server sends them, one
`<oid>.tar*` (and `<oid>_0001`...) per tablespace, no `pg_tblspc/<oid>` links, a manifest per
object. Objects are cut at about a quarter of an archive per job (never above -S), so a
parallel restore has work for every job; the one being written is compressed on every core
by codecs that can (zstd), and uploaded in parts as it grows. Nothing reads the cluster's
files: the OS user needs no access to PGDATA, only a role with REPLICATION that may read the
settings backup.info records (pg_read_all_settings, or a superuser).

Pages whose checksum failed while the server read them are recorded in the manifest; the
backup is still DONE (it restores, with those pages as they were), and the run fails unless
`accept_checksum_failures` says otherwise, naming the files.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

from . import backup_info as bi
from . import layout
from .cleanup import clean_after_backup
from .codecs import compression_threads, get_codec
from .errors import BackupFailed
from .layout import DATA
from .manifest import ManifestTarWriter, seal_archives
from .phases import Phases, record_failure
from .plan import chunk_target
from .postgres import StopPoint
from .progress import Progress
from .sizes import format_size
from .sources.stream import (
    ArchiveReader,
    BaseBackupStream,
    ChecksumFailure,
    StreamedTablespace,
)
from .steps import (
    BackupOptions,
    BackupState,
    done_info,
    started_info,
    store_archive,
    unique_backup_id,
)
from .storage import ObjectStore, open_store
from .upload import BandwidthLimit, parts_in_flight

log = logging.getLogger("pgcloud")

_TYPE_BITS = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK}


def _stat(member: tarfile.TarInfo) -> os.stat_result:
    """The header fields of a streamed member in the shape the tar writer records."""
    kind = _TYPE_BITS.get(member.type, stat.S_IFREG)
    return os.stat_result((kind | member.mode, 0, 0, 1, member.uid, member.gid, member.size,
                           int(member.mtime), int(member.mtime), int(member.mtime)))


def _archive_of(name: str) -> str:
    """`base.tar` -> `data`; `16384.tar` -> `16384`."""
    stem = name.removesuffix(".tar")
    return DATA if stem == "base" else stem


class _Members:
    """A server archive's members in order, one held back when it did not fit an object.

    The server writes plain ustar (no pax or GNU extension headers: it refuses names that do
    not fit), so each member is one 512-byte header, its data, and zeros to the next 512-byte
    boundary; a zero block or the archive's end ends it. Parsed here rather than by tarfile's
    stream mode, whose buffers copied every byte several times more: file data goes from the
    server's messages to the tar writer with one copy (benchmarks/README.md, "Streaming
    source").
    """

    def __init__(self, archive: str, reader: ArchiveReader) -> None:
        self.archive = archive
        self._reader = reader
        self._held: tarfile.TarInfo | None = None
        self._skip = 0  # data and padding of the member last read, not consumed yet
        self._ended = False
        self.backup_label: bytes | None = None

    def _next(self) -> tarfile.TarInfo | None:
        while self._skip:
            piece = self._reader.read_some(self._skip)
            if not piece:
                raise BackupFailed(f"the server's {self.archive} archive ended inside a file")
            self._skip -= len(piece)
        header = self._reader.read(tarfile.BLOCKSIZE)
        if not header or header.count(0) == tarfile.BLOCKSIZE:
            return None
        try:
            member = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise BackupFailed(f"the server's {self.archive} archive is not a tar archive "
                               f"this runner reads: {exc}") from None
        if member.type not in _TYPE_BITS and not member.isfile():
            raise BackupFailed(f"the server's {self.archive} archive holds a member of "
                               f"unexpected type {member.type!r}: {member.name}")
        self._skip = -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE \
            if member.isfile() else 0
        return member

    def peek(self) -> tarfile.TarInfo | None:
        while self._held is None and not self._ended:
            member = self._next()
            if member is None:
                self._ended = True
                break
            name = member.name.removeprefix("./").rstrip("/")
            if self.archive == DATA and member.issym() and name.startswith("pg_tblspc/"):
                continue  # Barman's restore links the tablespaces itself
            member.name = name
            self._held = member
        return self._held

    def _data(self, size: int) -> bytes:
        """Up to `size` bytes of the current file's data, b"" only at the archive's end (bytes:
        snappy takes no memoryview)."""
        piece = self._reader.read_some(size)
        self._skip -= len(piece)
        return bytes(piece)

    def add_next(self, tar: ManifestTarWriter) -> None:
        member = self.peek()
        assert member is not None
        self._held = None
        st = _stat(member)
        if member.isdir():
            tar.add_dir(member.name, st)
        elif member.issym():
            tar.add_symlink_to(member.name, member.linkname, st)
        elif member.isfile():
            if self.archive == DATA and member.name == "backup_label":
                self.backup_label = self._reader.read(member.size)
                self._skip -= len(self.backup_label)
                if len(self.backup_label) < member.size:
                    raise BackupFailed("the server's backup_label was cut short")
                tar.add_bytes(member.name, self.backup_label, mode=member.mode)
            else:
                tar.add_stream(member.name, st, member.size, self._data)


def _fill(members: _Members, target: int, progress: Progress, tar: ManifestTarWriter) -> None:
    """Add members to one object until the next would take it past `target` bytes."""
    while (member := members.peek()) is not None:
        if tar.raw_bytes and tar.raw_bytes + member.size > target:
            return
        before = tar.raw_bytes
        members.add_next(tar)
        progress.advance(tar.raw_bytes - before)


def upload_stream(
    state: BackupState, stream: BaseBackupStream, store: ObjectStore,
    tablespaces: list[StreamedTablespace], options: BackupOptions,
) -> tuple[list[str], str]:
    """Store every archive the server sends as Barman's objects; return their keys and the
    backup label."""
    sizes = {str(t.oid) if t.oid is not None else DATA: t.size for t in tablespaces}
    progress = Progress("backup", sum(sizes.values()), log)
    throttle = (BandwidthLimit(options.max_bandwidth, SimpleNamespace(value=0.0),
                               threading.Lock()) if options.max_bandwidth else None)
    suffix = get_codec(state.compression).suffix
    keys: list[str] = []
    label: bytes | None = None
    for name, _location, reader in stream.archives():
        members = _Members(_archive_of(name), reader)
        # the planner's rule (about four per job, for a parallel restore), never above -S
        target = min(chunk_target(sizes.get(members.archive, 0), options.jobs,
                                  options.min_archive_size), options.max_archive_size)
        index = 0
        while index == 0 or members.peek() is not None:
            stem = layout.archive_stem(members.archive, index)
            key = layout.archive_key(state.prefix, stem, suffix)
            raw, stored = store_archive(
                state, store, key, partial(_fill, members, target, progress),
                planned_bytes=target,
                threads=compression_threads(1), max_in_flight=parts_in_flight(options.jobs),
                throttle=throttle,
            )
            log.info("%s stored as %s: %s (%s stored)", stem, layout.archive_name(key),
                     format_size(raw), format_size(stored))
            keys.append(key)
            index += 1
        label = label or members.backup_label
    if label is None:
        raise BackupFailed("the server sent no backup_label")
    log.info("%s", progress.summary())
    return keys, label.decode()


def _located(failure: ChecksumFailure,
             tablespaces: list[StreamedTablespace]) -> dict[str, Any]:
    """Which archive and member a damaged file is, for the manifest."""
    for tablespace in tablespaces:
        if tablespace.oid is not None and tablespace.location and failure.file.startswith(
                tablespace.location.rstrip("/") + "/"):
            path = failure.file[len(tablespace.location.rstrip("/")) + 1:]
            return {"archive": str(tablespace.oid), "path": path, **failure.to_dict()}
    return {"archive": DATA, "path": failure.file.removeprefix("./"), **failure.to_dict()}


def run_stream_backup(options: BackupOptions, *, password: str | None = None,
                      store: ObjectStore | None = None,
                      on_started: Callable[[BackupState], None] | None = None) -> str:
    """Take one complete backup over the replication protocol; return its ID. Raises a
    PgCloudError on failure (backup.info FAILED once it started), and BackupFailed after a
    DONE backup that holds pages whose checksum failed, unless they are accepted.
    `on_started` learns the state once backup.info says STARTED (an Airflow task records it,
    so that a later task can end a backup whose process died)."""
    stream = BaseBackupStream(options.conninfo, password)
    store = store or open_store(options.store)
    started = time.time()
    try:
        with Phases(record_failure(store, stream)) as phases:
            phases.enter("starting the backup")
            cluster = stream.cluster_info()
            store.check()
            backup_id = unique_backup_id(store, options.server_name)
            prefix = layout.backup_prefix(store.base_path, options.server_name, backup_id)
            start, tablespaces = stream.start(f"Barman backup cloud {backup_id}",
                                              options.immediate_checkpoint)
            info = started_info(cluster, start, "cloud")
            state = BackupState(
                backup_id=backup_id, prefix=prefix, store=options.store,
                compression=options.compression, min_chunk_size=options.min_chunk_size,
                backup_name=options.backup_name, jobs=options.jobs, info=info, roots=[],
                chunks=[], started_at=started,
            )
            store.put(layout.info_key(prefix), bi.encode(info))
            phases.state = state
            if on_started is not None:
                on_started(state)
            log.info("backup %s started at %s, streamed by the server: %s", backup_id,
                     start.lsn, format_size(sum(t.size for t in tablespaces)))
            phases.enter("uploading data")
            keys, label = upload_stream(state, stream, store, tablespaces, options)
            phases.enter("stopping the backup")
            lsn, timeline = stream.finish()
            failures = [_located(f, tablespaces) for f in stream.checksum_failures.values()]
            seal_archives(store, prefix, keys, options.server_name, failures or None)
            elapsed = time.time() - started
            done = done_info(state, StopPoint(lsn, timeline, dt.datetime.now(dt.UTC), label),
                             copy_stats={"total_time": round(elapsed, 6),
                                         "number_of_workers": 1, "analysis_time": 0,
                                         "copy_time": round(elapsed, 6)})
            store.put(layout.info_key(prefix), bi.encode(done), lock=True)  # final: locked
            log.info("backup %s DONE: stop at %s, %.1fs in all", backup_id, lsn, elapsed)
        clean_after_backup(store, options.server_name, backup_id)
    finally:
        stream.abort()
        store.close()
    if stream.checksum_failures:
        damaged = "; ".join(f.describe() for f in stream.checksum_failures.values())
        message = (f"checksum verification failed while the server read {damaged}: backup "
                   f"{backup_id} is stored with these pages as they were")
        if not options.accept_checksum_failures:
            raise BackupFailed(message + " (accept them with --accept-checksum-failures)")
        log.warning("%s", message)
    return backup_id
