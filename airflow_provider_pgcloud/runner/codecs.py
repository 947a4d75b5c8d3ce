"""Compression codecs: one compression stream per archive object.

Barman's restore decompresses only the first gzip member / bz2 stream / zstd or lz4 frame of an
object and silently drops the rest, so every codec here produces exactly one stream per object,
fed incrementally as the tar stream is produced.
"""

from __future__ import annotations

import bz2
import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from .errors import BackupFailed


class Compressor(Protocol):
    """The zlib-compressobj shape: feed data, then flush once at the end of the object."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


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
        raise BackupFailed(f"Missing required python module: {module.split('.')[0]}") from None


def _gzip() -> Compressor:
    # wbits=31: a single gzip member, as Barman's restore expects (zlib 16+MAX_WBITS).
    return zlib.compressobj(6, zlib.DEFLATED, 31)


def _bzip2() -> Compressor:
    return bz2.BZ2Compressor(9)


def _snappy() -> Compressor:
    # The snappy *framing* format, which is what Barman's restore decodes.
    compressor: Compressor = _import("snappy").StreamCompressor()
    return compressor


def _lz4() -> Compressor:
    return _Lz4(_import("lz4.frame"))


def _zstd() -> Compressor:
    compressor: Compressor = _import("zstandard").ZstdCompressor(level=3).compressobj()
    return compressor


@dataclass(frozen=True)
class Codec:
    """A compression choice: its CLI name, the object suffix Barman keys on, and a factory."""

    name: str
    extension: str
    new: Callable[[], Compressor]

    @property
    def suffix(self) -> str:
        """The archive suffix, e.g. `.tar.gz`."""
        return ".tar" + self.extension


CODECS: dict[str, Codec] = {
    "none": Codec("none", "", _Identity),
    "gzip": Codec("gzip", ".gz", _gzip),
    "bzip2": Codec("bzip2", ".bz2", _bzip2),
    "snappy": Codec("snappy", ".snappy", _snappy),
    "lz4": Codec("lz4", ".lz4", _lz4),
    "zstd": Codec("zstd", ".zst", _zstd),
}


def get_codec(name: str | None) -> Codec:
    """Look a codec up by name (`None` means no compression)."""
    codec = CODECS.get(name or "none")
    if codec is None:
        raise ValueError(f"unknown compression {name!r}; choose one of {', '.join(CODECS)}")
    codec.new()  # fail early, in the parent, when an optional module is missing
    return codec
