"""Reading a tar stream without `tarfile`: headers parsed in place, file data as views.

Why not `tarfile`: its stream mode copies every byte through two buffers of its own and costs
a Python call chain per read, which made it the largest CPU cost of a restore after the
decompressor. Here the decompressed chunks are kept as they come and a file's data is handed
out as memoryviews of them, which `os.write` takes without a copy.

It reads what this project and Barman write (PAX, with GNU long names and ustar as Python's
tarfile and GNU tar produce them): regular files, directories, symlinks and hard links, PAX
extended headers (path, linkpath, size, mtime, uid, gid, uname, gname), GNU `L`/`K` long
names, base-256 numbers, and checks each header's checksum, so damage is reported, not read
as data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

BLOCK = 512

KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink",
         b"1": "hardlink"}


class TarError(ValueError):
    """The stream is not a readable tar archive."""


@dataclass(frozen=True)
class Header:
    name: str
    kind: str  # file, dir, symlink, hardlink, or the raw type for anything else
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: float
    linkname: str


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256 (GNU), for values octal cannot hold
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"bad number in a tar header: {text!r}") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    """PAX records: `<length> <key>=<value>\\n` each."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.index(b" ", position)
        length = int(data[position:space])
        if length <= 0:
            raise TarError("bad PAX record length")
        key, _, value = data[space + 1:position + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


class TarReader:
    """Members of a tar stream that arrives as chunks of bytes (any sizes).

    `for header in reader:` yields each member's Header; for a file, read its data with
    `reader.data()` (memoryviews, `header.size` bytes in all) before asking for the next
    member, or it is skipped.
    """

    def __init__(self, chunks: Iterator[bytes | memoryview]) -> None:
        self._chunks = chunks
        self._chunk = memoryview(b"")
        self._offset = 0
        self._left = 0  # data bytes of the current member not yet read
        self._padding = 0
        self.ended = False

    # --- the byte stream ------------------------------------------------------------------
    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._chunk, self._offset = memoryview(chunk), 0
                return True
        return False

    def _views(self, size: int) -> Iterator[memoryview]:
        """The next `size` bytes as views of the chunks (no copy)."""
        while size:
            if self._offset >= len(self._chunk) and not self._more():
                raise TarError("the archive ends in the middle of a member")
            take = min(size, len(self._chunk) - self._offset)
            yield self._chunk[self._offset:self._offset + take]
            self._offset += take
            size -= take

    def _read(self, size: int) -> bytes:
        return b"".join(self._views(size))

    def _skip(self, size: int) -> None:
        for _ in self._views(size):
            pass

    # --- members --------------------------------------------------------------------------
    def data(self) -> Iterator[memoryview]:
        """The current file's data, in views; then its padding is skipped."""
        size, self._left = self._left, 0
        yield from self._views(size)
        self._skip(self._padding)
        self._padding = 0

    def __iter__(self) -> Iterator[Header]:
        return self

    def __next__(self) -> Header:
        if self._left or self._padding:
            self._skip(self._left + self._padding)
            self._left = self._padding = 0
        extended: dict[str, str] = {}
        while True:
            block = self._block()
            if block is None:
                self.ended = True
                raise StopIteration
            kind = block[156:157]
            size = _number(block[124:136])
            padding = -size % BLOCK
            if kind in (b"x", b"g", b"L", b"K"):
                payload = self._read(size)
                self._skip(padding)
                if kind == b"x":
                    extended.update(_pax(payload))
                elif kind == b"L":
                    extended["path"] = payload.split(b"\0", 1)[0].decode(
                        "utf-8", "surrogateescape")
                elif kind == b"K":
                    extended["linkpath"] = payload.split(b"\0", 1)[0].decode(
                        "utf-8", "surrogateescape")
                continue  # a global header ('g') applies to nothing we keep
            return self._header(block, kind, size, padding, extended)

    def _block(self) -> bytes | None:
        """The next header block, checked; None at the end-of-archive zero block."""
        if self._offset >= len(self._chunk) and not self._more():
            raise TarError("the archive ends without its end-of-archive blocks")
        block = self._read(BLOCK)
        if block == bytes(BLOCK):
            return None
        stored = _number(block[148:156])
        computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
        if stored != computed:
            raise TarError("bad tar header checksum (damaged data)")
        return block

    def _header(self, block: bytes, kind: bytes, size: int, padding: int,
                extended: dict[str, str]) -> Header:
        name = _text(block[0:100])
        if block[257:262] == b"ustar":
            prefix = _text(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        name = extended.get("path", name)
        if "size" in extended:
            size = int(extended["size"])
            padding = -size % BLOCK
        header = Header(
            name=name.rstrip("/") if kind == b"5" else name,
            kind=KINDS.get(kind, kind.decode("latin-1")),
            mode=_number(block[100:108]) & 0o7777,
            uid=int(extended.get("uid", _number(block[108:116]))),
            gid=int(extended.get("gid", _number(block[116:124]))),
            uname=extended.get("uname", _text(block[265:297])),
            gname=extended.get("gname", _text(block[297:329])),
            size=size if kind in (b"0", b"\0", b"7") else 0,
            mtime=float(extended.get("mtime", _number(block[136:148]))),
            linkname=extended.get("linkpath", _text(block[157:257])),
        )
        if header.size:
            self._left, self._padding = header.size, padding
        elif size:  # data of a member type that carries none we use
            self._left, self._padding = 0, size + padding
        return header

    def finish(self) -> int:
        """After the end-of-archive block: the bytes that follow (record padding), read."""
        rest = 0
        while True:
            rest += len(self._chunk) - self._offset
            self._offset = len(self._chunk)
            if not self._more():
                return rest
