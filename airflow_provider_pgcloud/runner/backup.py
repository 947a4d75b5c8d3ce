"""The whole backup in one process: the steps, with chunks compressed by `jobs` processes.

Compression is CPU-bound and Python threads share one interpreter lock, so each chunk runs in
its own worker process (spawned, so no database socket or SDK client is inherited); each worker
overlaps compression with its own part uploads. While workers run, the parent keeps the
database session alive and notices at once if it dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from functools import partial
from types import SimpleNamespace
from typing import Any

from .cleanup import clean_after_backup
from .cpu import worker_processes
from .phases import Phases, record_failure
from .plan import Chunk
from .progress import Progress, configure_logging
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
from .watch import exit_with_parent

log = logging.getLogger("pgcloud")

_cancelled: Any = None
_throttle: BandwidthLimit | None = None
_store: tuple[StoreConfig, ObjectStore] | None = None


def _init_worker(level: int, cancelled: Any, bandwidth: tuple[int, Any, Any] | None) -> None:
    global _cancelled, _throttle
    _cancelled = cancelled
    _throttle = BandwidthLimit(*bandwidth) if bandwidth else None
    configure_logging(level)
    exit_with_parent()  # a SIGKILLed runner must not leave workers uploading


def _worker_store(config: StoreConfig) -> ObjectStore:
    """The worker's store, opened on its first chunk and kept for the next ones: creating an
    SDK client loads its service model, which costs more CPU than uploading a small chunk."""
    global _store
    if _store is None or _store[0] != config:
        if _store is not None:
            _store[1].close()
        _store = (config, open_store(config))
    return _store[1]


def _chunk_worker(state: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    backup = BackupState.from_dict(state)
    store = _worker_store(backup.store)
    result = upload_chunk(
        backup, Chunk.from_dict(chunk), store, throttle=_throttle, cancelled=_cancelled
    )
    return result.to_dict()


def _chunk_thread(
    state: BackupState, chunk: Chunk, store: ObjectStore, cancelled: threading.Event,
    throttle: BandwidthLimit | None,
) -> dict[str, Any]:
    return upload_chunk(state, chunk, store, throttle=throttle, cancelled=cancelled).to_dict()


def upload_chunks(
    state: BackupState, jobs: int, session: BackupSession | None,
    store: ObjectStore | None = None, max_bandwidth: int | None = None,
    keepalive_interval: float = 60,
) -> list[ChunkResult]:
    """Upload every chunk with `jobs` workers; the first failure cancels the rest.

    Workers are processes that open their own store from the environment; when the caller
    passes a `store` (opened with credentials a spawned process cannot inherit, such as an
    Airflow connection's), they are threads sharing it (the codecs release the GIL).
    `max_bandwidth` (bytes/s) caps all workers together. `session` (None when no database
    backup is held: Barman hook mode uploads a finished backup) is checked every
    `keepalive_interval` seconds (0: only when a chunk completes), so a restarted server or a
    killed backup session fails the backup then rather than at the stop.
    """
    workers = max(1, min(worker_processes(jobs), len(state.chunks)))  # <= one per core
    cancelled: Any
    pool: Executor
    tasks: list[Callable[[], dict[str, Any]]]  # in plan order: most work first
    if store is None:
        context = multiprocessing.get_context("spawn")
        cancelled = context.Event()
        bandwidth = (
            (max_bandwidth, context.Value("d", 0.0), context.Lock()) if max_bandwidth else None
        )
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker,
            initargs=(logging.getLogger().level, cancelled, bandwidth),
        )
        payload = state.to_dict()
        tasks = [partial(_chunk_worker, payload, chunk.to_dict()) for chunk in state.chunks]
    else:
        cancelled = threading.Event()
        throttle = (
            BandwidthLimit(max_bandwidth, SimpleNamespace(value=0.0), threading.Lock())
            if max_bandwidth else None
        )
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunk")
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
    store = store or open_store(options.store)
    try:
        with Phases(record_failure(store, session)) as phases:
            phases.enter("starting the backup")
            state = phases.state = start_backup(options, session, store)
            phases.enter("uploading data")
            upload_chunks(state, options.jobs, session, upload_store, options.max_bandwidth,
                          options.keepalive_interval)
            phases.enter("stopping the backup")
            stop_backup(state, session, store)
        clean_after_backup(store, options.server_name, state.backup_id)
        return state.backup_id
    finally:
        session.abort()
        store.close()
