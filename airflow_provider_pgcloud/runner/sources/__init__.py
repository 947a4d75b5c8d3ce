"""Where an archive backup's tar members come from.

`local.py`: the cluster's files, read on the database host; a source of this kind hands the
archive (archive.py) the members of a planned chunk, `members(chunk)`, in archive order, so any
process can upload any chunk. `stream.py`: the server's own tar stream over the replication
protocol (BASE_BACKUP); it arrives once, in order, and stream_backup.py cuts it into objects as
it comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from .local import LocalFiles

if TYPE_CHECKING:
    from ..archive import Member
    from ..plan import Chunk


SOURCES = ("local", "streaming")
"""The names a user chooses a source by (`source=` in Airflow, the fleet file)."""


def check_source(source: str) -> None:
    """Refuse an unknown source name with the list of known ones."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


class Source(Protocol):
    def members(self, chunk: Chunk) -> Iterator[Member]: ...


__all__ = ["SOURCES", "LocalFiles", "Source", "check_source"]
