"""The streaming source: the server sends its own files over the replication protocol.

One replication connection to a database (`replication=database`, which also runs the SQL
that backup.info needs) carries `BASE_BACKUP` (PostgreSQL 15+ syntax); the runner needs no
access to the cluster's files. What the server answers, in order (checked on 15, 17 and 18):

1. a row with the start LSN and timeline (after the checkpoint);
2. the tablespaces: oid, location, size in kB (with PROGRESS), and a last row for PGDATA;
3. one COPY OUT for everything: `n<name>\\0<location>\\0` starts an archive (`<oid>.tar` for
   each tablespace, then `base.tar`), `d` carries its tar bytes, `p` reports progress;
   base.tar begins with `backup_label` and ends with `global/pg_control`;
4. a row with the end LSN and timeline (the server ran pg_backup_stop, and with WAIT waited
   for the WAL to be archived), then the command's completion.

Pages whose checksum fails arrive as WARNING notices while their file is sent; the server
still sends everything and the end LSN, then ends the command with an ERROR (SQLSTATE XX001).
The stream records the failures (`checksum_failures`) and lets the caller decide.

psycopg 3's libpq layer drives it: psycopg2 runs the command with PQexec, which drops the
start and end rows and the notices. Every wait for the server happens outside the GIL
(select on the socket), so uploads in other threads keep going while data is awaited.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import select
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGresult

from ..errors import BackupFailed, first_line
from ..postgres import APPLICATION_NAME, ClusterInfo, StartPoint, read_cluster_info

log = logging.getLogger("pgcloud")

MIN_VERSION = 150000
CHECKSUM_SQLSTATE = "XX001"
_FAILED_BLOCK = re.compile(r'checksum verification failed in file "(?P<file>[^"]+)", '
                           r"block (?P<block>\d+)")
_FILE_TOTAL = re.compile(r'file "(?P<file>[^"]+)" has a total of (?P<total>\d+) checksum')


@dataclass
class ChecksumFailure:
    """Pages of one file whose checksum failed as the server read them."""

    file: str  # as the server names it: ./base/5/16385, or absolute in a tablespace
    blocks: list[int] = field(default_factory=list)  # the first ones (the server names five)
    total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "blocks": self.blocks, "total": self.total}

    def describe(self) -> str:
        blocks = ", ".join(str(block) for block in self.blocks)
        more = f" and {self.total - len(self.blocks)} more" if self.total > len(self.blocks) \
            else ""
        return f"{self.file} (block{'s' if self.total > 1 else ''} {blocks}{more})"


@dataclass(frozen=True)
class StreamedTablespace:
    oid: int | None  # None: the data directory
    location: str | None
    size: int  # bytes, as the server estimated them


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _error(result: PGresult | None, fallback: str) -> str:
    if result is None:
        return fallback
    message = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
    if message:
        return message.decode(errors="replace")
    return first_line((result.error_message or b"").decode(errors="replace") or fallback)


class BaseBackupStream:
    """One replication connection running one BASE_BACKUP."""

    def __init__(self, conninfo: str, password: str | None = None) -> None:
        extra: dict[str, Any] = {"password": password} if password else {}
        try:
            self._conn = psycopg.connect(
                conninfo, replication="database", autocommit=True,
                application_name=APPLICATION_NAME, cursor_factory=psycopg.ClientCursor, **extra,
            )
        except psycopg.Error as exc:
            raise BackupFailed(f"Cannot connect to postgres: {first_line(exc)}") from None
        self.version = self._conn.info.server_version
        if self.version < MIN_VERSION:
            self.abort()
            raise BackupFailed(
                f"streaming backups need PostgreSQL 15 or later (BASE_BACKUP with options); "
                f"this server is {self.version // 10000}: back up its files from the database "
                "host instead (without --streaming)"
            )
        self._pg = self._conn.pgconn
        self.checksum_failures: dict[str, ChecksumFailure] = {}
        self.on_progress: Callable[[int], None] | None = None
        self._pending: PGresult | None = None  # the result that followed the COPY
        self._conn.add_notice_handler(self._notice)

    # --- SQL, before the backup -----------------------------------------------------------

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql, params or None)
                return cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise BackupFailed(f"PostgreSQL error: {first_line(exc)}") from None

    def cluster_info(self) -> ClusterInfo:
        return read_cluster_info(self._query, self.version)

    # --- the replication command ----------------------------------------------------------

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        message = diagnostic.message_primary or ""
        if (diagnostic.severity_nonlocalized or diagnostic.severity) != "WARNING":
            return
        if match := _FAILED_BLOCK.search(message):
            failure = self.checksum_failures.setdefault(
                match["file"], ChecksumFailure(match["file"]))
            failure.blocks.append(int(match["block"]))
            failure.total = max(failure.total, len(failure.blocks))
        elif match := _FILE_TOTAL.search(message):
            failure = self.checksum_failures.setdefault(
                match["file"], ChecksumFailure(match["file"]))
            failure.total = int(match["total"])
        elif "checksum" not in message:
            log.warning("PostgreSQL: %s", message)

    def _wait(self) -> None:
        """Block until the server sent something, outside the GIL."""
        try:
            select.select([self._pg.socket], [], [])
            self._pg.consume_input()
        except (psycopg.OperationalError, OSError) as exc:
            raise BackupFailed("Connection to the Postgres server was lost during the "
                               f"backup: {first_line(exc)}") from None

    def _next_result(self) -> PGresult | None:
        while self._pg.is_busy():
            self._wait()
        return self._pg.get_result()

    def _expect(self, status: pq.ExecStatus, what: str) -> PGresult:
        result = self._next_result()
        if result is None or result.status != status:
            raise BackupFailed(f"BASE_BACKUP failed {what}: "
                               f"{_error(result, 'the server ended the command')}")
        return result

    def start(self, label: str, fast: bool) -> tuple[StartPoint, list[StreamedTablespace]]:
        """Send BASE_BACKUP; return once the server has started the backup and its COPY."""
        options = [
            f"LABEL {_quote(label)}", "PROGRESS true",
            f"CHECKPOINT '{'fast' if fast else 'spread'}'", "WAIT true", "MANIFEST 'no'",
            "TABLESPACE_MAP false", "VERIFY_CHECKSUMS true",
        ]
        self._pg.send_query(f"BASE_BACKUP ({', '.join(options)})".encode())
        start = self._expect(pq.ExecStatus.TUPLES_OK, "to start")
        lsn, timeline = (start.get_value(0, i) or b"" for i in range(2))
        point = StartPoint(lsn.decode(), int(timeline), dt.datetime.now(dt.UTC))
        listing = self._expect(pq.ExecStatus.TUPLES_OK, "listing the tablespaces")
        tablespaces = []
        for row in range(listing.ntuples):
            oid, location, size = (listing.get_value(row, i) for i in range(3))
            tablespaces.append(StreamedTablespace(
                int(oid) if oid else None, location.decode() if location else None,
                int(size or 0) * 1024))
        self._expect(pq.ExecStatus.COPY_OUT, "sending the files")
        return point, tablespaces

    def archives(self) -> Iterator[tuple[str, str, ArchiveReader]]:
        """(name, location, reader) of each archive as it arrives; a reader must be read to
        its end (b"") before the next archive is asked for."""
        reader = ArchiveReader(self)
        while (header := reader.next_archive()) is not None:
            name, location = header
            yield name, location, reader

    def copy_messages(self) -> Iterator[tuple[bytes, memoryview]]:
        """The COPY's messages as (type byte, payload); at its end, the result that follows
        is kept (or, if it is an error, raised)."""
        while True:
            size, data = self._pg.get_copy_data(1)
            if size == 0:
                self._wait()
                continue
            if size == -1:
                break
            if size == -2:
                raise BackupFailed("Connection to the Postgres server was lost during the "
                                   f"backup: {first_line(str(self._pg.get_error_message()))}")
            view = memoryview(data)
            yield bytes(view[:1]), view[1:]
        result = self._next_result()
        if result is None or result.status == pq.ExecStatus.FATAL_ERROR:
            lost = self._pg.status != pq.ConnStatus.OK
            reason = _error(result, "the server ended the command")
            raise BackupFailed(("Connection to the Postgres server was lost during the backup: "
                                if lost else "PostgreSQL error: ") + reason)
        self._pending = result

    def finish(self) -> tuple[str, int]:
        """The end LSN and timeline, once every archive was read. A checksum failure does not
        raise: it is in `checksum_failures`; any other error does."""
        end = self._pending or self._expect(pq.ExecStatus.TUPLES_OK, "to stop")
        if end.status != pq.ExecStatus.TUPLES_OK:
            raise BackupFailed(f"BASE_BACKUP failed to stop: {_error(end, 'no end position')}")
        lsn, timeline = (end.get_value(0, i) or b"" for i in range(2))
        while (result := self._next_result()) is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                state = result.error_field(pq.DiagnosticField.SQLSTATE)
                if not (state and state.decode() == CHECKSUM_SQLSTATE and self.checksum_failures):
                    raise BackupFailed(f"PostgreSQL error: {_error(result, 'unknown error')}")
        return lsn.decode(), int(timeline)

    def abort(self) -> None:
        """Closing the connection makes the server abort a backup it has not finished."""
        self._conn.close()


class ArchiveReader:
    """The archive being received, read as the server's messages arrived: `read_some` hands
    out their bytes without joining or copying them, `read` exactly what is asked."""

    def __init__(self, stream: BaseBackupStream) -> None:
        self._stream = stream
        self._messages = stream.copy_messages()
        self._pieces: deque[memoryview] = deque()  # received, not read yet
        self._next: tuple[str, str] | None = None
        self._ended = True  # no archive open yet
        self._done = False

    def next_archive(self) -> tuple[str, str] | None:
        """Skip what is left of the current archive; the next one's (name, location)."""
        while self.read_some(1 << 20):
            pass
        if self._next is None and not self._done:
            self._pull()
        header, self._next = self._next, None
        if header is not None:
            self._ended = False
        return header

    def _pull(self) -> None:
        """Take one message: data into the pieces, or the start of the next archive."""
        for kind, payload in self._messages:
            if kind == b"d":
                self._pieces.append(payload)
                return
            if kind == b"n":
                name, location, _ = bytes(payload).split(b"\0", 2)
                self._next = (name.decode(), location.decode())
                self._ended = True
                return
            if kind == b"p" and self._stream.on_progress is not None:
                self._stream.on_progress(struct.unpack("!q", payload[:8])[0])
        self._ended = self._done = True

    def read_some(self, size: int) -> memoryview | bytes:
        """At most `size` bytes of the archive, as they arrived (a view of the message that
        carried them); b"" at its end."""
        while not self._pieces and not self._ended:
            self._pull()
        if not self._pieces:
            return b""
        piece = self._pieces[0]
        if len(piece) <= size:
            return self._pieces.popleft()
        self._pieces[0] = piece[size:]
        return piece[:size]

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, fewer only at the archive's end."""
        pieces = []
        while size > 0 and (piece := self.read_some(size)):
            pieces.append(piece)
            size -= len(piece)
        return b"".join(pieces)
