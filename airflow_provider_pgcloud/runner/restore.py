"""Restore a backup from the store into a directory: Barman's cloud layout read the other way.

    pgcloud-restore [OPTIONS] SOURCE_URL SERVER_NAME BACKUP_ID RECOVERY_DIR   (cli/restore.py)

What barman-cloud-restore does, and what it does not:
- The same input: `BACKUP_ID` as an ID, a name, `latest` or `oldest`; `--tablespace NAME:DIR`;
  backups written by this project or by Barman itself (every codec, split archives,
  tablespaces). The recovery directory and every tablespace directory must be missing or empty.
- Parallel: `jobs` archive objects are fetched and unpacked at once, each in its own process
  (decompression and tar parsing are CPU work that threads of one interpreter would share).
  Within a process, a large object is fetched as several ranged GETs in flight while it is
  decompressed in order, so the network and the CPU overlap. Memory is bounded by
  `RANGES_AHEAD` ranges per process, and nothing is spooled to temporary files.
- Checked: when the backup has a pgcloud manifest, every member is compared with it as it is
  written (path, type, size, checksum), and each object with its uploaded size and checksum.
  The first difference stops the restore, naming the archive object and the file.
- Never complete by mistake: `global/pg_control` is written under a temporary name and renamed
  only after every archive was restored and checked. A restore that failed or was killed
  leaves a directory PostgreSQL refuses to start on ("could not open file global/pg_control").
- Recovery settings, on request (`RecoverySettings`): `recovery.signal`, a `restore_command`
  (pgcloud-wal-restore, built by the command line), and a recovery target, appended to
  `postgresql.auto.conf`.

`restore_backup(...)` is the engine function; it returns a RestoreReport or raises
RestoreFailed (exit 1) / InputError (exit 3).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import grp
import json
import logging
import os
import posixpath
import pwd
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from . import backup_info as bi
from . import layout
from .catalog import resolve_backup_id
from .codecs import CODECS, get_codec
from .cpu import worker_processes
from .errors import BackupFailed, InputError, first_line
from .manifest import FORMAT_ARCHIVE, FORMAT_INDEX, Checksum, new_checksum
from .progress import Progress
from .sizes import format_size
from .storage import ObjectStore, StoreConfig, open_store
from .untar import Header, TarError, TarReader
from .workers import Workers, worker_cancelled, worker_store

log = logging.getLogger("pgcloud")

RANGE_SIZE = 8 << 20
"""Bytes per ranged GET of a large object."""
RANGES_AHEAD = 4
"""Ranged GETs in flight per object: its memory bound is about RANGES_AHEAD x RANGE_SIZE."""
READ_SIZE = 1 << 20
CONTROL_FILE = "global/pg_control"
PARTIAL_SUFFIX = ".pgcloud-restoring"
"""pg_control's name until the whole restore succeeded."""


class RestoreFailed(BackupFailed):
    """The backup could not be restored (exit 1); `archive`/`path` name what was bad."""

    def __init__(self, message: str, archive: str | None = None, path: str | None = None):
        super().__init__(message)
        self.archive, self.path = archive, path


RECOVERY_TARGETS = ("time", "lsn", "xid", "name", "immediate")
TARGET_ACTIONS = ("pause", "promote", "shutdown")


@dataclass(frozen=True)
class RecoverySettings:
    """What PostgreSQL needs to recover the restored backup by itself.

    `restore_command` fetches WAL (the command line builds one that calls pgcloud-wal-restore
    with the same store; it holds no credential). `target` is one of RECOVERY_TARGETS with its
    value (none for `immediate`); without it, recovery replays all archived WAL.
    """

    restore_command: str
    target: tuple[str, str | None] | None = None
    target_action: str | None = None
    target_timeline: str | None = None

    def settings(self) -> dict[str, str]:
        values = {"restore_command": self.restore_command}
        if self.target is not None:
            kind, value = self.target
            values[f"recovery_target_{kind}" if kind != "immediate" else "recovery_target"] = (
                "immediate" if kind == "immediate" else str(value))
        if self.target_action:
            values["recovery_target_action"] = self.target_action
        if self.target_timeline:
            values["recovery_target_timeline"] = self.target_timeline
        return values


@dataclass(frozen=True)
class RestoreReport:
    backup_id: str
    archives: int
    files: int
    bytes: int
    stored_bytes: int
    seconds: float
    checked: bool  # every file was compared with the backup's manifest

    def summary(self) -> str:
        rate = self.bytes / max(self.seconds, 1e-6) / 1e6
        check = ", every file checked against the manifest" if self.checked else ""
        return (f"restored backup {self.backup_id}: {self.archives} archives, {self.files} "
                f"files, {format_size(self.bytes)} ({format_size(self.stored_bytes)} stored) "
                f"in {self.seconds:.1f}s, {rate:.1f} MB/s{check}")


@dataclass(frozen=True)
class _Job:
    """One archive object to restore into `directory`."""

    key: str
    name: str  # the object's name, e.g. data_0002.tar.gz
    size: int
    directory: str
    compression: str | None
    manifest_key: str | None = None
    is_data: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Counts:
    files: int = 0
    bytes: int = 0
    stored: int = 0


# --- the plan ----------------------------------------------------------------------------------

def _empty_or_missing(path: str, what: str) -> None:
    if os.path.isdir(path) and os.listdir(path):
        raise InputError(f"Destination {path} already exists and it is not empty ({what})")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"Destination {path} exists and is not a directory ({what})")


def _compression_of(name: str) -> str | None:
    """The codec of an archive object, from its suffix as Barman's restore reads it."""
    match = layout.ARCHIVE_NAME.match(name)
    assert match is not None
    extension = match["suffix"][len(".tar"):]
    codec = next(codec for codec in CODECS.values() if codec.extension == extension)
    return None if codec.name == "none" else codec.name


def _is_main(name: str) -> bool:
    """`data.tar.gz`, not `data_0001.tar.gz`."""
    match = layout.ARCHIVE_NAME.match(name)
    return match is not None and match["index"] is None


def _plan(store: ObjectStore, prefix: str, info: dict[str, Any], destination: str,
          relocate: Mapping[str, str]) -> tuple[list[_Job], dict[str, str], bool]:
    """The archive objects to restore, where each goes, and whether a manifest checks them.

    Returns (jobs largest first, {oid: tablespace directory}, checked).
    """
    tablespaces: dict[str, str] = {}
    names = {name for name, _, _ in info.get("tablespaces") or ()}
    unknown = sorted(set(relocate) - names)
    if unknown:
        raise InputError(f"--tablespace {unknown[0]}: the backup has no tablespace of that name"
                         f" (it has: {', '.join(sorted(names)) or 'none'})")
    for name, oid, location in info.get("tablespaces") or ():
        target = os.path.realpath(relocate.get(name, location))
        _empty_or_missing(target, f"tablespace {name}")
        tablespaces[str(oid)] = target
    stored = dict(store.list(prefix + "/"))
    objects = {key[len(prefix) + 1:]: size for key, size in stored.items()
               if layout.is_archive_name(key[len(prefix) + 1:])}
    checked = False
    manifests: dict[str, str] = {}
    try:
        index = json.loads(store.get(layout.index_key(prefix)))
    except Exception:
        index = None
    if index is not None:
        if index.get("format") != FORMAT_INDEX:
            raise RestoreFailed(f"{layout.index_key(prefix)} is not a pgcloud manifest")
        root = layout.manifest_root(prefix)
        manifests = {entry["archive"]: f"{root}/{entry['manifest']}"
                     for entry in index["archives"]}
        missing = sorted(set(manifests) - set(objects))
        if missing:
            raise RestoreFailed(f"{missing[0]}: in the backup's manifest but missing from the "
                                "store", missing[0])
        extra = sorted(set(objects) - set(manifests))
        if extra:
            raise RestoreFailed(f"{extra[0]}: in the store but not in the backup's manifest",
                                extra[0])
        checked = True
    jobs: list[_Job] = []
    for name, size in objects.items():
        archive = layout.archive_of(name)
        if archive == layout.DATA:
            directory = destination
        elif archive in tablespaces:
            directory = tablespaces[archive]
        else:
            log.warning("skipping %s: the backup has no tablespace with OID %s", name, archive)
            continue
        jobs.append(_Job(f"{prefix}/{name}", name, size, directory, _compression_of(name),
                         manifests.get(name), archive == layout.DATA))
    mains = {layout.archive_of(job.name) for job in jobs if _is_main(job.name)}
    for stem in [layout.DATA, *tablespaces]:
        if stem not in mains:
            raise RestoreFailed(f"Missing file {prefix}/{stem}.* for server "
                                f"{info.get('server_name', '?')}", stem)
    jobs.sort(key=lambda job: job.size, reverse=True)
    return jobs, tablespaces, checked


# --- one archive object ----------------------------------------------------------------------

def ranged_chunks(store: ObjectStore, key: str, size: int, cancelled: threading.Event | Any
                  ) -> Iterator[memoryview]:
    """The object's bytes in order, fetched RANGES_AHEAD ranges at a time, in READ_SIZE
    pieces. A small object is one GET."""
    if size <= RANGE_SIZE:
        data = memoryview(store.get(key))
        for offset in range(0, len(data), READ_SIZE):
            yield data[offset:offset + READ_SIZE]
        return
    offsets = iter(range(0, size, RANGE_SIZE))
    with ThreadPoolExecutor(max_workers=RANGES_AHEAD, thread_name_prefix="range") as pool:
        pending: collections.deque[Future[bytes]] = collections.deque()

        def more() -> None:
            offset = next(offsets, None)
            if offset is not None:
                pending.append(pool.submit(store.read_range, key, offset,
                                           min(RANGE_SIZE, size - offset)))

        for _ in range(RANGES_AHEAD):
            more()
        try:
            while pending:
                if cancelled is not None and cancelled.is_set():
                    raise RestoreFailed("cancelled: another archive failed")
                data = memoryview(pending.popleft().result())
                more()
                for offset in range(0, len(data), READ_SIZE):  # views: no copy
                    yield data[offset:offset + READ_SIZE]
        finally:
            for future in pending:
                future.cancel()


@cache
def _uid(name: str, uid: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid if name else uid
    except KeyError:
        return uid


@cache
def _gid(name: str, gid: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid if name else gid
    except KeyError:
        return gid


def _target(directory: str, name: str) -> str:
    """Where a member goes; refuses a name that would land outside the directory."""
    path = posixpath.normpath(name)
    if path.startswith("/") or path == ".." or path.startswith("../"):
        raise ValueError("the member's path leaves the restore directory")
    return os.path.join(directory, path)


class _Decompressed:
    """The decompressed chunks of a stored object, counting and checksumming what is stored."""

    def __init__(self, chunks: Iterator[memoryview], compression: str | None,
                 checksum: Checksum | None) -> None:
        self._chunks, self._checksum = chunks, checksum
        self._decompressor = get_codec(compression).decompressor()
        self.stored_bytes = 0

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for chunk in self._chunks:
            self.stored_bytes += len(chunk)
            if self._checksum is not None:
                self._checksum.update(chunk)
            yield from self._decompressor.feed(chunk)
        yield self._decompressor.finish()

    @property
    def trailing(self) -> int:
        return self._decompressor.trailing


DECOMPRESSED_AHEAD = 2
"""Decompressed chunks a thread prepares while this one writes files: creating a file costs
this machine's ext4 a quarter of a millisecond, during which the decompressor (which releases
the GIL) runs instead of waiting its turn."""


def _ahead(chunks: Iterator[bytes | memoryview], depth: int) -> Iterator[bytes | memoryview]:
    """`chunks`, produced by a thread up to `depth` ahead of the consumer."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        ready.put(("chunk", chunk), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(("error", exc))

    thread = threading.Thread(target=produce, name="decompress", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "chunk":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                ready.get_nowait()
        thread.join()


def restore_object(store: ObjectStore, job: _Job, cancelled: Any = None) -> dict[str, int]:
    """Fetch, decompress, unpack and check one archive object (see the module doc)."""
    started = time.monotonic()
    manifest: dict[str, Any] | None = None
    if job.manifest_key:
        try:
            manifest = json.loads(store.get(job.manifest_key))
        except Exception as exc:
            raise RestoreFailed(f"{job.name}: its manifest is missing or unreadable "
                                f"({first_line(exc)})", job.name) from None
        if manifest is None or manifest.get("format") != FORMAT_ARCHIVE:
            raise RestoreFailed(f"{job.name}: its manifest does not describe it", job.name)
    algorithm = manifest["checksum_algorithm"] if manifest else None
    stored_checksum = new_checksum(algorithm) if algorithm else None
    source = _Decompressed(ranged_chunks(store, job.key, job.size, cancelled), job.compression,
                           stored_checksum)
    reader = TarReader(_ahead(iter(source), DECOMPRESSED_AHEAD))
    expected = iter(manifest["members"]) if manifest else None
    as_root = os.geteuid() == 0
    made: set[str] = {job.directory}  # directories known to exist
    files = nbytes = 0

    def fail(message: str, path: str | None = None) -> RestoreFailed:
        where = f"{job.name}: {path}: " if path is not None else f"{job.name}: "
        return RestoreFailed(where + message, job.name, path)

    try:
        for member in reader:
            if cancelled is not None and cancelled.is_set():
                raise RestoreFailed("cancelled: another archive failed")
            want = None
            if expected is not None:
                want = next(expected, None)
                if want is None:
                    raise fail("in the archive but not in the manifest", member.name)
                if member.name != want["path"] or member.kind != want["type"]:
                    raise fail(f"found where the manifest has {want['path']!r} "
                               f"({want['type']})", member.name)
            path = _target(job.directory, member.name)
            if job.is_data and posixpath.normpath(member.name) == CONTROL_FILE:
                path += PARTIAL_SUFFIX
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            if member.kind == "dir":
                if path not in made:
                    os.makedirs(path, exist_ok=True)
                    made.add(path)
                os.chmod(path, member.mode)
            elif member.kind == "symlink":
                os.symlink(member.linkname, path)
            elif member.kind == "hardlink":
                os.link(_target(job.directory, member.linkname), path)
            elif member.kind == "file":
                nbytes += _write_file(reader, member, path, want, algorithm, fail)
                files += 1
            else:
                raise fail(f"unsupported member type {member.kind!r}", member.name)
            if as_root:
                os.lchown(path, _uid(member.uname, member.uid), _gid(member.gname, member.gid))
        if expected is not None:
            missing = next(expected, None)
            if missing is not None:
                raise fail("in the manifest but not in the archive", missing["path"])
        reader.finish()
    except RestoreFailed:
        raise
    except (TarError, ValueError, EOFError) as exc:
        raise fail(f"unreadable: {first_line(exc)}") from None
    except OSError as exc:
        raise fail(f"cannot write: {first_line(exc)}") from None
    if source.trailing:
        raise fail(f"{source.trailing} bytes follow the compression stream")
    if manifest is not None:
        if source.stored_bytes != manifest["stored_bytes"]:
            raise fail(f"stored object is {source.stored_bytes} bytes, "
                       f"{manifest['stored_bytes']} were uploaded")
        want_sum = manifest.get("stored_checksum")
        if want_sum is not None and stored_checksum is not None \
                and stored_checksum.hexdigest() != want_sum:
            raise fail(f"stored object's {algorithm} checksum does not match the uploaded one's")
    log.debug("restored %s: %d files, %s in %.1fs", job.name, files, format_size(nbytes),
              time.monotonic() - started)
    return {"files": files, "bytes": nbytes, "stored": source.stored_bytes}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _write_file(reader: TarReader, member: Header, path: str, want: dict[str, Any] | None,
                algorithm: str | None, fail: Any) -> int:
    if want is not None and member.size != want["size"]:
        raise fail(f"{member.size} bytes, the manifest says {want['size']}", member.name)
    checksum = new_checksum(algorithm) if want is not None and algorithm else None
    # O_EXCL, not O_TRUNC: the directory started empty, so a file that exists is a second copy
    # in the archives (refused); and truncating costs ext4 a third of a millisecond per file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, member.mode)
    try:
        if member.mode & _UMASK:  # the archive's mode, as the umask would narrow it
            os.fchmod(fd, member.mode)
        for view in reader.data():
            if checksum is not None:
                checksum.update(view)
            while view:
                view = view[os.write(fd, view):]
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
    if checksum is not None and want is not None and checksum.hexdigest() != want["checksum"]:
        raise fail(f"{algorithm} checksum {checksum.hexdigest()} does not match the "
                   f"manifest's {want['checksum']}", member.name)
    return member.size


# --- in worker processes -----------------------------------------------------------------------

def _object_worker(config: dict[str, Any], job: dict[str, Any]) -> dict[str, int]:
    return restore_object(worker_store(StoreConfig.from_dict(config)), _Job(**job),
                          worker_cancelled())


# --- the whole restore -----------------------------------------------------------------------

def restore_backup(
    config: StoreConfig, server_name: str, backup_id: str, destination: str, *,
    tablespaces: Mapping[str, str] | None = None, jobs: int = 2,
    recovery: RecoverySettings | None = None, store: ObjectStore | None = None,
) -> RestoreReport:
    """Restore one backup into `destination` (see the module doc).

    Objects are restored `jobs` at once (at most one per core), largest first: by this process,
    in a thread, and by `jobs - 1` spawned worker processes that open their own store from
    `config` and the environment. The workers are started first, so that their interpreters
    start and import the SDK while this process reads the catalog. A caller that brings a
    `store` (with credentials a spawned process cannot inherit, such as an Airflow
    connection's) gets threads sharing it instead; otherwise the store is checked first (exit
    2 unreachable, 1 no bucket).
    """
    started = dt.datetime.now()
    shared = store is not None
    extra = 0 if shared else worker_processes(jobs) - 1
    workers = Workers(extra, config) if extra > 0 else None  # started first: workers.py
    cancelled: Any = workers.cancelled if workers is not None else threading.Event()
    own = store
    try:
        if own is None:
            own = open_store(config)
            own.check()
        return _restore(config, own, shared, workers, cancelled, server_name, backup_id,
                        os.path.abspath(destination), dict(tablespaces or {}), jobs, recovery,
                        started)
    finally:
        if workers is not None:
            workers.shutdown()
        if not shared and own is not None:
            own.close()


def _restore(config: StoreConfig, store: ObjectStore, shared: bool,
             workers: Workers | None, cancelled: Any, server_name: str,
             backup_id: str, destination: str, relocate: dict[str, str], jobs: int,
             recovery: RecoverySettings | None, started: dt.datetime) -> RestoreReport:
    _empty_or_missing(destination, "the recovery directory")
    backup_id = resolve_backup_id(store, server_name, backup_id)
    prefix = layout.backup_prefix(store.base_path, server_name, backup_id)
    try:
        info = bi.decode(store.get(layout.info_key(prefix)))
    except Exception:
        raise RestoreFailed(f"backup {backup_id} of server {server_name} not found") from None
    if info.get("status") != bi.DONE:
        raise RestoreFailed(f"backup {backup_id} is {info.get('status')}, not DONE")
    if info.get("snapshots_info"):
        raise RestoreFailed(f"backup {backup_id} is a disk snapshot backup: restore it with "
                            "barman-cloud-restore --snapshot-recovery-instance")
    plan, tablespaces, checked = _plan(store, prefix, info, destination, relocate)
    os.makedirs(destination, mode=0o700, exist_ok=True)
    for directory in tablespaces.values():
        os.makedirs(directory, mode=0o700, exist_ok=True)
    total = sum(job.size for job in plan)
    log.info("restoring backup %s of %s: %d archive objects, %s stored, %d at once",
             backup_id, server_name, len(plan), format_size(total), jobs)
    counts = _run_jobs(config, store, shared, workers, cancelled, plan, jobs)
    _finish(destination, tablespaces, info, recovery)
    seconds = (dt.datetime.now() - started).total_seconds()
    return RestoreReport(backup_id, len(plan), counts.files, counts.bytes, counts.stored,
                         seconds, checked)


def _run_jobs(config: StoreConfig, store: ObjectStore, shared: bool,
              workers: Workers | None, cancelled: Any,
              plan: list[_Job], jobs: int) -> _Counts:
    """Restore every object, largest first: one at a time in a thread of this process (which
    would otherwise only wait) and one in each worker process; with a shared store, `jobs`
    threads (the codecs release the GIL)."""
    local_slots = min(worker_processes(jobs), len(plan)) if shared else 1
    local = ThreadPoolExecutor(max_workers=max(1, local_slots), thread_name_prefix="restore")
    pool = workers.pool if workers is not None else None
    remote_slots = workers.count if workers is not None else 0
    payload = config.to_dict()
    queue = collections.deque(plan)  # largest first
    counts = _Counts()
    progress = Progress("restore", sum(job.size for job in plan), log)
    running: dict[Future[dict[str, int]], tuple[_Job, bool]] = {}

    def fill() -> None:
        in_pool = sum(1 for _, remote in running.values() if remote)
        while queue and pool is not None and in_pool < remote_slots:
            job = queue.popleft()
            running[pool.submit(_object_worker, payload, job.to_dict())] = (job, True)
            in_pool += 1
        while queue and sum(1 for _, remote in running.values() if not remote) < local_slots:
            job = queue.popleft()
            running[local.submit(restore_object, store, job, cancelled)] = (job, False)

    try:
        fill()
        while running:
            done, _ = wait(set(running), return_when=FIRST_COMPLETED)
            for future in done:
                job, _remote = running.pop(future)
                result = future.result()
                counts.files += result["files"]
                counts.bytes += result["bytes"]
                counts.stored += result["stored"]
                progress.advance(job.size)
            fill()
    except BaseException:
        cancelled.set()
        queue.clear()
        for future in running:
            future.cancel()
        raise
    finally:
        local.shutdown(wait=True)
    return counts


def _finish(destination: str, tablespaces: Mapping[str, str], info: dict[str, Any],
            recovery: RecoverySettings | None) -> None:
    """Link the tablespaces, create pg_wal, write the recovery settings, and last of all give
    pg_control its name: only now can PostgreSQL start on the directory."""
    links = os.path.join(destination, "pg_tblspc")
    os.makedirs(links, exist_ok=True)
    for oid, directory in tablespaces.items():
        link = os.path.join(links, oid)
        if os.path.lexists(link):
            raise RestoreFailed(f"pg_tblspc/{oid} is in the data archive: cannot link the "
                                "tablespace")
        os.symlink(directory, link)
    wal = "pg_wal" if int(info.get("version") or 100000) >= 100000 else "pg_xlog"
    os.makedirs(os.path.join(destination, wal), mode=0o700, exist_ok=True)
    if recovery is not None:
        _write_recovery(destination, recovery)
    os.chmod(destination, 0o700)
    if os.geteuid() == 0:  # the directories made here belong to the cluster's owner too
        owner = os.stat(os.path.join(destination, "PG_VERSION"))
        for path in (destination, links, os.path.join(destination, wal), *tablespaces.values()):
            os.chown(path, owner.st_uid, owner.st_gid)
    control = os.path.join(destination, CONTROL_FILE)
    if not os.path.exists(control + PARTIAL_SUFFIX):
        raise RestoreFailed(f"the backup has no {CONTROL_FILE}: it cannot be started")
    os.rename(control + PARTIAL_SUFFIX, control)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _write_recovery(destination: str, recovery: RecoverySettings) -> None:
    signal = os.path.join(destination, "recovery.signal")
    with open(signal, "w"):
        pass
    os.chmod(signal, 0o600)
    lines = [f"# recovery settings written by pgcloud-restore at "
             f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"]
    lines += [f"{name} = {_quote(value)}" for name, value in recovery.settings().items()]
    with open(os.path.join(destination, "postgresql.auto.conf"), "a") as conf:
        conf.write("\n" + "\n".join(lines) + "\n")
