"""How much work each file of a backup is, so that chunks are balanced by time, not by bytes.

An archive object takes time mostly for its compressed bytes: the codec spends most of its
effort producing them and the store (or the network) has to take each one in. Bytes read weigh
far less, and every file costs a little on its own (open, stat, tar header, manifest entry).
On the benchmark's cluster zstd packs a 1 GiB pgbench file into 22 MB and it is stored in
0.8 s, while a 640 MiB table of random text packs into 250 MB and takes 5 s. Cut by bytes, that
table shared an object with 18,000 small files, and through Airflow that one task ran for
seconds after the others had finished (benchmarks/README.md, item 12).

So the planner compresses a few 64 KiB samples of every file of at least 8 MiB with the
backup's codec (one per 512 MiB, at most two: 0.01% of a 1 GiB relation segment) and prices
each file, in nanoseconds of one core, as

    bytes * codec input cost + bytes * ratio * (codec output cost + STORE_NS_PER_BYTE) + FILE_NS

Files too small to sample take the ratio of the sampled bytes. The constants were measured on
the benchmark machine; only their proportions matter.
"""

from __future__ import annotations

import math
import os
import stat
from typing import TYPE_CHECKING

from .codecs import get_codec

if TYPE_CHECKING:
    from .sources.local import Entry

SAMPLED_SIZE = 8 << 20
"""Files at least this big are sampled; PostgreSQL's relation files grow to 1 GiB."""

SAMPLE_SIZE = 64 << 10
SAMPLE_EVERY = 512 << 20
MAX_SAMPLES = 2

STORE_NS_PER_BYTE = 10.0
"""Sending one stored byte: the client and SeaweedFS on the benchmark machine spend about
10 CPU-s per GB together, about what 1 Gbit/s of network takes to carry a byte."""

FILE_NS = 25_000
"""One file's own cost: lstat, open, tar header and manifest entry (measured: 24-32 us)."""


class Workload:
    """Prices the entries of one backup plan: `add` every entry once, then ask `cost`."""

    def __init__(self, compression: str | None) -> None:
        self._codec = get_codec(compression)
        self._ratios: dict[str, float] = {}
        self._sampled_bytes = 0
        self._sampled_stored = 0.0
        self._bytes = 0
        self._entries = 0

    def add(self, entry: Entry) -> None:
        """Count an entry of the first walk, sampling it if it is a large regular file."""
        size = entry.tar_size
        self._bytes += size
        self._entries += 1
        if (self._codec.ns_per_output_byte and stat.S_ISREG(entry.st.st_mode)
                and entry.st.st_size >= SAMPLED_SIZE):
            ratio = self._sample(entry.path, entry.st.st_size)
            if ratio is not None:
                self._ratios[entry.key] = ratio
                self._sampled_bytes += size
                self._sampled_stored += size * ratio

    @property
    def bytes(self) -> int:
        """Bytes of tar stream added."""
        return self._bytes

    @property
    def total(self) -> int:
        """The cost of everything added."""
        unsampled = self._bytes - self._sampled_bytes
        stored = self._sampled_stored + unsampled * self._default_ratio()
        return self._price(self._bytes, stored, self._entries)

    def cost(self, entry: Entry) -> int:
        """The cost of one entry (a file of the second walk that was not added, because it is
        new, is priced at the sampled bytes' ratio)."""
        size = entry.tar_size
        return self._price(size, size * self._ratios.get(entry.key, self._default_ratio()), 1)

    def _price(self, read: float, stored: float, entries: int) -> int:
        return round(read * self._codec.ns_per_input_byte
                     + stored * (self._codec.ns_per_output_byte + STORE_NS_PER_BYTE)
                     + entries * FILE_NS)

    def _default_ratio(self) -> float:
        """The sampled bytes' ratio; 1 (stored as read) when nothing was sampled, as with no
        compression, which `add` never samples."""
        return self._sampled_stored / self._sampled_bytes if self._sampled_bytes else 1.0

    def _sample(self, path: str, size: int) -> float | None:
        """Compressed size / raw size of evenly spread samples; None if unreadable (the
        upload then reports the file properly)."""
        count = max(1, min(MAX_SAMPLES, math.ceil(size / SAMPLE_EVERY)))
        raw = packed = 0
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            for index in range(count):
                offset = (size * (2 * index + 1) // (2 * count)) // 8192 * 8192
                data = os.pread(fd, SAMPLE_SIZE, offset)
                if not data:
                    continue
                compressor = self._codec.new()
                packed += len(compressor.compress(data)) + len(compressor.flush())
                raw += len(data)
        except OSError:
            return None
        finally:
            os.close(fd)
        return packed / raw if raw else None
