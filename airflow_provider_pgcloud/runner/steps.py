"""The steps of a backup, each one function that the runner and an Airflow operator both call.

start_backup -> upload_chunk (once per chunk, in any process) -> stop_backup, or fail_backup
on any error; when the uploads ran apart (Airflow's tasks), `teardown.finish_backup` decides
from what they reported whether to stop or to fail. What passes between steps is a
`BackupState`: plain JSON-able data with no secrets, small enough for XCom whatever the
cluster's file count.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import backup_info as bi
from . import layout
from .codecs import compression_threads, get_codec
from .errors import BackupFailed, first_line
from .layout import DATA
from .manifest import (
    ArchiveManifestWriter,
    ManifestTarWriter,
    seal_archives,
)
from .plan import DEFAULT_MIN_ARCHIVE_SIZE, Chunk, plan_chunks
from .postgres import ClusterInfo, StartPoint, StopPoint
from .progress import Progress
from .session import Abortable, BackupSession
from .sizes import format_size
from .sources import Source
from .sources.local import ArchiveRoot, LocalFiles, archive_roots, relative_inside
from .storage.base import ObjectStore, StoreConfig
from .upload import PartWriter, part_size_for, parts_in_flight
from .watch import is_cancelled

log = logging.getLogger("pgcloud")

DEFAULT_MAX_ARCHIVE_SIZE = 100 << 30
DEFAULT_MIN_CHUNK_SIZE = 5 << 20


@dataclass(frozen=True)
class BackupOptions:
    """What a backup needs to know, from the command line or from operator arguments."""

    server_name: str
    store: StoreConfig
    conninfo: str = ""
    compression: str | None = None
    jobs: int = 2
    max_archive_size: int = DEFAULT_MAX_ARCHIVE_SIZE
    min_archive_size: int = DEFAULT_MIN_ARCHIVE_SIZE
    min_chunk_size: int = DEFAULT_MIN_CHUNK_SIZE
    immediate_checkpoint: bool = False
    backup_name: str | None = None
    max_bandwidth: int | None = None
    keepalive_interval: float = 60
    streaming: bool = False  # the server sends its files (sources/stream.py)
    accept_checksum_failures: bool = False  # streaming: damaged pages do not fail the run


@dataclass
class BackupState:
    """A started backup, as handed from the start step to the upload and stop steps."""

    backup_id: str
    prefix: str
    store: StoreConfig
    compression: str | None
    min_chunk_size: int
    backup_name: str | None
    jobs: int
    info: dict[str, Any]
    roots: list[ArchiveRoot]
    chunks: list[Chunk]
    started_at: float = field(default_factory=time.time)
    session_address: str | None = None  # the keeper's socket, when the session lives in one

    @property
    def planned_bytes(self) -> int:
        return sum(chunk.planned_bytes for chunk in self.chunks)

    @property
    def source(self) -> LocalFiles:
        """Where the archives' members come from: this host's files under `roots`."""
        return LocalFiles(self.roots)

    @property
    def server_name(self) -> str:
        return layout.server_of(self.prefix)

    def to_dict(self) -> dict[str, Any]:
        info = dict(self.info)
        info["begin_time"] = info["begin_time"].isoformat()
        return {
            "backup_id": self.backup_id,
            "prefix": self.prefix,
            "store": self.store.to_dict(),
            "compression": self.compression,
            "min_chunk_size": self.min_chunk_size,
            "backup_name": self.backup_name,
            "jobs": self.jobs,
            "info": info,
            "roots": [asdict(root) for root in self.roots],
            "chunks": [chunk.to_dict() for chunk in self.chunks],
            "started_at": self.started_at,
            "session_address": self.session_address,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupState:
        info = dict(data["info"])
        info["begin_time"] = dt.datetime.fromisoformat(info["begin_time"])
        if info.get("tablespaces"):
            info["tablespaces"] = [tuple(t) for t in info["tablespaces"]]
        return cls(
            backup_id=data["backup_id"],
            prefix=data["prefix"],
            store=StoreConfig.from_dict(data["store"]),
            compression=data["compression"],
            min_chunk_size=data["min_chunk_size"],
            backup_name=data["backup_name"],
            jobs=data["jobs"],
            info=info,
            roots=[ArchiveRoot(**{**r, "skip": tuple(r["skip"])}) for r in data["roots"]],
            chunks=[Chunk.from_dict(c) for c in data["chunks"]],
            started_at=data["started_at"],
            session_address=data.get("session_address"),
        )


@dataclass(frozen=True)
class ChunkResult:
    name: str
    key: str
    raw_bytes: int
    stored_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def _check_readable(path: str) -> None:
    if not os.access(path, os.R_OK | os.X_OK):
        raise BackupFailed(
            f"cannot read {path}: permission denied (run as the PostgreSQL OS user)"
        )


def unique_backup_id(store: ObjectStore, server_name: str) -> str:
    """Barman's second-resolution ID, waiting a second if that ID is already taken."""
    while True:
        backup_id = layout.new_backup_id()
        prefix = layout.backup_prefix(store.base_path, server_name, backup_id)
        if not any(True for _ in store.list(prefix + "/")):
            return backup_id
        time.sleep(1)


def started_info(cluster: ClusterInfo, start: StartPoint, server_name: str) -> dict[str, Any]:
    """backup.info's fields once pg_backup_start returned (status STARTED).

    `server_name` is the literal `cloud` for archive backups, as barman-cloud-backup writes it,
    and the real server name for snapshot backups.
    """
    begin_wal, begin_offset = bi.wal_name(start.lsn, start.timeline, cluster.xlog_segment_size)
    return {
        "status": bi.STARTED,
        "server_name": server_name,
        "pgdata": cluster.pgdata,
        "version": cluster.version,
        "xlog_segment_size": cluster.xlog_segment_size,
        "config_file": cluster.config_file,
        "hba_file": cluster.hba_file,
        "ident_file": cluster.ident_file,
        "included_files": cluster.included_files,
        "tablespaces": [(t.name, t.oid, t.location) for t in cluster.tablespaces] or None,
        "data_checksums": cluster.data_checksums,
        "summarize_wal": cluster.summarize_wal,
        "cluster_size": cluster.cluster_size,
        "systemid": cluster.systemid,
        "begin_time": start.time,
        "begin_xlog": start.lsn,
        "begin_wal": begin_wal,
        "begin_offset": begin_offset,
        "timeline": start.timeline,
    }


def start_backup(options: BackupOptions, session: BackupSession, store: ObjectStore) -> BackupState:
    """Start the PostgreSQL backup, record it as STARTED, and plan the chunks.

    PGDATA and tablespace access is checked before the backup starts, so an unreadable data
    directory starts nothing. On failure after pg_backup_start the caller runs `fail_backup`.
    """
    cluster = session.cluster_info()
    tablespaces = [(t.name, t.oid, t.location) for t in cluster.tablespaces]
    roots = archive_roots(cluster.pgdata, tablespaces, cluster.major)
    for root in roots:
        _check_readable(root.path)
    LocalFiles(roots).check_cluster(cluster.systemid)
    store.check()
    backup_id = unique_backup_id(store, options.server_name)
    prefix = layout.backup_prefix(store.base_path, options.server_name, backup_id)
    start = session.start(f"Barman backup cloud {backup_id}", options.immediate_checkpoint)
    info = started_info(cluster, start, "cloud")
    state = BackupState(
        backup_id=backup_id, prefix=prefix, store=options.store, compression=options.compression,
        min_chunk_size=options.min_chunk_size, backup_name=options.backup_name,
        jobs=options.jobs, info=info, roots=roots, chunks=[],
    )
    store.put(layout.info_key(prefix), bi.encode(info))  # STARTED: rewritten later, never locked
    try:
        state.chunks = plan_chunks(
            roots, options.jobs, options.max_archive_size, options.min_archive_size,
            options.compression,
        )
    except BaseException as exc:
        # No state reaches the caller, so record the failure here: never leave STARTED behind.
        fail_backup(state, store, f"failure planning the backup ({first_line(exc)})", session)
        raise
    for chunk in state.chunks:
        log.debug("chunk %s: %d files, %s, %r .. %r", chunk.name, chunk.files,
                  format_size(chunk.planned_bytes), chunk.first, chunk.last)
    log.info(
        "backup %s started at %s: %s in %d archive objects",
        backup_id, start.lsn, format_size(state.planned_bytes), len(state.chunks),
    )
    return state


def store_archive(
    state: BackupState, store: ObjectStore, key: str, fill: Callable[[ManifestTarWriter], None],
    *, planned_bytes: int = 0, threads: int = 0, max_in_flight: int = 2,
    throttle: Callable[[int], None] | None = None, cancelled: Any = None,
) -> tuple[int, int]:
    """Write one archive object: `fill` adds its members to a tar compressed as one stream,
    uploaded in parts as it grows; then its manifest, both under the store's retention lock
    when it has one (`--lock-days`). A failure aborts the upload, so no partial object is ever
    stored. `cancelled` is checked as compressed data leaves. Returns the tar's size and the
    stored object's."""
    writer = PartWriter(store, key, part_size_for(planned_bytes, state.min_chunk_size, store),
                        max_in_flight=max_in_flight, throttle=throttle, lock=True)

    def sink(data: bytes) -> None:
        if is_cancelled(cancelled):  # also mid-file: a 1 GiB file must not delay a failure
            raise BackupFailed("cancelled because another part of the backup failed")
        writer.write(data)

    manifest = ArchiveManifestWriter(store, state.prefix, key, state.compression)
    tar = ManifestTarWriter(get_codec(state.compression).new(threads), sink,
                            manifest.algorithm, record=manifest.add)
    try:
        fill(tar)
        tar.close()
        writer.close()
    except BaseException:
        writer.abort()
        manifest.abort()
        raise
    try:
        manifest.close(tar, writer.bytes_written)
    except BaseException:
        manifest.abort()
        raise
    return tar.raw_bytes, writer.bytes_written


def upload_chunk(
    state: BackupState,
    chunk: Chunk,
    store: ObjectStore,
    *,
    throttle: Callable[[int], None] | None = None,
    cancelled: threading.Event | Callable[[], bool] | Any | None = None,
    source: Source | None = None,
) -> ChunkResult:
    """Stream one chunk's members (from `source`, by default the state's local files) as one
    compressed tar object, then its manifest. Safe to retry: same keys. `cancelled` (an
    Event, or a callable such as watch.SessionWatch that returns True or raises) is checked
    before every member and as compressed data leaves."""
    if source is None:
        state.source.check_cluster(state.info.get("systemid"))
    key = layout.archive_key(state.prefix, chunk.name, get_codec(state.compression).suffix)
    progress = Progress(chunk.name, chunk.planned_bytes, log)

    def fill(tar: ManifestTarWriter) -> None:
        for member in (source or state.source).members(chunk):
            if is_cancelled(cancelled):
                raise BackupFailed("cancelled because another part of the backup failed")
            before = tar.raw_bytes
            tar.add(member)
            progress.advance(tar.raw_bytes - before)

    threads = max(chunk.threads, compression_threads(state.jobs))
    raw_bytes, stored_bytes = store_archive(
        state, store, key, fill, planned_bytes=chunk.planned_bytes, threads=threads,
        max_in_flight=parts_in_flight(state.jobs), throttle=throttle, cancelled=cancelled,
    )
    parallel = (f", compressed by {threads} threads"
                if threads > 1 and get_codec(state.compression).threaded else "")
    log.info("%s stored as %s (%s%s): %s", chunk.name, layout.archive_name(key),
             format_size(stored_bytes), parallel, progress.summary())
    return ChunkResult(chunk.name, key, raw_bytes, stored_bytes, progress.seconds)


def _label_chunk_index(state: BackupState) -> int:
    return sum(1 for chunk in state.chunks if chunk.archive == DATA)


def expected_keys(state: BackupState) -> list[str]:
    """Every archive object a finished backup must have."""
    suffix = get_codec(state.compression).suffix
    stems = [chunk.name for chunk in state.chunks]
    stems.append(layout.archive_stem(DATA, _label_chunk_index(state)))
    return [layout.archive_key(state.prefix, stem, suffix) for stem in stems]


def _external_config_files(state: BackupState) -> list[tuple[str, bytes, int]]:
    """postgresql.conf, pg_hba.conf and pg_ident.conf kept outside PGDATA (Debian keeps them in
    /etc/postgresql), stored in the data archive under their base names as Barman does, so a
    restored directory can start. A missing ident file is tolerated, as in Barman."""
    pgdata = state.info["pgdata"]
    files = []
    for field_name in ("config_file", "hba_file", "ident_file"):
        path = state.info.get(field_name)
        if not path or relative_inside(path, pgdata) is not None:
            continue
        try:
            with open(path, "rb") as handle:
                files.append((os.path.basename(path), handle.read(),
                              stat.S_IMODE(os.fstat(handle.fileno()).st_mode)))
        except FileNotFoundError:
            if field_name != "ident_file":
                raise BackupFailed(f"configuration file {path} is missing") from None
        except PermissionError:
            raise BackupFailed(f"cannot read configuration file {path}: permission denied") \
                from None
    outside = [f for f in state.info.get("included_files") or ()
               if relative_inside(f, pgdata) is None]
    if outside:
        log.warning("included configuration files outside PGDATA are not in the backup; "
                    "back them up separately: %s", ", ".join(outside))
    return files


def done_info(state: BackupState, point: StopPoint, **fields: Any) -> dict[str, Any]:
    """The DONE backup.info of `state`, from where pg_backup_stop left off (and `fields`)."""
    info = dict(state.info)
    end_wal, end_offset = bi.wal_name(point.lsn, point.timeline, info["xlog_segment_size"])
    info.update(
        status=bi.DONE,
        backup_label=point.backup_label,
        end_time=point.time,
        end_xlog=point.lsn,
        end_wal=end_wal,
        end_offset=end_offset,
        backup_name=state.backup_name,
        **fields,
    )
    return info


def stop_backup(state: BackupState, session: BackupSession, store: ObjectStore) -> dict[str, Any]:
    """Stop the backup, store pg_control and backup_label last, then write backup.info DONE.

    DONE is written only after every expected object is confirmed in the store, so a backup
    with a missing piece can never be listed as complete. With `--lock-days`, DONE is the
    one backup.info written under the lock: the STARTED one before it must be replaceable
    (GCS refuses to overwrite a retained object; S3 and Azure would keep the STARTED version
    locked for nothing), and DONE is never written again.
    """
    state.source.check_cluster(state.info.get("systemid"))
    pgdata = state.source.root(DATA).path
    control_path = os.path.join(pgdata, "global", "pg_control")
    with open(control_path, "rb") as handle:
        pg_control = handle.read()
    config_files = _external_config_files(state)
    point = session.stop(f"barman_{state.backup_id}")
    key = layout.archive_key(state.prefix, layout.archive_stem(DATA, _label_chunk_index(state)),
                             get_codec(state.compression).suffix)

    def fill(tar: ManifestTarWriter) -> None:
        tar.add_bytes("global/pg_control", pg_control)
        for name, data, mode in config_files:
            tar.add_bytes(name, data, mode=mode)
        tar.add_bytes("backup_label", point.backup_label.encode(), mode=0o600)

    store_archive(state, store, key, fill)
    seal_archives(store, state.prefix, expected_keys(state), state.server_name)
    elapsed = time.time() - state.started_at
    info = done_info(state, point, copy_stats={
        "total_time": round(elapsed, 6), "number_of_workers": state.jobs,
        "analysis_time": 0, "copy_time": round(elapsed, 6),
    })
    store.put(layout.info_key(state.prefix), bi.encode(info), lock=True)  # final: locked
    log.info("backup %s DONE: %s planned, stop at %s, %.1fs in all",
             state.backup_id, format_size(state.planned_bytes), point.lsn, elapsed)
    return info


def fail_backup(state: BackupState, store: ObjectStore, reason: str,
                session: Abortable | None = None) -> None:
    """Abort the database backup (if we still hold it) and record the backup as FAILED."""
    if session is not None:
        try:
            session.abort()
        except Exception as exc:  # the session may be what broke
            log.warning("could not abort the database backup session: %s", exc)
    reason = first_line(reason)
    info = dict(state.info, status=bi.FAILED, error=reason, backup_name=state.backup_name)
    # not locked: a failed backup is no backup to protect, and -b must be able to delete it
    # once its archives' locks expire
    store.put(layout.info_key(state.prefix), bi.encode(info))
    log.error("backup %s FAILED: %s", state.backup_id, reason)
