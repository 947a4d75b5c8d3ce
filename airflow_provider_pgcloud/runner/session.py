"""Who holds the database session of a running backup.

A non-exclusive backup must be stopped by the session that started it. The runner keeps that
session in its own process (`LocalSession`). Airflow runs start, uploads and stop as separate
task processes, so `KeeperClient.launch` starts a small detached keeper process on the database
host that owns the session and answers `start`/`ping`/`stop`/`abort` over a Unix socket only its
OS user can open. The password travels on the keeper's stdin, never in its arguments. A keeper
nobody comes back to aborts the backup by itself at its deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Protocol

from .errors import BackupFailed, PgCloudError
from .postgres import ClusterInfo, PostgresSession, StartPoint, StopPoint, Tablespace

KEEPALIVE_SECONDS = 10.0
DEFAULT_DEADLINE_SECONDS = 24 * 3600.0


class Abortable(Protocol):
    def abort(self) -> None:
        """End the database side of a backup that will not complete."""
        ...


class BackupSession(Protocol):
    """The operations a backup needs from its database session, wherever it lives."""

    def cluster_info(self) -> ClusterInfo: ...

    def start(self, label: str, fast: bool) -> StartPoint: ...

    def stop(self, restore_point: str) -> StopPoint: ...

    def ping(self) -> None: ...

    def abort(self) -> None: ...


class LocalSession:
    """The session in this process."""

    def __init__(self, conninfo: str, password: str | None = None) -> None:
        self._pg = PostgresSession(conninfo, password=password)

    def cluster_info(self) -> ClusterInfo:
        return self._pg.cluster_info()

    def start(self, label: str, fast: bool) -> StartPoint:
        return self._pg.start_backup(label, fast)

    def stop(self, restore_point: str) -> StopPoint:
        point = self._pg.stop_backup()
        self._pg.restore_point(restore_point)
        return point

    def ping(self) -> None:
        self._pg.ping()

    def abort(self) -> None:
        """Closing the connection makes PostgreSQL abort a backup that was not stopped."""
        self._pg.close()


# --- wire format -------------------------------------------------------------------------

def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _cluster_info(data: dict[str, Any]) -> ClusterInfo:
    data = dict(data, tablespaces=[Tablespace(**t) for t in data["tablespaces"]])
    return ClusterInfo(**data)


def _point(cls: type[Any], data: dict[str, Any]) -> Any:
    return cls(**dict(data, time=dt.datetime.fromisoformat(data["time"])))


class KeeperClient:
    """Talks to a keeper; each call is one short connection, so any task process can call."""

    def __init__(self, address: str, timeout: float = 600.0) -> None:
        self.address, self._timeout = address, timeout

    @classmethod
    def launch(cls, conninfo: str, password: str | None = None,
               deadline_seconds: float = DEFAULT_DEADLINE_SECONDS) -> KeeperClient:
        """Start a detached keeper connected to PostgreSQL; raise if it cannot connect."""
        directory = tempfile.mkdtemp(prefix="pgcloud-keeper-")
        address = os.path.join(directory, "keeper.sock")
        with open(os.path.join(directory, "keeper.log"), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "airflow_provider_pgcloud.runner.session",
                 "--socket", address, "--deadline", str(deadline_seconds)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True, close_fds=True,
            )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({"conninfo": conninfo, "password": password}).encode())
        process.stdin.close()
        reply = json.loads(process.stdout.readline() or b'{"error": "keeper exited"}')
        process.stdout.close()
        if "error" in reply:
            process.wait(10)
            raise _error(reply)
        return cls(address)

    def _call(self, op: str, **args: Any) -> Any:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout)
                sock.connect(self.address)
                sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                data = sock.makefile("rb").readline()
        except OSError as exc:
            raise BackupFailed(
                f"the backup session keeper is gone ({exc.strerror or exc}); "
                "the database backup was aborted with it"
            ) from None
        reply = json.loads(data or b'{"error": "keeper closed the connection"}')
        if "error" in reply:
            raise _error(reply)
        return reply.get("result")

    def cluster_info(self) -> ClusterInfo:
        return _cluster_info(self._call("cluster_info"))

    def start(self, label: str, fast: bool) -> StartPoint:
        return _point(StartPoint, self._call("start", label=label, fast=fast))  # type: ignore[no-any-return]

    def stop(self, restore_point: str) -> StopPoint:
        return _point(StopPoint, self._call("stop", restore_point=restore_point))  # type: ignore[no-any-return]

    def ping(self) -> None:
        self._call("ping")

    def abort(self) -> None:
        self._call("abort")


def _error(reply: dict[str, Any]) -> PgCloudError:
    error = BackupFailed(reply["error"])
    error.exit_code = int(reply.get("exit_code", 1))
    return error


# --- the keeper process ------------------------------------------------------------------

class _Keeper:
    def __init__(self, session: LocalSession, deadline: float) -> None:
        self.session, self.deadline = session, deadline
        self.lost: str | None = None
        self.done = False

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "abort":
            self.session.abort()
            self.done = True
            return {"result": None}
        if self.lost:
            return {"error": self.lost}
        try:
            if op == "cluster_info":
                return {"result": _encode(self.session.cluster_info())}
            if op == "start":
                return {"result": _encode(self.session.start(request["label"], request["fast"]))}
            if op == "ping":
                self.session.ping()
                return {"result": None}
            if op == "stop":
                point = self.session.stop(request["restore_point"])
                self.done = True
                return {"result": _encode(point)}
        except PgCloudError as exc:
            return {"error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        return {"error": f"unknown keeper operation {op!r}"}

    def keepalive(self) -> None:
        if self.lost:
            return
        try:
            self.session.ping()
        except PgCloudError as exc:
            self.lost = str(exc)


def serve(address: str, deadline_seconds: float) -> int:
    """The keeper's main loop: connect, report ready, then serve until stop, abort or deadline."""
    request = json.loads(sys.stdin.buffer.read() or b"{}")
    try:
        session = LocalSession(request["conninfo"], password=request.get("password"))
    except PgCloudError as exc:
        sys.stdout.write(json.dumps({"error": str(exc), "exit_code": exc.exit_code}) + "\n")
        return exc.exit_code
    keeper = _Keeper(session, time.monotonic() + deadline_seconds)
    old_umask = os.umask(0o077)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    os.umask(old_umask)
    server.listen(16)
    server.settimeout(1.0)
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    sys.stdout.close()
    next_ping = time.monotonic() + KEEPALIVE_SECONDS
    try:
        while not keeper.done:
            now = time.monotonic()
            if now >= keeper.deadline:
                print("deadline reached without stop: aborting the backup", file=sys.stderr)
                session.abort()
                return 1
            if now >= next_ping:
                keeper.keepalive()
                next_ping = now + KEEPALIVE_SECONDS
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(30)
                line = conn.makefile("rb").readline()
                reply = keeper.handle(json.loads(line or b"{}"))
                conn.sendall(json.dumps(reply).encode() + b"\n")
    finally:
        server.close()
        os.unlink(address)
        session.abort()
        _remove_if_quiet(os.path.dirname(address))
    return 0


def _remove_if_quiet(directory: str) -> None:
    """Remove the keeper's directory after a clean exit unless its log has something to say."""
    log_path = os.path.join(directory, "keeper.log")
    with contextlib.suppress(OSError):
        if os.path.getsize(log_path) == 0:
            os.unlink(log_path)
            os.rmdir(directory)


if __name__ == "__main__":
    from .cli.keeper import main

    sys.exit(main())
