"""Noticing, from inside an upload, that the backup it belongs to is already lost.

`upload_chunk(..., cancelled=...)` asks `is_cancelled(cancelled)` before every file. The hook
may be an Event (set when another worker failed: the runner's own processes and threads) or a
callable. `SessionWatch` is the callable for an upload that runs apart from the database
session, as an Airflow upload task does: it pings the session (a `KeeperClient`) at most every
`interval` seconds, and the ping raises BackupFailed ("Connection to the Postgres server was
lost ...", "the backup session keeper is gone ...") once PostgreSQL restarted, the session was
killed or the keeper died, so the task fails within about `interval` plus one file's upload,
not at the stop.

`exit_with_parent` makes a worker process end when the process that started it is killed
(SIGKILL leaves no chance to stop the workers), so no orphan keeps uploading archives of a
backup nobody will finish.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Pingable(Protocol):
    def ping(self) -> None: ...


def is_cancelled(cancelled: Any) -> bool:
    """True if the upload should stop: an Event that is set, or a callable returning True.

    A callable may also raise (SessionWatch does) to stop the upload with its own reason.
    """
    if cancelled is None:
        return False
    is_set = getattr(cancelled, "is_set", None)
    if is_set is not None:
        return bool(is_set())
    return bool(cancelled())


class SessionWatch:
    """`cancelled` hook for upload_chunk: ping `session` at most every `interval` seconds.

    Never returns True; raises the session's BackupFailed when the ping fails. The first call
    pings at once (an upload task that starts after the session died fails before reading a
    file). `also` is an optional Event or callable checked on every call.
    """

    def __init__(self, session: Pingable, interval: float = 10.0, *, also: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._session, self._interval, self._also, self._clock = session, interval, also, clock
        self._next = float("-inf")

    def __call__(self) -> bool:
        if is_cancelled(self._also):
            return True
        now = self._clock()
        if now >= self._next:
            self._session.ping()
            self._next = now + self._interval
        return False


def exit_with_parent(poll: float = 1.0) -> None:
    """End this process (exit code 1, no cleanup) soon after its parent process dies."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
