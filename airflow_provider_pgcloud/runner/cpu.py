"""How much of the machine a backup's jobs use.

Compression is CPU-bound, so more worker processes than cores only adds start-up time, memory
and contention: `-J N` runs N uploads at once, compressed by at most one process per core. A
job count above the core count becomes more parts in flight per object instead (upload.py),
and a count below it lends the idle cores to codecs that can compress one stream with several
threads (codecs.py).
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def worker_processes(jobs: int) -> int:
    """Processes that compress and upload for `jobs` jobs: one per job, at most one per core."""
    return max(1, min(jobs, usable_cores()))
