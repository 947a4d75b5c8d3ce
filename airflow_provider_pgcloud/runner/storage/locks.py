"""Retention locks on stored objects, as the engine sees them whatever the store.

A lock is what the store itself enforces: S3 Object Lock (a retain-until date in GOVERNANCE
or COMPLIANCE mode, a legal hold), an Azure immutability policy on a blob version (Unlocked
or Locked, a legal hold), GCS object retention (Unlocked or Locked), a GCS bucket retention
policy, a temporary or event-based hold. Each backend reads its own into an `ObjectLock`;
deciding what a set of them means for a backup (`lock_reason`) is the same everywhere.

Reading is one metadata request per object (S3 HeadObject, Azure Get Blob Properties, a GCS
object GET), a few at a time: locks are only read for the backups a delete is about to
remove, a few dozen objects each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

LOCK_MODES = ("governance", "compliance")
READ_WORKERS = 4  # metadata requests in flight at once


class ObjectLock(NamedTuple):
    """What keeps one object from being deleted, in the store's own words."""

    until: dt.datetime | None  # the retention date (timezone-aware); None: no date
    mode: str | None = None  # GOVERNANCE, COMPLIANCE, Unlocked, Locked, "bucket policy"
    hold: bool = False  # a legal, temporary or event-based hold: no end date

    def active(self, now: dt.datetime) -> bool:
        return self.hold or (self.until is not None and self.until > now)


def aware(when: dt.datetime) -> dt.datetime:
    """A store's date as a timezone-aware one (naive dates from the SDKs are UTC)."""
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def lock_reason(locks: Mapping[str, ObjectLock], now: dt.datetime) -> str | None:
    """Why objects with `locks` cannot be deleted at `now`, or None if nothing holds them:
    `locked until <the last retention date> (...)`, or the holds, which have no end date."""
    active = {key: lock for key, lock in locks.items() if lock.active(now)}
    if not active:
        return None
    held = sorted(key for key, lock in active.items() if lock.hold)
    if held:
        return (f"locked by a hold without an end date on {len(held)} objects (e.g. "
                f"{held[0]}): it must be released first")
    until = max(lock.until for lock in active.values() if lock.until is not None)
    modes = sorted({lock.mode for lock in active.values() if lock.mode})
    shown = until.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return (f"locked until {shown} ({len(active)} objects"
            + (f", {'/'.join(modes)}" if modes else "") + ")")


def read_locks(keys: Iterable[str], read_one: Callable[[str], ObjectLock | None],
               workers: int = READ_WORKERS) -> dict[str, ObjectLock]:
    """`read_one` for every key, a few at a time; keys it returns None for are left out."""
    unique = list(dict.fromkeys(keys))
    if not unique:
        return {}
    with ThreadPoolExecutor(max(1, min(workers, len(unique))),
                            thread_name_prefix="lock") as pool:
        found = list(pool.map(read_one, unique))
    return {key: lock for key, lock in zip(unique, found, strict=True) if lock is not None}
