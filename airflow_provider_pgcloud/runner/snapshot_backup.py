"""A backup made of disk snapshots, as barman-cloud-backup takes one with --snapshot-*.

    check (instance, disks attached and mounted, the cluster on them)
      -> start (pg_backup_start, backup.info STARTED)
      -> take_disk_snapshots (one snapshot per disk, waited for)
      -> stop (pg_backup_stop, backup_label object, backup.info DONE with snapshots_info)

No archive object is written. Unlike an object-store backup, backup.info carries the real
server name (and so does the backup label), as Barman's snapshot backups do. Each step is one
function, called in turn by `run_snapshot_backup` or by one Airflow task each.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from . import backup_info as bi
from . import layout
from .errors import InputError
from .phases import Phases, record_failure
from .postgres import ClusterInfo
from .session import BackupSession, LocalSession
from .snapshots import (
    SnapshotConfig,
    SnapshotProvider,
    Volume,
    check_cluster_on_disks,
    check_provider_options,
    find_volumes,
    open_provider,
)
from .snapshots.mounts import MountTable
from .steps import (
    BackupOptions,
    BackupState,
    done_info,
    started_info,
    unique_backup_id,
)
from .storage import ObjectStore, open_store

log = logging.getLogger("pgcloud")


def _locations(cluster: ClusterInfo) -> list[tuple[str, str]]:
    return [("PGDATA", cluster.pgdata)] + [
        (f"tablespace {t.name}", t.location) for t in cluster.tablespaces
    ]


def check_snapshot_preconditions(
    config: SnapshotConfig, provider: SnapshotProvider, cluster: ClusterInfo,
    mounts: MountTable,
) -> dict[str, Volume]:
    """Barman's checks before a snapshot backup starts (the instance exists, each disk is
    attached to it and mounted here), plus one of ours: PGDATA and every tablespace must be
    on a snapshotted disk's filesystem."""
    assert config.instance is not None
    volumes = find_volumes(provider, config.instance, config.disks, mounts)
    check_cluster_on_disks(volumes, _locations(cluster), mounts)
    for name, volume in volumes.items():
        assert volume.mount is not None
        log.info("disk %s is %s, mounted at %s (%s)", name, volume.mount.source,
                 volume.mount.mount_point, volume.mount.options)
    return volumes


def refuse_lock(options: BackupOptions) -> None:
    """InputError (exit 3) for `--lock-days`: it locks objects in the store, and a snapshot
    backup's data is in disk snapshots, which would stay deletable."""
    if options.store.lock_days:
        raise InputError("--lock-days locks the objects of a backup in the store, and a "
                         "snapshot backup's data is in disk snapshots, which it cannot lock: "
                         "lock them with the cloud's own snapshot lock instead")


def start_snapshot_backup(
    options: BackupOptions, config: SnapshotConfig, session: BackupSession, store: ObjectStore,
    *, provider: SnapshotProvider | None = None, mounts: MountTable | None = None,
) -> BackupState:
    """Check the disks, start the PostgreSQL backup and record it as STARTED.

    Nothing is started or written if a check fails. On a failure after pg_backup_start the
    caller runs `steps.fail_backup`.
    """
    refuse_lock(options)
    check_provider_options(config)
    cluster = session.cluster_info()
    provider = provider or open_provider(config)
    check_snapshot_preconditions(config, provider, cluster, mounts or MountTable.read())
    store.check()
    backup_id = unique_backup_id(store, options.server_name)
    prefix = layout.backup_prefix(store.base_path, options.server_name, backup_id)
    started_at = time.time()
    start = session.start(
        f"Barman backup {options.server_name} {backup_id}", options.immediate_checkpoint
    )
    info = started_info(cluster, start, options.server_name)
    state = BackupState(
        backup_id=backup_id, prefix=prefix, store=options.store, compression=None,
        min_chunk_size=options.min_chunk_size, backup_name=options.backup_name,
        jobs=options.jobs, info=info, roots=[], chunks=[], started_at=started_at,
    )
    store.put(layout.info_key(prefix), bi.encode(info))
    log.info("snapshot backup %s started at %s", backup_id, start.lsn)
    return state


def take_disk_snapshots(
    state: BackupState, config: SnapshotConfig, *, provider: SnapshotProvider | None = None,
    mounts: MountTable | None = None, session: BackupSession | None = None,
    keepalive_interval: float = 60,
) -> dict[str, Any]:
    """Snapshot every disk and wait for the snapshots; return `snapshots_info`.

    The disks' mounts are read again here (this may run in another process than the start).
    With a `session`, it is checked every `keepalive_interval` seconds while the cloud works,
    so a lost database session fails the backup then.
    """
    assert config.instance is not None
    instance = config.instance
    provider = provider or open_provider(config)
    table = mounts or MountTable.read()

    def snapshot() -> dict[str, Any]:
        volumes = provider.attached_volumes(instance, config.disks)
        for volume in volumes.values():
            volume.resolve(table)
        return provider.take_snapshots(state.backup_id, instance, volumes)

    if session is None or not keepalive_interval:
        info = snapshot()
    else:
        # A daemon thread: an interrupted backup does not wait for the cloud's waiter.
        future: Future[dict[str, Any]] = Future()

        def work() -> None:
            try:
                future.set_result(snapshot())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=work, name="snapshots", daemon=True).start()
        while True:
            try:
                info = future.result(timeout=keepalive_interval)
                break
            except TimeoutError:
                session.ping()
    names = ", ".join(s["provider"]["snapshot_name"] for s in info["snapshots"])
    log.info("backup %s: snapshots %s completed", state.backup_id, names)
    return info


def stop_snapshot_backup(
    state: BackupState, snapshots_info: dict[str, Any], session: BackupSession,
    store: ObjectStore,
) -> dict[str, Any]:
    """Stop the backup, store backup_label as its own object, then backup.info DONE."""
    point = session.stop(f"barman_{state.backup_id}")
    store.put(layout.label_key(state.prefix), point.backup_label.encode("utf-8"))
    elapsed = round(time.time() - state.started_at, 6)
    info = done_info(state, point, snapshots_info=snapshots_info,
                     copy_stats={"copy_time": elapsed, "total_time": elapsed})
    store.put(layout.info_key(state.prefix), bi.encode(info))
    log.info("snapshot backup %s DONE: stop at %s, %.1fs in all", state.backup_id, point.lsn,
             elapsed)
    return info


def run_snapshot_backup(
    options: BackupOptions, config: SnapshotConfig, *, session: BackupSession | None = None,
    store: ObjectStore | None = None, provider: SnapshotProvider | None = None,
    mounts: MountTable | None = None,
) -> str:
    """Take one complete snapshot backup; return its ID. Raises a PgCloudError on failure:
    exit 4 for options or preconditions (nothing written), 1 once the backup had started
    (backup.info FAILED, with snapshots_info if snapshots were taken)."""
    refuse_lock(options)
    check_provider_options(config)
    session = session or LocalSession(options.conninfo)
    store = store or open_store(options.store)
    try:
        with Phases(record_failure(store, session)) as phases:
            phases.enter("starting the backup")
            provider = provider or open_provider(config)
            state = phases.state = start_snapshot_backup(
                options, config, session, store, provider=provider, mounts=mounts)
            phases.enter("taking disk snapshots")
            snapshots_info = take_disk_snapshots(
                state, config, provider=provider, mounts=mounts, session=session,
                keepalive_interval=options.keepalive_interval,
            )
            state.info["snapshots_info"] = snapshots_info
            phases.enter("stopping the backup")
            stop_snapshot_backup(state, snapshots_info, session, store)
        return state.backup_id
    finally:
        session.abort()
        store.close()
