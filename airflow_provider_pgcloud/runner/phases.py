"""The skeleton every kind of backup shares: named phases in order, then stop, or fail.

An archive backup (start, upload data, stop), a snapshot backup (start, take disk snapshots,
stop) and Barman hook mode (upload a finished backup, then publish it) all run as

    with Phases(on_failure) as phases:
        phases.enter("starting the backup")
        phases.state = start(...)
        phases.enter("uploading data")
        ...

and on any failure, Ctrl-C included, `on_failure(state, phase, exc)` says what to raise
instead (after recording the failure, e.g. backup.info FAILED with Barman's
`failure <phase> (<reason>)`), or None to let the exception through as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .errors import BackupFailed, PgCloudError, first_line
from .session import Abortable
from .steps import BackupState, fail_backup
from .storage.base import ObjectStore

log = logging.getLogger("pgcloud")

OnFailure = Callable[[Any, str, BaseException], BaseException | None]


class Phases:
    def __init__(self, on_failure: OnFailure) -> None:
        self._on_failure = on_failure
        self.phase = ""
        self.state: Any = None

    def enter(self, phase: str) -> None:
        self.phase = phase

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc is None:
            return
        error = self._on_failure(self.state, self.phase, exc)
        if error is not None and error is not exc:
            raise error from exc


def failure_reason(exc: BaseException) -> str:
    """An exception as the reason in Barman's failure messages."""
    return "interrupted by the user" if isinstance(exc, KeyboardInterrupt) else first_line(exc)


def record_failure(store: ObjectStore, session: Abortable | None) -> OnFailure:
    """The failure handling of a backup held by a database session: once the backup has
    started (there is a state), abort the session and write backup.info FAILED; the error
    raised is a BackupFailed (exit 1)."""

    def on_failure(state: BackupState | None, phase: str,
                   exc: BaseException) -> BaseException | None:
        if state is None:
            return None
        return backup_failed(state, store, phase, exc, session)

    return on_failure


def backup_failed(state: BackupState, store: ObjectStore, phase: str, exc: BaseException,
                  session: Abortable | None) -> BackupFailed:
    """Record `exc`, raised while `phase` (e.g. "uploading data"), as the backup's failure:
    abort the session, write backup.info FAILED with Barman's `failure <phase> (<reason>)`,
    and return the BackupFailed (exit 1) for the caller to raise."""
    reason = f"failure {phase} ({failure_reason(exc)})"
    try:
        fail_backup(state, store, reason, session)
    except Exception as info_exc:
        log.error("could not record the failure in backup.info: %s", first_line(info_exc))
    return BackupFailed(str(exc) if isinstance(exc, PgCloudError) else reason)
