"""How a backup is cut into archive objects: by the work each file will take, not its bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_provider_pgcloud.runner.layout import DATA
from airflow_provider_pgcloud.runner.plan import plan_chunks
from airflow_provider_pgcloud.runner.sources.local import ArchiveRoot, walk

MIB = 1 << 20


@pytest.fixture
def mixed_cluster(tmp_path: Path) -> Path:
    """Two 16 MiB files that compress to almost nothing, then one 16 MiB file that does not
    compress at all (a table of encrypted or already compressed values)."""
    base = tmp_path / "pgdata" / "base" / "5"
    base.mkdir(parents=True)
    (base / "1000").write_bytes(b"aaaa pgbench row " * (16 * MIB // 17))
    (base / "1001").write_bytes(b"bbbb pgbench row " * (16 * MIB // 17))
    (base / "1002").write_bytes(os.urandom(16 * MIB))
    return tmp_path / "pgdata"


def _layout(pgdata: Path, compression: str | None) -> list[list[str]]:
    root = ArchiveRoot(DATA, str(pgdata))
    chunks = plan_chunks([root], jobs=2, max_archive_size=1 << 40, min_archive_size=0,
                         compression=compression)
    layout = [sorted(Path(e.name).name for e in walk(root, c.first, c.last) if not e.is_dir)
              for c in chunks]
    return [files for files in layout if files]  # the directories may make a chunk of their own


def test_incompressible_file_gets_an_object_of_its_own_and_goes_first(mixed_cluster):
    """With zstd the random file is most of the work: it is uploaded alone and started
    first, while the two compressible files, twice its bytes, share one object."""
    assert _layout(mixed_cluster, "zstd") == [["1002"], ["1000", "1001"]]


def test_without_compression_objects_are_balanced_by_bytes(mixed_cluster):
    """Stored as read, every byte costs the same: each 16 MiB file is its own share."""
    layout = _layout(mixed_cluster, None)
    assert sorted(layout) == [["1000"], ["1001"], ["1002"]]
