"""Barman hook-script mode: upload a backup the Barman server has already taken.

Run as Barman's `post_backup_script` or `post_backup_retry_script`, barman-cloud-backup does
not connect to PostgreSQL: it uploads the finished backup directory Barman names in its hook
environment, in the usual cloud layout, and then that backup's own `backup.info`, byte for
byte (so it keeps Barman's real `server_name` and `mode`). This module does the same with the
engine's chunk plan and parallel workers:

- `<BARMAN_BACKUP_DIR>/data` becomes `data.tar[...]` with the live backup's exclusions, except
  that the directory's own `backup_label` and `global/pg_control` are kept (they are the
  backup's, not leftovers of a running cluster);
- each tablespace of the loaded `backup.info` becomes `<oid>.tar[...]` from
  `<BARMAN_BACKUP_DIR>/<oid>`, keeping only `PG_<major>_*`;
- `backup.info` is written last, only once every archive object is confirmed in the store.

Refusals follow Barman 3.20: another hook or phase, a missing variable, `-n` and a compressed
Barman backup exit 4; a status other than DONE exits 63 (Barman's "abort and stop" for retry
scripts); an upload failure exits 1 and leaves the local `backup.info` untouched.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import backup_info as bi
from . import layout
from .backup import upload_chunks
from .codecs import get_codec
from .errors import BackupFailed, HookAbort, PgCloudError
from .layout import DATA
from .manifest import seal_archives
from .phases import Phases, failure_reason
from .plan import plan_chunks
from .sizes import format_size
from .sources.local import ArchiveRoot, tablespace_prefix
from .steps import BackupOptions, BackupState, ChunkResult
from .storage import ObjectStore, open_store

log = logging.getLogger("pgcloud")

HOOKS = frozenset({"backup_script", "backup_retry_script"})
PHASE = "post"


def is_hook_script(environ: Mapping[str, str]) -> bool:
    """True when run as Barman's post-backup (retry) script.

    Only when Barman's two variables are both set: any other hook or phase is refused rather
    than silently taking a live backup from inside a Barman hook.
    """
    if "BARMAN_HOOK" not in environ or "BARMAN_PHASE" not in environ:
        return False
    hook, phase = environ["BARMAN_HOOK"], environ["BARMAN_PHASE"]
    if hook in HOOKS and phase == PHASE:
        return True
    raise PgCloudError(f"called as unsupported hook script: {phase}_{hook}")


@dataclass(frozen=True)
class BarmanBackup:
    """A backup on the Barman server, as its hook environment describes it."""

    backup_id: str
    backup_dir: str
    info_path: str
    info: dict[str, Any]


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise PgCloudError(f"{name} environment variable not set")
    return value


def read_barman_backup(environ: Mapping[str, str]) -> BarmanBackup:
    """Check Barman's hook environment in Barman's order and load the local backup.info."""
    backup_dir = _required(environ, "BARMAN_BACKUP_DIR")
    backup_id = _required(environ, "BARMAN_BACKUP_ID")
    status = environ.get("BARMAN_STATUS")
    if status != bi.DONE:
        raise HookAbort(
            f"backup in '{backup_dir}' has status '{status}' (status should be: {bi.DONE})"
        )
    info_path = _required(environ, "BARMAN_BACKUP_INFO_PATH")
    try:
        with open(info_path, "rb") as handle:
            info = bi.decode(handle.read())
    except OSError as exc:
        raise PgCloudError(f"cannot read {info_path}: {exc.strerror or exc}") from None
    except (ValueError, SyntaxError) as exc:
        raise PgCloudError(f"cannot parse {info_path}: {exc}") from None
    if info.get("compression"):
        raise PgCloudError("Compressed backups are not supported when running as a hook script")
    return BarmanBackup(backup_id, backup_dir, info_path, info)


def pg_major_version(version: int) -> str:
    """Barman's major version string: `15` from 150018, `9.6` from 90624."""
    major = version // 10000
    return f"{major}.{version // 100 % 100}" if major < 10 else str(major)


def _tablespaces(info: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(str(name), int(oid), str(location)) for name, oid, location in
            info.get("tablespaces") or ()]


def barman_roots(backup: BarmanBackup) -> list[ArchiveRoot]:
    """The archives of a Barman backup directory, as Barman's hook mode walks them.

    Tablespaces live in `<backup_dir>/<oid>`. The data archive leaves out `pg_tblspc/<oid>`
    and any tablespace that was located inside PGDATA (matched against the original PGDATA
    recorded in backup.info, as Barman does).
    """
    version = backup.info.get("version")
    if not isinstance(version, int):
        raise BackupFailed(f"{backup.info_path} records no PostgreSQL version")
    pgdata = str(backup.info.get("pgdata") or "")
    tablespaces = _tablespaces(backup.info)
    skip: list[str] = []
    for _, oid, location in tablespaces:
        if pgdata and location.startswith(pgdata.rstrip("/") + "/"):
            skip.append(location[len(pgdata.rstrip("/")) + 1 :].rstrip("/"))
        skip.append(f"pg_tblspc/{oid}")
    data_dir = os.path.join(backup.backup_dir, "data")
    roots = [ArchiveRoot(DATA, os.path.realpath(data_dir), skip=tuple(skip), finished_copy=True)]
    prefix = tablespace_prefix(pg_major_version(version))
    roots += [
        ArchiveRoot(str(oid), os.path.join(backup.backup_dir, str(oid)), tablespace_prefix=prefix)
        for _, oid, _ in tablespaces
    ]
    return roots


def _state_info(backup: BarmanBackup) -> dict[str, Any]:
    """What the workers carry about the backup: no secrets, no PostgreSQL session."""
    begin = backup.info.get("begin_time")
    return {
        "status": backup.info.get("status"),
        "server_name": backup.info.get("server_name"),
        "version": backup.info.get("version"),
        "pgdata": backup.info.get("pgdata"),
        "tablespaces": _tablespaces(backup.info) or None,
        "begin_time": begin if isinstance(begin, dt.datetime) else dt.datetime.now(dt.UTC),
    }


def _check_directory(path: str) -> None:
    if not os.path.isdir(path):
        raise BackupFailed(f"directory {path} does not exist")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BackupFailed(f"cannot read {path}: permission denied")


def upload_barman_backup(
    backup: BarmanBackup, options: BackupOptions, store: ObjectStore | None = None
) -> list[ChunkResult]:
    """Upload a Barman backup directory, then its backup.info byte for byte, last.

    Chunks go to `options.jobs` worker processes (threads sharing `store` when the caller
    passes one, as `run_backup` does). Nothing is written to backup.info, locally or in the
    store, unless every archive object is stored. Raises BackupFailed on any failure.
    """
    started = time.time()
    upload_store = store
    store = store or open_store(options.store)

    def on_failure(state: BackupState | None, phase: str, exc: BaseException) -> BackupFailed:
        # Barman's one message for any failure of hook mode; nothing is recorded in the store
        return BackupFailed(f"Backup upload failed {phase} ({failure_reason(exc)})")

    try:
        with Phases(on_failure) as phases:
            phases.enter("uploading data")
            roots = barman_roots(backup)
            for root in roots:
                _check_directory(root.path)
            store.check()
            prefix = layout.backup_prefix(store.base_path, options.server_name,
                                          backup.backup_id)
            state = phases.state = BackupState(
                backup_id=backup.backup_id, prefix=prefix, store=options.store,
                compression=options.compression, min_chunk_size=options.min_chunk_size,
                backup_name=None, jobs=options.jobs, info=_state_info(backup), roots=roots,
                chunks=plan_chunks(
                    roots, options.jobs, options.max_archive_size, options.min_archive_size,
                    options.compression,
                ),
                started_at=started,
            )
            log.info(
                "uploading Barman backup %s from %s: %s in %d archive objects",
                backup.backup_id, backup.backup_dir, format_size(state.planned_bytes),
                len(state.chunks),
            )
            results = upload_chunks(state, options.jobs, None, store,
                                    shared=upload_store is not None,
                                    max_bandwidth=options.max_bandwidth)
            suffix = get_codec(state.compression).suffix
            seal_archives(store, prefix, [layout.archive_key(prefix, chunk.name, suffix)
                                          for chunk in state.chunks], options.server_name)
            with open(backup.info_path, "rb") as handle:  # DONE: final, locked with --lock-days
                store.put(layout.info_key(prefix), handle.read(), lock=True)
    finally:
        if upload_store is None:
            store.close()
    log.info("upload of Barman backup %s completed in %.1fs", backup.backup_id,
             time.time() - started)
    return results
