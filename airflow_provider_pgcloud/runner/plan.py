"""Cut a backup into archive objects of about equal work: the chunk plan.

A chunk is a contiguous range of one archive's walk (sources/local.py), described by its first
and last key, so a plan for a million files is a few hundred small descriptors, and whoever
uploads a chunk (a worker process, an Airflow task) re-walks only its range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from .cpu import usable_cores, worker_processes
from .layout import archive_stem
from .sources.local import ArchiveRoot, walk
from .workload import Workload


@dataclass(frozen=True)
class Chunk:
    """A contiguous range of one archive's walk: the unit of work of one upload task."""

    archive: str
    index: int
    first: str
    last: str
    planned_bytes: int
    files: int
    threads: int = 0
    """Compression threads for this chunk's single stream (0: the backup's default). More
    than one when the chunk alone is more work than one core's share of the backup: a large
    file cannot be split, so its chunk is the critical path, and the cores the other chunks
    leave idle at the end compress it too (codecs.py: zstd and gzip can)."""

    @property
    def name(self) -> str:
        """Object stem as Barman names split archives: `data`, `data_0001`, `16384_0002`."""
        return archive_stem(self.archive, self.index)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Chunk:
        return cls(**data)  # type: ignore[arg-type]


DEFAULT_MIN_ARCHIVE_SIZE = 64 << 20


def chunk_target(total: int, jobs: int, floor: int) -> int:
    """Work per chunk: enough chunks to keep every worker busy.

    Four chunks per worker process (jobs capped at the cores, as the uploads are) balance
    what the estimate gets wrong. Chunks are not cut below `floor` unless that would leave a
    worker idle: each object has a fixed cost (a request, and in Airflow a whole task), so a
    small cluster becomes one object per worker, not hundreds of tiny ones.
    """
    workers = worker_processes(jobs)
    balanced = math.ceil(total / (workers * 4))
    one_each = math.ceil(total / workers)
    return max(1, balanced, min(floor, one_each))


def plan_chunks(roots: Sequence[ArchiveRoot], jobs: int, max_archive_size: int,
                min_archive_size: int = DEFAULT_MIN_ARCHIVE_SIZE,
                compression: str | None = None) -> list[Chunk]:
    """Walk every archive and cut it into chunks of about equal work, most work first.

    Work is estimated per file for the backup's codec (workload.py): bytes that will not
    compress weigh more than bytes that will. `min_archive_size` is converted at the
    cluster's average work per byte; `max_archive_size` bounds a chunk's bytes. A file is
    never split, so a chunk can exceed its share by at most one file (PostgreSQL files are at
    most 1 GiB). Every archive yields at least one chunk: Barman's restore needs the
    unnumbered main object. Two streaming walks (one to price, one to cut), so memory does
    not grow with the number of small files. The order returned is the order to start them
    in: a 1 GiB relation file is one indivisible chunk, and starting it last would leave
    the other workers idle while it runs.
    """
    workload = Workload(compression)
    for root in roots:
        for entry in walk(root):
            workload.add(entry)
    per_byte = workload.total / max(workload.bytes, 1)
    target = chunk_target(workload.total, jobs, math.ceil(min_archive_size * per_byte))
    planned: list[tuple[int, Chunk]] = []
    for root in roots:
        index, first, last, size, work, files = 0, "", "", 0, 0, 0
        for entry in walk(root):
            cost = workload.cost(entry)
            if size and (work + cost > target or size + entry.tar_size > max_archive_size):
                planned.append((work, Chunk(root.archive, index, first, last, size, files)))
                index, size, work, files = index + 1, 0, 0, 0
            if not size:
                first = entry.key
            last = entry.key
            size += entry.tar_size
            work += cost
            files += 0 if entry.is_dir else 1
        if size:
            planned.append((work, Chunk(root.archive, index, first, last, size, files)))
        elif not index:  # an empty tablespace still gets its (empty) main archive
            planned.append((0, Chunk(root.archive, 0, "\x00", "\x00", 0, 0)))
    share = workload.total / usable_cores()  # one core's part of the whole backup
    return [replace(chunk, threads=critical_path_threads(work, share))
            for work, chunk in sorted(planned, key=lambda item: -item[0])]


def critical_path_threads(work: float, share: float) -> int:
    """Threads for a chunk of `work` when each core's fair part is `share`: as many cores as
    it would take to finish it within that part (0, the default, when one is enough)."""
    if share <= 0:
        return 0
    threads = min(usable_cores(), math.ceil(work / share))
    return threads if threads > 1 else 0


