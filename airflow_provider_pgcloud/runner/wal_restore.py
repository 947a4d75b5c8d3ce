"""Fetch one WAL file that barman-cloud-wal-archive stored, for PostgreSQL's restore_command.

What is asked for is what PostgreSQL passes as `%f`: a WAL segment, a timeline history file, or
(by hand) a `.partial` or `.backup` file. The object is found where barman-cloud-wal-archive
puts it (layout.py: `wals/<TLI><LOG>/` for segments, `wals/` itself for history files), in any
compression it writes, told by the object's suffix as Barman's own restore does: gzip, bzip2,
xz, snappy, zstd, lz4 or none. The formats are those codecs.py already reads (one gzip member,
one bzip2 stream, one zstd or lz4 frame, snappy's framing format), plus xz, which only WAL uses.

Asked for a whole segment that was never archived whole, the segment's `.partial` file (what a
standby promoted in its middle archives) is served in its place, unless `partial` is False;
when both exist the whole segment wins. That is barman-cloud-wal-restore's rule.

The object is streamed: read in 1 MiB chunks, decompressed 64 KiB at a time and written as it
comes, so memory holds one chunk and what one slice decompresses to: never the whole object
next to the whole file, and at worst (a slice of bzip2, xz or zstd packing a long run of zeros)
the file itself, 16 MiB for a default segment. It is written to a temporary file beside the
destination, synced, then renamed over the destination, so PostgreSQL never sees a partly
written segment, even if this process is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import sys
import tempfile
from dataclasses import dataclass

from . import layout
from .codecs import CODECS, Decompressor, read_xz
from .errors import InputError, PgCloudError
from .storage import ObjectStore

log = logging.getLogger("pgcloud")

READ_SIZE = 1 << 20  # bytes asked of the store at a time


class WalNotFound(PgCloudError):
    """No such WAL file in the archive: exit 1, which restore_command's contract reads as
    "not available" (the end of recovery, or the next timeline to try)."""

    exit_code = 1


@dataclass(frozen=True)
class FetchedWal:
    """What restore_wal wrote: the requested name, the object it came from, its compression
    (None: stored as is), and the bytes read from the store and written to the destination."""

    name: str
    key: str
    compression: str | None
    stored_bytes: int
    written_bytes: int


def _decompressor(compression: str | None) -> Decompressor:
    if compression == "xz":
        return read_xz()
    return CODECS[compression or "none"].decompressor()


def check_wal_name(name: str) -> None:
    """Refuse what is not a WAL file name (exit 3), as Barman does before any request."""
    if not layout.is_wal_name(name):
        raise InputError(f"{name} is not the name of a WAL segment, .partial, .backup or "
                         ".history file")


def find_wal(store: ObjectStore, server_name: str, name: str, *,
             partial: bool = True) -> tuple[str, str | None]:
    """The key and compression of the stored WAL file `name`: one listing of its key as a
    prefix. Raises WalNotFound when there is none."""
    check_wal_name(name)
    wanted = layout.wal_key(store.base_path, server_name, name)
    accepted = {name: 0}
    if partial and layout.is_segment_name(name):
        accepted[name + ".partial"] = 1
    directory = posixpath.dirname(wanted)
    found: list[tuple[int, str, str | None]] = []
    for key, _size in store.list(wanted):
        stored_name, compression = layout.wal_compression(key)
        if posixpath.dirname(key) == directory and stored_name in accepted:
            found.append((accepted[stored_name], key, compression))
    if not found:
        raise WalNotFound(f"WAL file {name} of server {server_name} is not in the archive")
    rank, key, compression = min(found)
    if rank:
        log.info("WAL file %s for server %s was archived only as %s: restoring that",
                 name, server_name, posixpath.basename(key))
    return key, compression


def restore_wal(store: ObjectStore, server_name: str, name: str, destination: str, *,
                partial: bool = True) -> FetchedWal:
    """Fetch WAL file `name` of `server_name` into the file `destination` (replaced atomically),
    decompressed. Raises InputError for a name that is no WAL file's, WalNotFound when it is not
    archived, PgCloudError when the stored object does not decompress."""
    key, compression = find_wal(store, server_name, name, partial=partial)
    decompressor = _decompressor(compression)
    directory = os.path.dirname(os.path.abspath(destination))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(destination)}.",
                                     suffix=".tmp", dir=directory)
    stored = written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                for chunk in store.iter_object(key, READ_SIZE):
                    stored += len(chunk)
                    for data in decompressor.feed(chunk):
                        out.write(data)
                        written += len(data)
                tail = decompressor.finish()
            except ValueError as exc:
                raise PgCloudError(f"{key}: cannot decompress: {exc}") from None
            if decompressor.trailing:
                raise PgCloudError(f"{key}: {decompressor.trailing} bytes follow the "
                                   f"{compression} stream")
            out.write(tail)
            written += len(tail)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(directory)
    log.debug("restored %s from %s (%s, %d bytes stored, %d written)", name, key,
              compression or "not compressed", stored, written)
    return FetchedWal(name, key, compression, stored, written)


def _sync_directory(path: str) -> None:
    """Make the rename durable (a crash after the exit must not lose the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    from .cli.wal_restore import main

    sys.exit(main())
