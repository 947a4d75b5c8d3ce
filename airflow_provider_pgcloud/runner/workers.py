"""Worker processes for a backup's chunks and a restore's objects, started before they are needed.

A spawned worker costs about half a second before it can do anything: a fresh interpreter,
the engine's and the SDK's imports, and a client whose service model is parsed from JSON. So
the pool is started first, and each worker opens its store at once (`_warm_up`), while the
parent connects, checkpoints and plans; by the time the first chunk is handed out, a worker
is waiting for it. Workers are spawned, not forked, so they inherit no database socket and
no SDK client, and each ends itself if its parent dies.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .progress import configure_logging
from .storage import ObjectStore, StoreConfig, open_store
from .upload import BandwidthLimit
from .watch import exit_with_parent

# --- in a worker process ----------------------------------------------------------------------

_cancelled: Any = None
_throttle: BandwidthLimit | None = None
_store: tuple[StoreConfig, ObjectStore] | None = None


def _init_worker(level: int, cancelled: Any, bandwidth: tuple[int, Any, Any] | None) -> None:
    global _cancelled, _throttle
    _cancelled = cancelled
    _throttle = BandwidthLimit(*bandwidth) if bandwidth else None
    configure_logging(level)
    exit_with_parent()  # a SIGKILLed runner must not leave workers uploading or writing


def _warm_up(config: dict[str, Any]) -> None:
    worker_store(StoreConfig.from_dict(config))


def worker_store(config: StoreConfig) -> ObjectStore:
    """This worker's store, opened once and kept for every chunk or object it is given:
    making an SDK client costs more CPU than uploading a small chunk."""
    global _store
    if _store is None or _store[0] != config:
        if _store is not None:
            _store[1].close()
        _store = (config, open_store(config))
    return _store[1]


def worker_cancelled() -> Any:
    """The Event the parent sets to stop every worker (None outside a worker)."""
    return _cancelled


def worker_throttle() -> BandwidthLimit | None:
    """--max-bandwidth, shared by every worker of the pool (None: unlimited)."""
    return _throttle


# --- in the parent -----------------------------------------------------------------------------

class Workers:
    """`count` spawned worker processes, each opening the store of `config` as it starts.

    `cancelled` is the Event that stops them all; `max_bandwidth` (bytes/s) is one limit
    shared by all of them. Use as a context manager, or call `shutdown`.
    """

    def __init__(self, count: int, config: StoreConfig, max_bandwidth: int | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = count
        self.cancelled = context.Event()
        # the shared timeline of --max-bandwidth; the parent's own thread joins it too
        self.bandwidth: tuple[int, Any, Any] | None = (
            (max_bandwidth, context.Value("d", 0.0), context.Lock()) if max_bandwidth else None)
        self.pool = ProcessPoolExecutor(
            max_workers=count, mp_context=context, initializer=_init_worker,
            initargs=(logging.getLogger().level, self.cancelled, self.bandwidth))
        for _ in range(count):
            self.pool.submit(_warm_up, config.to_dict())

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
