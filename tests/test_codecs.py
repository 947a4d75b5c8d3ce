"""Every codec, in one thread or several, writes what Barman's restore reads: one gzip
member, bz2 stream or zstd/lz4 frame per object (its decompressors stop after the first and
drop the rest silently), holding exactly the bytes that went in, at about the same size."""

from __future__ import annotations

import bz2
import random
import zlib

import lz4.frame  # type: ignore[import-untyped]
import pytest
import snappy  # type: ignore[import-untyped]
import zstandard

from airflow_provider_pgcloud.runner.codecs import get_codec


def _barman_reads(codec: str, stream: bytes) -> tuple[bytes, bytes]:
    """What Barman's restore decompressor for `codec` returns, and what it leaves unread."""
    if codec == "gzip":
        gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return gz.decompress(stream), gz.unused_data
    if codec == "bzip2":
        bz = bz2.BZ2Decompressor()
        return bz.decompress(stream), bz.unused_data
    if codec == "lz4":
        frame = lz4.frame.LZ4FrameDecompressor()
        return frame.decompress(stream), frame.unused_data or b""
    if codec == "zstd":
        zst = zstandard.ZstdDecompressor().decompressobj()
        return zst.decompress(stream), zst.unused_data
    return snappy.StreamDecompressor().decompress(stream), b""


def _cluster_like(size: int) -> bytes:
    """Bytes shaped like relation files: 8 kB pages of text rows, hex hashes and zeros."""
    rng = random.Random(7)
    words = [rng.randbytes(rng.randint(2, 9)).hex() for _ in range(500)]
    pages: list[bytes] = []
    while sum(len(page) for page in pages) < size:
        text = " ".join(rng.choices(words, k=700)).encode()[:5000]
        pages.append(text + rng.randbytes(1000).hex().encode()[:2000] + bytes(8192 - 7000))
    return b"".join(pages)[:size]


DATA = _cluster_like(20 << 20)


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "snappy", "lz4", "zstd"])
def test_one_stream_in_any_number_of_threads(codec):
    sizes = {}
    for threads in (0, 2, 3):
        compressor = get_codec(codec).new(threads)
        pieces = [compressor.compress(DATA[at:at + 777_777])
                  for at in range(0, len(DATA), 777_777)]
        stream = b"".join(pieces) + compressor.flush()
        data, rest = _barman_reads(codec, stream)
        assert data == DATA and rest == b"", (codec, threads)
        sizes[threads] = len(stream)
    assert max(sizes.values()) <= 1.05 * sizes[0], sizes


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "lz4", "zstd"])
@pytest.mark.parametrize("data", [b"", b"x", bytes(3 << 20)], ids=["empty", "one-byte", "zeros"])
def test_edge_sizes_in_several_threads(codec, data):
    compressor = get_codec(codec).new(2)
    stream = compressor.compress(data) + compressor.flush()
    assert _barman_reads(codec, stream) == (data, b"")
