"""Where an archive backup's tar members come from.

A source hands the archive (archive.py) its members chunk by chunk: `members(chunk)` yields
archive.Member objects in archive order. Today there is one, `LocalFiles`: the cluster's files
read on the database host. A source that receives the cluster over PostgreSQL's replication
protocol fits the same place: the upload step only asks its source for members.
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
