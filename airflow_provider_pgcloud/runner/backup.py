"""The whole backup in one process: the steps, with chunks compressed by `jobs` processes.

Compression is CPU-bound and Python threads share one interpreter lock, so each chunk runs in
its own worker process (spawned, so no database socket or SDK client is inherited); each worker
overlaps compression with its own part uploads. While workers run, the parent keeps the
database session alive and notices at once if it dies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from functools import partial
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
from .storage import ObjectStore, open_store
from .upload import BandwidthLimit
from .workers import Workers, worker_cancelled, worker_store, worker_throttle

log = logging.getLogger("pgcloud")


def _chunk_worker(state: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    backup = BackupState.from_dict(state)
    result = upload_chunk(backup, Chunk.from_dict(chunk), worker_store(backup.store),
                          throttle=worker_throttle(), cancelled=worker_cancelled())
    return result.to_dict()


def _chunk_thread(
    state: BackupState, chunk: Chunk, store: ObjectStore, cancelled: threading.Event,
    throttle: BandwidthLimit | None,
) -> dict[str, Any]:
    return upload_chunk(state, chunk, store, throttle=throttle, cancelled=cancelled).to_dict()


def upload_chunks(
    state: BackupState, jobs: int, session: BackupSession | None,
    store: ObjectStore | None = None, max_bandwidth: int | None = None,
    keepalive_interval: float = 60, workers: Workers | None = None,
) -> list[ChunkResult]:
    """Upload every chunk with `jobs` workers; the first failure cancels the rest.

    Workers are processes that open their own store from the environment (`workers`, started
    earlier by the caller, or started here; shut down at the end either way); when the caller
    passes a `store` (opened with credentials a spawned process cannot inherit, such as an
    Airflow connection's), they are threads sharing it (the codecs release the GIL).
    `max_bandwidth` (bytes/s) caps all workers together. `session` (None when no database
    backup is held: Barman hook mode uploads a finished backup) is checked every
    `keepalive_interval` seconds (0: only when a chunk completes), so a restarted server or a
    killed backup session fails the backup then rather than at the stop.
    """
    count = max(1, min(worker_processes(jobs), len(state.chunks)))  # <= one per core
    cancelled: Any
    pool: Executor
    tasks: list[Callable[[], dict[str, Any]]]  # in plan order: most work first
    if store is None:
        if workers is None:
            workers = Workers(count, state.store, max_bandwidth)
        cancelled, pool = workers.cancelled, workers.pool
        payload = state.to_dict()
        tasks = [partial(_chunk_worker, payload, chunk.to_dict()) for chunk in state.chunks]
    else:
        cancelled = threading.Event()
        throttle = (
            BandwidthLimit(max_bandwidth, SimpleNamespace(value=0.0), threading.Lock())
            if max_bandwidth else None
        )
        pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="chunk")
        tasks = [
            partial(_chunk_thread, state, chunk, store, cancelled, throttle)
            for chunk in state.chunks
        ]
    progress = Progress("backup", state.planned_bytes, log, interval=0)
    results: list[ChunkResult] = []
    with pool:
        pending: set[Future[dict[str, Any]]] = {pool.submit(task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=keepalive_interval or None,
                                     return_when=FIRST_COMPLETED)
                if session is not None:
                    session.ping()
                for future in done:
                    result = ChunkResult(**future.result())
                    results.append(result)
                    progress.advance(result.raw_bytes)
        except BaseException:
            cancelled.set()
            for future in pending:
                future.cancel()
            raise
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
    upload_store = store
    # the worker processes start first: they import and open their store while this one
    # connects, checkpoints and plans (workers.py)
    workers = None if store is not None else Workers(
        worker_processes(options.jobs), options.store, options.max_bandwidth)
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
            upload_chunks(state, options.jobs, session, upload_store, options.max_bandwidth,
                          options.keepalive_interval, workers)
            phases.enter("stopping the backup")
            stop_backup(state, session, store)
        clean_after_backup(store, options.server_name, state.backup_id)
        return state.backup_id
    finally:
        if workers is not None:
            workers.shutdown()
        session.abort()
        store.close()
