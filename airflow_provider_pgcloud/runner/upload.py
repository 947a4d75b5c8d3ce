"""Bounded-memory streaming upload of one object in equal-sized parts.

Compressed bytes accumulate in memory until a full part is ready; the part is handed to a
small thread pool and the producer keeps compressing while it travels. A semaphore caps the
parts in flight, so one object never holds more than `max_in_flight + 1` parts of memory and
nothing touches local disk. Every part but the last has exactly `part_size` bytes, because
some S3-compatible stores reject unequal parts.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from .cpu import worker_processes
from .errors import BackupFailed
from .retry import PART_RETRY, RetryPolicy
from .storage.base import MultipartUpload, ObjectStore

ONE_TIB = 1 << 40
ONE_GIB = 1 << 30


def part_size_for(planned_bytes: int, min_chunk_size: int, store: ObjectStore) -> int:
    """The part size for an object planned at `planned_bytes`.

    Large enough that the object fits in the store's part limit even if files grew by a quarter
    and one more 1 GiB relation segment appeared during the backup (so a 1 TiB archive stays
    under 10,000 parts), and never below the store's minimum or the user's --min-chunk-size.
    """
    bound = min(planned_bytes, ONE_TIB) * 5 // 4 + ONE_GIB
    return max(store.min_part_size, min_chunk_size, math.ceil(bound / (store.max_parts - 1)))


PARTS_IN_FLIGHT = 4  # per backup at least, shared by its worker processes


def parts_in_flight(jobs: int) -> int:
    """Parts one object may have in flight while a backup runs `jobs` jobs.

    Together the worker processes keep at least four parts (and at least `jobs`) travelling, so
    a single job, or the last and largest chunk, still overlaps several requests, and jobs
    beyond the core count (cpu.py) still add upload concurrency. Each object holds one more
    part, the one it fills, so memory is (in flight + 1) parts per worker process.
    """
    return max(1, max(jobs, PARTS_IN_FLIGHT) // worker_processes(jobs))


class PartWriter:
    """A write-only sink that turns a byte stream into one stored object."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        part_size: int,
        *,
        max_in_flight: int = 2,
        throttle: Callable[[int], None] | None = None,
        retry: RetryPolicy = PART_RETRY,
        lock: bool = False,
    ) -> None:
        """`lock`: the object is final, so the store writes it under its retention lock when
        it has one (`--lock-days`)."""
        self.key = key
        self._lock_object = lock
        self.bytes_written = 0
        self._store, self._part_size = store, part_size
        # the part being filled, and full-size buffers back from finished uploads: parts are
        # recycled rather than allocated per part, which keeps memory flat and unfragmented
        self._part: bytearray | None = None
        self._fill = 0
        self._spare: list[bytearray] = []
        self._upload: MultipartUpload | None = None
        self._next_part = 1
        self._in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._throttle = throttle
        self._error: BaseException | None = None
        self._retry, self._aborting = retry, False

    def write(self, data: bytes) -> None:
        self.bytes_written += len(data)
        view = memoryview(data)
        while view:
            if self._part is None:
                self._part = self._spare.pop() if self._spare else bytearray(self._part_size)
                self._fill = 0
            take = min(len(view), self._part_size - self._fill)
            self._part[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self._part_size:
                part, self._part = self._part, None
                self._send(part)

    def _send(self, part: bytearray) -> None:
        self._raise_pending()
        if self._upload is None:
            self._upload = self._store.start_multipart(self.key, lock=self._lock_object)
            self._pool = ThreadPoolExecutor(max_workers=self._in_flight, thread_name_prefix="part")
        if self._next_part > self._store.max_parts:
            raise BackupFailed(f"{self.key} needs more than {self._store.max_parts} parts")
        body: bytes | bytearray = part
        if not self._store.capabilities.accepts_buffers:
            body = bytes(part)  # the SDK wants bytes: copy, and reuse the buffer at once
            self._recycle(part)
        if self._throttle:
            self._throttle(len(part))
        self._slots.acquire()
        if self._error is not None:  # a part failed while this one waited for a slot
            self._slots.release()
            self._raise_pending()
        assert self._pool is not None
        future = self._pool.submit(self._upload_part, self._upload, self._next_part, body)
        self._futures.append(future)
        self._next_part += 1

    def _recycle(self, part: bytes | bytearray) -> None:
        if isinstance(part, bytearray) and len(part) == self._part_size:
            self._spare.append(part)

    def _upload_part(self, upload: MultipartUpload, number: int, body: bytes | bytearray) -> None:
        part = cast(bytes, body)  # a bytearray only where the upload `accepts_buffers`
        try:
            if self._store.capabilities.engine_retries_parts:
                self._retry.call(
                    lambda: upload.upload_part(number, part), f"upload of {self.key} part {number}",
                    give_up=lambda: self._error is not None or self._aborting,
                )
            else:  # the backend resumes failed parts itself (GCS)
                upload.upload_part(number, part)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._recycle(body)
            self._slots.release()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Send what is buffered and make the object visible (complete, or a single PUT)."""
        try:
            tail = self._part[: self._fill] if self._part is not None else bytearray()
            if self._upload is None:
                if self._throttle:
                    self._throttle(len(tail))
                self._store.put(self.key, bytes(tail), lock=self._lock_object)
            else:
                if tail:
                    self._send(tail)
                for future in self._futures:
                    future.result()
                self._upload.complete()
            self._part, self._fill, self._spare = None, 0, []
        except BaseException:
            self.abort()
            raise
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Drop the upload so no partial object or orphaned parts remain."""
        self._aborting = True
        for future in self._futures:
            future.cancel()
        self._shutdown()
        if self._upload is not None:
            upload, self._upload = self._upload, None
            # the store may be what failed; the original error matters more
            with contextlib.suppress(Exception):
                upload.abort()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class BandwidthLimit:
    """--max-bandwidth for the whole backup, shared by every worker process.

    Each part reserves the next free slot on one shared timeline (`n / rate` seconds long) and
    sleeps until its slot starts, so the jobs together never send faster than `rate` bytes per
    second however many of them there are. CLOCK_MONOTONIC is system-wide on Linux, so worker
    processes can share the timeline.
    """

    def __init__(self, rate: int, timeline: Any, lock: Any) -> None:
        self.rate, self._timeline, self._lock = rate, timeline, lock

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._timeline.value)
            self._timeline.value = start + nbytes / self.rate
        if start > now:
            time.sleep(start - now)
