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
from typing import Any

from .errors import BackupFailed
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
    ) -> None:
        self.key = key
        self.bytes_written = 0
        self._store, self._part_size = store, part_size
        self._buffer = bytearray()
        self._upload: MultipartUpload | None = None
        self._next_part = 1
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._throttle = throttle
        self._error: BaseException | None = None

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.bytes_written += len(data)
        if len(self._buffer) >= self._part_size:
            view = memoryview(self._buffer)
            offset = 0
            while len(self._buffer) - offset >= self._part_size:
                self._send(bytes(view[offset : offset + self._part_size]))
                offset += self._part_size
            view.release()
            del self._buffer[:offset]

    def _send(self, part: bytes) -> None:
        self._raise_pending()
        if self._upload is None:
            self._upload = self._store.start_multipart(self.key)
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="part")
        if self._next_part > self._store.max_parts:
            raise BackupFailed(f"{self.key} needs more than {self._store.max_parts} parts")
        if self._throttle:
            self._throttle(len(part))
        self._slots.acquire()
        assert self._pool is not None
        future = self._pool.submit(self._upload_part, self._upload, self._next_part, part)
        self._futures.append(future)
        self._next_part += 1

    def _upload_part(self, upload: MultipartUpload, number: int, part: bytes) -> None:
        try:
            upload.upload_part(number, part)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._slots.release()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Send what is buffered and make the object visible (complete, or a single PUT)."""
        try:
            if self._upload is None:
                if self._throttle:
                    self._throttle(len(self._buffer))
                self._store.put(self.key, bytes(self._buffer))
            else:
                if self._buffer:
                    self._send(bytes(self._buffer))
                for future in self._futures:
                    future.result()
                self._upload.complete()
            self._buffer = bytearray()
        except BaseException:
            self.abort()
            raise
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Drop the upload so no partial object or orphaned parts remain."""
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
