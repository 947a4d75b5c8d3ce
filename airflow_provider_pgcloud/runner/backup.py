"""The whole backup in one process: the steps, with chunks compressed `jobs` at a time.

Compression is CPU-bound and Python threads share one interpreter lock, so chunks run in
parallel in separate processes: one in a thread of this process (which would otherwise only
wait, and has its store open already) and one in each worker process beside it (workers.py:
spawned, so no database socket or SDK client is inherited). Each overlaps compression with
its own part uploads. While they run, this process keeps the database session alive and
notices at once if it dies.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import SimpleNamespace
from typing import Any

from .cleanup import clean_after_backup
from .cpu import worker_processes
from .phases import Phases, record_failure
from .plan import Chunk
from .progress import Progress
from .session import BackupSession, LocalSession
from .steps import (
    BackupOptions,
    BackupState,
    ChunkResult,
    start_backup,
    stop_backup,
    upload_chunk,
)
from .storage import ObjectStore, StoreConfig, open_store
from .upload import BandwidthLimit
from .workers import Workers, worker_cancelled, worker_store, worker_throttle

log = logging.getLogger("pgcloud")


def _chunk_worker(state: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    backup = BackupState.from_dict(state)
    result = upload_chunk(backup, Chunk.from_dict(chunk), worker_store(backup.store),
                          throttle=worker_throttle(), cancelled=worker_cancelled())
    return result.to_dict()


def _chunk_thread(
    state: BackupState, chunk: Chunk, store: ObjectStore, cancelled: Any,
    throttle: BandwidthLimit | None,
) -> dict[str, Any]:
    return upload_chunk(state, chunk, store, throttle=throttle, cancelled=cancelled).to_dict()


def backup_workers(jobs: int, config: StoreConfig, max_bandwidth: int | None) -> Workers | None:
    """The worker processes a backup of `jobs` jobs uses beside its own thread (None for
    one job, or one core), started now so they are ready when the plan is."""
    count = worker_processes(jobs) - 1
    return Workers(count, config, max_bandwidth) if count > 0 else None


def upload_chunks(
    state: BackupState, jobs: int, session: BackupSession | None, store: ObjectStore, *,
    shared: bool, max_bandwidth: int | None = None, keepalive_interval: float = 60,
    workers: Workers | None = None,
) -> list[ChunkResult]:
    """Upload every chunk, `jobs` at a time (at most one per core), most work first; the
    first failure cancels the rest.

    `shared`: `store` was opened with credentials a spawned process cannot inherit (an
    Airflow connection's), so every chunk runs in a thread sharing it (the codecs release the
    GIL). Otherwise one chunk at a time runs in a thread of this process with `store` and one
    in each worker process, which opens its own store from the environment (`workers`,
    started by the caller, or here; shut down at the end either way). `max_bandwidth`
    (bytes/s) caps them all together. `session` (None when no database backup is held:
    Barman hook mode uploads a finished backup) is checked every `keepalive_interval` seconds
    (0: only when a chunk completes), so a restarted server or a killed backup session fails
    the backup then rather than at the stop.
    """
    slots = max(1, min(worker_processes(jobs), len(state.chunks)))  # <= one per core
    if not shared and workers is None and slots > 1:
        workers = Workers(slots - 1, state.store, max_bandwidth)
    remote = 0 if shared or workers is None else min(workers.count, slots - 1)
    local_slots = slots - remote
    cancelled: Any = workers.cancelled if workers is not None else threading.Event()
    if workers is not None and workers.bandwidth is not None:
        throttle: BandwidthLimit | None = BandwidthLimit(*workers.bandwidth)
    elif max_bandwidth:
        throttle = BandwidthLimit(max_bandwidth, SimpleNamespace(value=0.0), threading.Lock())
    else:
        throttle = None
    local = ThreadPoolExecutor(max_workers=local_slots, thread_name_prefix="chunk")
    payload = state.to_dict()
    queue = collections.deque(state.chunks)  # in plan order: most work first
    running: dict[Future[dict[str, Any]], bool] = {}  # -> runs in a worker process

    def fill() -> None:
        while queue and workers is not None and sum(running.values()) < remote:
            chunk = queue.popleft()
            running[workers.pool.submit(_chunk_worker, payload, chunk.to_dict())] = True
        while queue and len(running) - sum(running.values()) < local_slots:
            chunk = queue.popleft()
            running[local.submit(_chunk_thread, state, chunk, store, cancelled, throttle)] = False

    progress = Progress("backup", state.planned_bytes, log, interval=0)
    results: list[ChunkResult] = []
    try:
        fill()
        while running:
            done, _ = wait(set(running), timeout=keepalive_interval or None,
                           return_when=FIRST_COMPLETED)
            if session is not None:
                session.ping()
            for future in done:
                del running[future]
                result = ChunkResult(**future.result())
                results.append(result)
                progress.advance(result.raw_bytes)
            fill()
    except BaseException:
        cancelled.set()
        queue.clear()
        for future in running:
            future.cancel()
        raise
    finally:
        local.shutdown(wait=True)
        if workers is not None:
            workers.shutdown()
    return results


def run_backup(
    options: BackupOptions, *, session: BackupSession | None = None,
    store: ObjectStore | None = None,
) -> str:
    """Take one complete backup; return its ID. Raises a PgCloudError on failure.

    A caller may bring its own session and store (an Airflow operator does, with its
    connections' credentials); both are closed at the end, as the ones made here are.
    """
    session = session or LocalSession(options.conninfo)
    shared = store is not None
    # the worker processes start first: they import and open their store while this one
    # connects, checkpoints and plans (workers.py)
    workers = None if shared else backup_workers(options.jobs, options.store,
                                                 options.max_bandwidth)
    try:
        store = store or open_store(options.store)
    except BaseException:
        if workers is not None:
            workers.shutdown()
        raise
    try:
        with Phases(record_failure(store, session)) as phases:
            phases.enter("starting the backup")
            state = phases.state = start_backup(options, session, store)
            phases.enter("uploading data")
            upload_chunks(state, options.jobs, session, store, shared=shared,
                          max_bandwidth=options.max_bandwidth,
                          keepalive_interval=options.keepalive_interval, workers=workers)
            phases.enter("stopping the backup")
            stop_backup(state, session, store)
        clean_after_backup(store, options.server_name, state.backup_id)
        return state.backup_id
    finally:
        if workers is not None:
            workers.shutdown()
        session.abort()
        store.close()
