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


class Source(Protocol):
    def members(self, chunk: Chunk) -> Iterator[Member]: ...


__all__ = ["LocalFiles", "Source"]
