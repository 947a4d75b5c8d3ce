"""Compression codecs: one compression stream per archive object.

Barman's restore decompresses only the first gzip member / bz2 stream / zstd or lz4 frame of an
object and silently drops the rest, so every codec here produces exactly one stream per object,
fed incrementally as the tar stream is produced.

The formats are Barman's; how they are produced is chosen for speed (benchmarks/README.md has
the measurements):
- gzip: ISA-L's deflate (python-isal) at its level 3, about 20x faster than zlib at Barman's
  level 9 for 1-3% more bytes. Still one standard gzip member.
- zstd: level 2 (Barman uses 3): a quarter less CPU for under 2% more bytes.
- Several threads for one stream, when cores would otherwise idle: a backup with fewer jobs
  than cores, or a chunk that is the critical path (a large file cannot be split; plan.py
  gives its chunk the cores the others leave idle). zstd uses its own worker threads (still
  one frame); gzip uses python-isal's threaded writer, pigz's method (still one member); lz4
  writes a frame of independent 1 MiB blocks compressed on a thread pool (still one frame);
  bzip2 compresses 8 MiB pieces on a thread pool and splices their blocks, which are not
  byte-aligned, into one stream with one combined CRC (lbzip2's result: still one stream).
  Each stores within a fraction of a percent of the one-thread stream on relation data.
- lz4 frame and snappy framing as Barman writes them; bzip2 at level 9 as Barman does.
Every codec releases the GIL except snappy, which is fast enough not to matter and is the one
codec that compresses a stream in one thread only.
"""

from __future__ import annotations

import bz2
import importlib
import lzma
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from .cpu import usable_cores, worker_processes
from .errors import missing_module

GZIP_LEVEL = 3  # ISA-L's highest level; its 1 and 2 are faster but store a few % more
ZSTD_LEVEL = 2


class Compressor(Protocol):
    """The zlib-compressobj shape: feed data, then flush once at the end of the object."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


OUTPUT_SIZE = 1 << 20
"""The most a decompressor hands back at a time. A stream's output per input byte has no
useful bound (a run of zero pages compresses a thousandfold), so reading a backup holds at
most this much decompressed data per object in flight, however the data compresses."""


class Decompressor(Protocol):
    """Reads back one object's single compression stream; what follows its end is counted in
    `trailing` (barman-cloud-restore silently ignores it, verify reports it)."""

    trailing: int

    def feed(self, data: bytes | memoryview, /) -> Iterator[bytes | memoryview]:
        """What `data` decompresses to, in pieces of at most OUTPUT_SIZE bytes. Read them
        all before feeding more; raises ValueError on damaged data."""
        ...

    def finish(self) -> bytes:
        """The rest; raises ValueError if the stream was cut short."""
        ...


class _Identity:
    trailing = 0

    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""

    def feed(self, data: bytes | memoryview, /) -> Iterator[bytes | memoryview]:
        yield data  # stored as is: handed on without a copy

    def finish(self) -> bytes:
        return b""


class _Stream:
    """A library decompressor that takes `max_length` and keeps the input it has not used
    (bz2's shape: `needs_input`, `eof`, `unused_data`; lzma, lz4 frame and zstd share it).
    zlib's shape, which hands the unused input back in `unconsumed_tail`, is `tail=True`."""

    def __init__(self, name: str, decompressor: Any, *, tail: bool = False) -> None:
        self._name, self._d, self._tail = name, decompressor, tail
        self._ended = False
        self.trailing = 0

    def feed(self, data: bytes | memoryview, /) -> Iterator[bytes]:
        if self._ended:
            self.trailing += len(data)
            return
        d = self._d
        while True:
            try:
                out: bytes = d.decompress(data, OUTPUT_SIZE)
            except Exception as exc:  # each library has its own error type (lz4: RuntimeError)
                raise ValueError(f"corrupt {self._name} data: {exc}") from None
            if out:
                yield out
            if d.eof:
                self._ended = True
                self.trailing += len(d.unused_data or b"")
                return
            if self._tail:  # a full piece may leave output behind with no input left
                data = d.unconsumed_tail
                if not data and len(out) < OUTPUT_SIZE:
                    return
            elif d.needs_input:
                return
            else:
                data = b""

    def finish(self) -> bytes:
        if not self._ended:
            raise ValueError("the compressed stream ends early")
        return b""


class _Snappy:
    """Snappy framing, which has no `max_length` and no end of stream: input goes in pieces
    small enough that what one gives back stays bounded (a frame holds at most 64 KiB)."""

    PIECE = 64 << 10

    def __init__(self, decompressor: Any) -> None:
        self._d = decompressor
        self.trailing = 0

    def feed(self, data: bytes | memoryview, /) -> Iterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(view), self.PIECE):
            try:  # python-snappy refuses a memoryview
                out: bytes = self._d.decompress(bytes(view[start:start + self.PIECE]))
            except Exception as exc:
                raise ValueError(f"corrupt snappy data: {exc}") from None
            if out:
                yield out

    def finish(self) -> bytes:
        try:
            tail: bytes = self._d.flush()
        except Exception as exc:
            raise ValueError(f"corrupt snappy data: {exc}") from None
        return tail


class _Lz4:
    """lz4 frame compressor whose first output carries the frame header."""

    def __init__(self, module: ModuleType) -> None:
        self._compressor = module.LZ4FrameCompressor()
        self._header: bytes | None = self._compressor.begin()

    def compress(self, data: bytes, /) -> bytes:
        out: bytes = self._compressor.compress(data)
        if self._header is not None:
            out, self._header = self._header + out, None
        return out

    def flush(self) -> bytes:
        head = self._header or b""
        self._header = None
        return head + self._compressor.flush()


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_module(module.split(".")[0]) from None


def _identity(threads: int) -> Compressor:
    return _Identity()


def _gzip(threads: int) -> Compressor:
    if threads > 1:
        return _ThreadedGzip(threads)
    # wbits=31: a single gzip member, as Barman's restore expects (zlib 16+MAX_WBITS).
    isal_zlib = _import("isal.isal_zlib")
    compressor: Compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
    return compressor


class _Collected:
    """The file python-isal's threaded writer writes to, from its output thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        with self._lock:
            self._data += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        with self._lock:
            data = bytes(self._data)
            self._data.clear()
        return data


class _ThreadedGzip:
    """One gzip member compressed by several threads, pigz's way (python-isal's threaded
    writer): 1 MiB blocks compressed in parallel, each primed with the previous block's last
    32 KiB and ended by a sync flush, joined into one deflate stream with a combined CRC.
    Barman's restore reads it as any gzip file; it is a few tenths of a percent larger."""

    def __init__(self, threads: int) -> None:
        self._out = _Collected()
        self._writer = _import("isal.igzip_threaded").open(
            self._out, "wb", compresslevel=GZIP_LEVEL, threads=threads)

    def compress(self, data: bytes, /) -> bytes:
        self._writer.write(data)
        return self._out.take()

    def flush(self) -> bytes:
        self._writer.close()
        return self._out.take()


class _Blocks:
    """One stream made of blocks compressed independently on several threads and joined in
    order, for formats that can hold such blocks in a single stream: an lz4 frame of
    independent blocks, and a bzip2 stream (a block never depends on the one before it).
    At most two blocks per thread are in flight, so memory stays a few blocks."""

    def __init__(self, threads: int, block_size: int, encode: Callable[[bytes], bytes],
                 join: Callable[[bytes], bytes], head: bytes, end: Callable[[], bytes]) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="compress")
        self._limit, self._block_size = 2 * threads, block_size
        self._encode, self._join, self._end = encode, join, end
        self._pending: deque[Future[bytes]] = deque()
        self._buffer = bytearray()
        self._out = [head]

    def compress(self, data: bytes, /) -> bytes:
        self._buffer += data
        size = self._block_size
        while len(self._buffer) >= size:
            self._submit(bytes(self._buffer[:size]))
            del self._buffer[:size]
        while self._pending and (self._pending[0].done() or len(self._pending) > self._limit):
            self._out.append(self._join(self._pending.popleft().result()))
        return self._take()

    def flush(self) -> bytes:
        if self._buffer:
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        try:
            while self._pending:
                self._out.append(self._join(self._pending.popleft().result()))
        finally:
            self._pool.shutdown(cancel_futures=True)
        self._out.append(self._end())
        return self._take()

    def _submit(self, block: bytes) -> None:
        self._pending.append(self._pool.submit(self._encode, block))

    def _take(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out


LZ4_BLOCK = 1 << 20  # the frame's largest block is declared as 1 MiB


def _lz4_block(data: bytes) -> bytes:
    """One independent block of an lz4 frame: its size, then its data (stored as is, with
    the size's high bit set, when lz4 would make it larger)."""
    packed: bytes = _import("lz4.block").compress(data, store_size=False)
    if len(packed) >= len(data):
        return (len(data) | 0x80000000).to_bytes(4, "little") + data
    return len(packed).to_bytes(4, "little") + packed


def _threaded_lz4(threads: int) -> Compressor:
    frame = _import("lz4.frame")
    header: bytes = frame.LZ4FrameCompressor(
        block_size=frame.BLOCKSIZE_MAX1MB, block_linked=False, content_checksum=False).begin()
    return _Blocks(threads, LZ4_BLOCK, _lz4_block, lambda block: block, header,
                   lambda: b"\0\0\0\0")  # the end mark: a block of size 0


BZIP2_LEVEL = 9  # Barman's
BZIP2_PIECE = 8 << 20  # about nine of bzip2's 900 kB blocks: only a piece's last is short
_BZ2_BLOCK_MAGIC = 0x314159265359  # the 48 bits that open a block (pi), and end a stream
_BZ2_END_MAGIC = 0x177245385090  # (sqrt(pi)); neither is byte-aligned after the first block


def _bit_positions(data: bytes, magic: int) -> list[int]:
    """Every bit offset in `data` where the 48-bit `magic` starts. For each of the eight
    alignments, its five whole bytes are found with bytes.find, then the rest checked."""
    found = []
    for shift in range(8):
        window = (magic << (8 - shift)).to_bytes(7, "big")  # magic at bit `shift` of byte 0
        middle = window[1:6]
        at = data.find(middle, 1)
        while at != -1:
            start = at - 1
            value = int.from_bytes(data[start:start + 7].ljust(7, b"\0"), "big")
            if (value >> (8 - shift)) & ((1 << 48) - 1) == magic:
                found.append(8 * start + shift)
            at = data.find(middle, at + 1)
    return sorted(found)


class _Bzip2Joiner:
    """Splices bzip2 streams into one. A bzip2 block depends on nothing before it but is not
    byte-aligned: each piece's blocks are cut out from between its 4-byte header and its end
    marker and shifted into place, and the stream ends with the combined CRC of all the
    blocks (per block: rotate left by one, XOR the block's CRC), as bzip2 computes it. The
    block CRCs are read after each block's magic; a piece whose CRCs do not add up to its
    own combined CRC (a magic found by chance inside compressed data) is refused."""

    def __init__(self) -> None:
        self._bits, self._count, self._crc = 0, 0, 0  # bits not yet a whole byte

    def add(self, stream: bytes) -> bytes:
        value, total = int.from_bytes(stream, "big"), 8 * len(stream)
        ends = _bit_positions(stream, _BZ2_END_MAGIC)
        blocks = _bit_positions(stream, _BZ2_BLOCK_MAGIC)
        if not ends or not blocks or blocks[0] != 32:
            raise ValueError("bzip2 produced a stream this cannot splice")
        end = ends[-1]

        def field(bit: int) -> int:  # the 32 bits after the 48-bit magic at `bit`
            return (value >> (total - bit - 80)) & 0xFFFFFFFF

        crc, piece = self._crc, 0
        for bit in blocks:
            piece = _rotate(piece) ^ field(bit)
            crc = _rotate(crc) ^ field(bit)
        if piece != field(end):
            raise ValueError("bzip2 produced a stream this cannot splice")
        self._crc = crc
        length = end - 32
        return self._append((value >> (total - end)) & ((1 << length) - 1), length)

    def end(self) -> bytes:
        out = self._append((_BZ2_END_MAGIC << 32) | self._crc, 80)
        if self._count:
            out += (self._bits << (8 - self._count)).to_bytes(1, "big")
        return out

    def _append(self, bits: int, length: int) -> bytes:
        bits |= self._bits << length
        count = self._count + length
        whole, self._count = divmod(count, 8)
        self._bits = bits & ((1 << self._count) - 1)
        return (bits >> self._count).to_bytes(whole, "big")


def _rotate(crc: int) -> int:
    return ((crc << 1) | (crc >> 31)) & 0xFFFFFFFF


def _bzip2_piece(data: bytes) -> bytes:
    return bz2.compress(data, BZIP2_LEVEL)


def _bzip2(threads: int) -> Compressor:
    if threads > 1:
        joiner = _Bzip2Joiner()
        return _Blocks(threads, BZIP2_PIECE, _bzip2_piece, joiner.add,
                       b"BZh%d" % BZIP2_LEVEL, joiner.end)
    return bz2.BZ2Compressor(BZIP2_LEVEL)


def _snappy(threads: int) -> Compressor:
    # The snappy *framing* format, which is what Barman's restore decodes.
    compressor: Compressor = _import("snappy").StreamCompressor()
    return compressor


def _lz4(threads: int) -> Compressor:
    if threads > 1:
        return _threaded_lz4(threads)
    return _Lz4(_import("lz4.frame"))


def _zstd(threads: int) -> Compressor:
    module = _import("zstandard")
    compressor: Compressor = module.ZstdCompressor(level=ZSTD_LEVEL, threads=threads).compressobj()
    return compressor


def _read_identity() -> Decompressor:
    return _Identity()


def _read_gzip() -> Decompressor:
    # ISA-L reads the same single gzip member as zlib, about three times as fast
    isal_zlib = _import("isal.isal_zlib")
    return _Stream("gzip", isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS), tail=True)


def _read_bzip2() -> Decompressor:
    return _Stream("bzip2", bz2.BZ2Decompressor())


def _read_snappy() -> Decompressor:
    return _Snappy(_import("snappy").StreamDecompressor())


def _read_lz4() -> Decompressor:
    return _Stream("lz4", _import("lz4.frame").LZ4FrameDecompressor())


def _read_zstd() -> Decompressor:
    # the standard library's zstd (3.14's compression.zstd, backported): unlike zstandard's
    # decompressobj it takes max_length, so a frame of zero pages cannot come back in one piece
    return _Stream("zstd", _zstd_module().ZstdDecompressor())


def _zstd_module() -> ModuleType:
    try:
        return importlib.import_module("compression.zstd")
    except ImportError:
        try:
            return importlib.import_module("backports.zstd")
        except ImportError as exc:
            raise missing_module("backports.zstd", cause=exc) from None


def read_xz() -> Decompressor:
    """xz, as barman-cloud-wal-archive writes WAL (base backups have no xz)."""
    return _Stream("xz", lzma.LZMADecompressor(format=lzma.FORMAT_XZ))


@dataclass(frozen=True)
class Codec:
    """A compression choice: its CLI name, the object suffix Barman keys on, how to write and
    read its stream, and what it costs: CPU ns per byte read and per byte it writes
    (workload.py balances chunks with them; measured on the benchmark's cluster, see
    benchmarks/README.md item 12)."""

    name: str
    extension: str
    factory: Callable[[int], Compressor]
    reader: Callable[[], Decompressor]
    ns_per_input_byte: float
    ns_per_output_byte: float
    threaded: bool = False  # `new(threads)` compresses one stream with several threads

    @property
    def suffix(self) -> str:
        """The archive suffix, e.g. `.tar.gz`."""
        return ".tar" + self.extension

    def new(self, threads: int = 0) -> Compressor:
        """A compressor for one object. `threads` > 1 lets a codec that can compress one
        stream in parallel (all but snappy) use that many threads; 0 compresses in the
        caller's."""
        return self.factory(threads)

    def decompressor(self) -> Decompressor:
        """A decompressor for one object written by `new`."""
        return self.reader()


CODECS: dict[str, Codec] = {
    "none": Codec("none", "", _identity, _read_identity, 0.28, 0.0),
    "gzip": Codec("gzip", ".gz", _gzip, _read_gzip, 1.25, 3.2, threaded=True),
    "bzip2": Codec("bzip2", ".bz2", _bzip2, _read_bzip2, 14.4, 125.0, threaded=True),
    "snappy": Codec("snappy", ".snappy", _snappy, _read_snappy, 0.21, 2.8),
    "lz4": Codec("lz4", ".lz4", _lz4, _read_lz4, 0.28, 1.7, threaded=True),
    "zstd": Codec("zstd", ".zst", _zstd, _read_zstd, 0.53, 8.9, threaded=True),
}


def get_codec(name: str | None) -> Codec:
    """Look a codec up by name (`None` means no compression)."""
    codec = CODECS.get(name or "none")
    if codec is None:
        raise ValueError(f"unknown compression {name!r}; choose one of {', '.join(CODECS)}")
    codec.new()  # fail early, in the parent, when an optional module is missing
    return codec


def compression_threads(jobs: int) -> int:
    """Threads for one compression stream while `jobs` jobs run: the cores their worker
    processes leave idle (0, compress in the caller's thread, when there are none to spare)."""
    spare = usable_cores() // worker_processes(jobs)
    return spare if spare > 1 else 0
