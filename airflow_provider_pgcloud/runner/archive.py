"""A streaming tar writer: members go straight from their source through a compressor to a sink.

Python's `tarfile` in stream mode copies through its own buffers and cannot pad a file that
shrinks while it is read; this writer builds PAX headers with `tarfile.TarInfo` and moves the
data itself, in large blocks, so a 1 GiB relation costs a handful of system calls and the
compressor sees big buffers.

What goes in is a `Member` from a source (sources/): today the cluster's files on disk.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Protocol

from .codecs import Compressor, Decompressor

if TYPE_CHECKING:
    from .manifest import Checksum

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
READ_SIZE = 1 << 20

MEMBER_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
                tarfile.SYMTYPE: "symlink"}


def take(buffer: bytearray, size: int) -> bytes:
    """Remove and return the first `size` bytes of `buffer` (all of it when size < 0): the
    read() of a file-like view over data that arrives in pieces."""
    if size < 0 or size >= len(buffer):
        data = bytes(buffer)
        buffer.clear()
        return data
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


class StoredArchive:
    """A read()-able view of a stored archive object, decompressed, for tarfile's stream mode
    (verify and restore read archives through it).

    `chunks` are the stored bytes in order; `checksum`, when given, sees every stored byte, and
    `stored_bytes` counts them.
    """

    def __init__(self, chunks: Iterator[bytes], decompressor: Decompressor,
                 checksum: Checksum | None = None) -> None:
        self._chunks, self._d, self.checksum = chunks, decompressor, checksum
        self._buffer = bytearray()
        self._done = False
        self.stored_bytes = 0

    def _fill(self, size: int) -> None:
        while not self._done and (size < 0 or len(self._buffer) < size):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._buffer += self._d.finish()
                self._done = True
                break
            self.stored_bytes += len(chunk)
            if self.checksum is not None:
                self.checksum.update(chunk)
            for piece in self._d.feed(chunk):
                self._buffer += piece

    def read(self, size: int = -1) -> bytes:
        self._fill(size)
        return take(self._buffer, size)

    def drain(self) -> None:
        """Read what follows the tar end (record padding) to count the stored bytes."""
        while not self._done:
            self._fill(len(self._buffer) + READ_SIZE)
            self._buffer.clear()

    @property
    def trailing(self) -> int:
        """Bytes after the compression stream's end (Barman's restore ignores them)."""
        return self._d.trailing


def member_type(kind: bytes) -> str:
    """A tar member type as the manifest names it: `file`, `dir`, `symlink`."""
    return MEMBER_TYPES.get(kind, kind.decode(errors="replace"))


class Member(Protocol):
    """One member a source hands to the archive: a directory, a symlink or a regular file on
    disk, with the metadata its header records. A file's data is read when it is archived."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def st(self) -> os.stat_result: ...


@cache
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@cache
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


class TarWriter:
    """Writes one tar archive, compressed as a single stream, into `sink`.

    `raw_bytes` counts the uncompressed tar bytes, for progress; `sink` receives compressed
    bytes only.
    """

    def __init__(self, compressor: Compressor, sink: Callable[[bytes], None]) -> None:
        self._compressor = compressor
        self._sink = sink
        self.raw_bytes = 0
        self.members = 0

    def _write(self, data: bytes) -> None:
        self.raw_bytes += len(data)
        out = self._compressor.compress(data)
        if out:
            self._sink(out)

    def _header(self, name: str, st: os.stat_result, kind: bytes, size: int = 0,
                linkname: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname, info.gname = _user(st.st_uid), _group(st.st_gid)
        info.mtime = int(st.st_mtime)
        info.type = kind
        info.size = size
        info.linkname = linkname
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.members += 1

    def add(self, member: Member) -> bool:
        """Add a member by its type; False if it vanished before it could be read."""
        if stat.S_ISDIR(member.st.st_mode):
            self.add_dir(member.name, member.st)
            return True
        if stat.S_ISLNK(member.st.st_mode):
            return self.add_symlink(member.name, member.path, member.st)
        return self.add_file(member.name, member.path)

    def add_dir(self, name: str, st: os.stat_result) -> None:
        self._header(name, st, tarfile.DIRTYPE)

    def add_symlink(self, name: str, path: str, st: os.stat_result) -> bool:
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            return False
        self._header(name, st, tarfile.SYMTYPE, linkname=target)
        return True

    def add_file(self, name: str, path: str) -> bool:
        """Add a regular file; False if it vanished before it could be opened.

        The header records the size seen at open time. A file that grows is cut at that size;
        one that shrinks is padded with zeros, as Barman and pg_basebackup do: WAL replay
        rewrites whatever changed during the backup.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            size = st.st_size
            self._header(name, st, tarfile.REGTYPE, size=size)
            remaining = size
            while remaining:
                data = os.read(fd, min(READ_SIZE, remaining))
                if not data:
                    self._write(bytes(remaining))
                    break
                self._write(data)
                remaining -= len(data)
            if size % BLOCK:
                self._write(bytes(BLOCK - size % BLOCK))
        finally:
            os.close(fd)
        return True

    def add_symlink_to(self, name: str, target: str, st: os.stat_result) -> None:
        self._header(name, st, tarfile.SYMTYPE, linkname=target)

    def add_stream(self, name: str, st: os.stat_result, size: int,
                   read: Callable[[int], bytes]) -> None:
        """Add a regular file of `size` bytes read from `read` (another tar stream, as a
        server sends it); a stream that ends early is an error, not a file to pad."""
        self._header(name, st, tarfile.REGTYPE, size=size)
        remaining = size
        while remaining:
            data = read(min(READ_SIZE, remaining))
            if not data:
                raise EOFError(f"{name}: the stream ended {remaining} bytes early")
            self._write(data)
            remaining -= len(data)
        if size % BLOCK:
            self._write(bytes(BLOCK - size % BLOCK))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """Add an in-memory member (backup_label)."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        info.uid, info.gid = os.getuid(), os.getgid()
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._write(data)
        if len(data) % BLOCK:
            self._write(bytes(BLOCK - len(data) % BLOCK))
        self.members += 1

    def close(self) -> None:
        """End-of-archive blocks, padded to a full record, then the compressor's epilogue."""
        self._write(bytes(2 * BLOCK))
        if self.raw_bytes % RECORD:
            self._write(bytes(RECORD - self.raw_bytes % RECORD))
        tail = self._compressor.flush()
        if tail:
            self._sink(tail)
