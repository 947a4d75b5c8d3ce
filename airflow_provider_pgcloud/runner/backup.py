"""The whole backup in one process: the steps, with chunks compressed by `jobs` processes.

Compression is CPU-bound and Python threads share one interpreter lock, so each chunk runs in
its own worker process (spawned, so no database socket or SDK client is inherited); each worker
overlaps compression with its own part uploads. While workers run, the parent keeps the
database session alive and notices at once if it dies.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from .errors import BackupFailed, PgCloudError
from .pgdata import Chunk
from .progress import Progress, configure_logging
from .session import BackupSession, LocalSession
from .steps import (
    BackupOptions,
    BackupState,
    ChunkResult,
    fail_backup,
    start_backup,
    stop_backup,
    upload_chunk,
)
from .storage import open_store

log = logging.getLogger("pgcloud")
KEEPALIVE_SECONDS = 30

_cancelled: Any = None


def _init_worker(level: int, cancelled: Any) -> None:
    global _cancelled
    _cancelled = cancelled
    configure_logging(level)


def _chunk_worker(state: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    backup = BackupState.from_dict(state)
    store = open_store(backup.store)
    try:
        result = upload_chunk(backup, Chunk.from_dict(chunk), store, cancelled=_cancelled)
    finally:
        store.close()
    return result.to_dict()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def upload_chunks(state: BackupState, jobs: int, session: BackupSession) -> list[ChunkResult]:
    """Upload every chunk with `jobs` worker processes; the first failure cancels the rest."""
    context = multiprocessing.get_context("spawn")
    cancelled = context.Event()
    progress = Progress("backup", state.planned_bytes, log, interval=0)
    results: list[ChunkResult] = []
    payload = state.to_dict()
    with ProcessPoolExecutor(
        max_workers=max(1, min(jobs, len(state.chunks))), mp_context=context,
        initializer=_init_worker, initargs=(logging.getLogger().level, cancelled),
    ) as pool:
        pending: set[Future[dict[str, Any]]] = {
            pool.submit(_chunk_worker, payload, chunk.to_dict()) for chunk in state.chunks
        }
        try:
            while pending:
                done, pending = wait(pending, timeout=KEEPALIVE_SECONDS,
                                     return_when=FIRST_COMPLETED)
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


def run_backup(options: BackupOptions) -> str:
    """Take one complete backup; return its ID. Raises a PgCloudError on failure."""
    session = LocalSession(options.conninfo)
    store = open_store(options.store)
    state: BackupState | None = None
    phase = "starting the backup"
    try:
        state = start_backup(options, session, store)
        phase = "uploading data"
        upload_chunks(state, options.jobs, session)
        phase = "stopping the backup"
        stop_backup(state, session, store)
        return state.backup_id
    except BaseException as exc:
        if state is None:
            raise
        reason = f"failure {phase} ({_describe(exc)})"
        if isinstance(exc, KeyboardInterrupt):
            reason = f"failure {phase} (interrupted by the user)"
        try:
            fail_backup(state, store, reason, session)
        except Exception as info_exc:
            log.error("could not record the failure in backup.info: %s", _describe(info_exc))
        if isinstance(exc, PgCloudError):
            raise BackupFailed(str(exc)) from exc
        raise BackupFailed(reason) from exc
    finally:
        session.abort()
        store.close()
