"""Deleting many objects: in the store's bulk requests, or one request per object where the
store refuses those.

Each backend says how it deletes one batch (S3 DeleteObjects, Azure's blob batch, a GCS batch
request) and one object; `BatchDeleter` cuts the keys into batches of at most the store's
maximum, runs a few batches at a time where the backend allows it, and collects the keys that
could not be deleted with the reason. A key that is already gone counts as deleted.

A store that answers a bulk request with "not implemented" (HTTP 501, S3's NotImplemented,
an endpoint that does not exist) is not asked again: one warning is logged and, from then on,
every object is deleted with a request of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..errors import first_line

log = logging.getLogger("pgcloud")

BatchFunction = Callable[[Sequence[str]], dict[str, str]]
OneFunction = Callable[[str], None]


class BulkDeleteRefused(Exception):
    """The store does not do bulk deletes: delete the batch one object at a time."""


def batch_size_for(requested: int | None, maximum: int) -> int:
    """`--batch-size` as Barman reads it: unset is the store's maximum, anything else is
    clamped to 1..maximum."""
    if requested is None:
        return maximum
    return max(1, min(requested, maximum))


class BatchDeleter:
    """`delete(keys)` for one store: {key: why} for every key that could not be deleted."""

    def __init__(self, store_name: str, max_batch: int, delete_batch: BatchFunction,
                 delete_one: OneFunction, workers: int = 1) -> None:
        self._store_name = store_name
        self.max_batch = max_batch
        self._delete_batch, self._delete_one = delete_batch, delete_one
        self._workers = workers
        self._bulk = True
        self._lock = threading.Lock()

    @property
    def bulk(self) -> bool:
        """False once the store has refused a bulk delete."""
        return self._bulk

    def delete(self, keys: Iterable[str], batch_size: int | None = None) -> dict[str, str]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        size = batch_size_for(batch_size, self.max_batch)
        batches = [unique[i:i + size] for i in range(0, len(unique), size)]
        # the first batch alone: a store that refuses bulk deletes is asked only once
        errors = self._one_batch(batches[0])
        rest = batches[1:]
        if self._workers <= 1 or len(rest) <= 1:
            for batch in rest:
                errors.update(self._one_batch(batch))
            return errors
        with ThreadPoolExecutor(min(self._workers, len(rest)),
                                thread_name_prefix="delete") as pool:
            for found in pool.map(self._one_batch, rest):
                errors.update(found)
        return errors

    def _one_batch(self, batch: list[str]) -> dict[str, str]:
        if self._bulk:
            try:
                return self._delete_batch(batch)
            except BulkDeleteRefused as exc:
                self._refused(exc)
            except Exception as exc:
                reason = first_line(exc)
                return dict.fromkeys(batch, reason)
        return self._one_by_one(batch)

    def _refused(self, exc: BulkDeleteRefused) -> None:
        with self._lock:
            if not self._bulk:
                return
            self._bulk = False
        log.warning("%s refused a bulk delete (%s); deleting one object per request instead",
                    self._store_name, first_line(exc))

    def _one_by_one(self, batch: list[str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for key in batch:
            try:
                self._delete_one(key)
            except Exception as exc:
                errors[key] = first_line(exc)
        return errors
