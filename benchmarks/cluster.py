"""A realistic source cluster for the benchmark, built on the test rig's PostgreSQL 15.

Three kinds of data, because each stresses a different part of a backup:
- a pgbench set (`pgbench -i -s N`): large relation files of very compressible rows, the
  codecs' favourite case and the bulk of most real clusters;
- a table of random text (words drawn from a random vocabulary, plus an md5 column): compresses
  about as well as real application text, so the codecs have to work for their ratio;
- thousands of small relations (tables with a primary key and a TOAST table each): many small
  files, the cost of headers, opens and walks rather than of bytes.

Sizes are in MiB of what a base backup reads (PGDATA without WAL, plus the rig's tablespace):
two small tables per MiB (about 1/8 of the size), then about 60% of the rest to pgbench and 40%
to the text table.

Shapes (`shape=`):
- `standard`: the above.
- `large-relation`: 45% of the size is one table of hex hashes (two md5s a row), which
  compresses about 2:1, like tables of hashes, UUIDs or JSON; the standard mix fills the rest.
  Its relation file, up to 1 GiB, cannot be split across archives: the critical path.
"""

from __future__ import annotations

import io
import random
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tests.rig.pgcluster import PgCluster, init_cluster
from tests.rig.tools import as_postgres, make_workdir

MIB = 1 << 20
SHAPES = ("standard", "large-relation")
HASH_ROW_BYTES = 97  # heap bytes per row of `hashes`: 64 hex characters and the tuple header
LARGE_RELATION_SHARE = 0.45
PGBENCH_MIB_PER_SCALE = 15.0  # pgbench_accounts + its index, measured on PostgreSQL 15
TEXT_ROW_BYTES = 600  # heap + pkey bytes per row of `notes`
SMALL_TABLE_MIB = 1 / 16  # one small table with its index and TOAST table
BASE_MIB = 40  # initdb's catalogs in three databases, and the rig's own tables


@dataclass(frozen=True)
class ClusterPlan:
    """How much of each kind of data to load for a target size."""

    target_mib: int
    pgbench_scale: int
    text_rows: int
    small_tables: int
    hash_rows: int = 0
    shape: str = "standard"

    @classmethod
    def for_size(cls, target_mib: int, shape: str = "standard") -> ClusterPlan:
        if shape not in SHAPES:
            raise ValueError(f"unknown cluster shape {shape!r}; choose one of {SHAPES}")
        hash_mib = target_mib * LARGE_RELATION_SHARE if shape == "large-relation" else 0
        mixed = target_mib - hash_mib
        # two small tables per MiB (~64 KiB and 5-6 files each: heap, fsm, vm, pkey, TOAST
        # heap and index), so a 1 GiB cluster has ~2,000 of them and ~10,000 files in all
        small = max(50, int(mixed * 2))
        rest = max(0.0, mixed - small * SMALL_TABLE_MIB - BASE_MIB)
        scale = round(rest * 0.62 / PGBENCH_MIB_PER_SCALE)  # 0: no pgbench set (tiny runs)
        text_rows = max(1000, int(rest * 0.38 * MIB / TEXT_ROW_BYTES))
        hash_rows = int(hash_mib * MIB / HASH_ROW_BYTES)
        return cls(target_mib, scale, text_rows, small, hash_rows, shape)


def _vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    letters = string.ascii_lowercase
    return ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(size)]


def _text_rows(rows: int, seed: int = 7) -> Iterator[str]:
    """COPY lines: id, a sentence of 50-80 random words, an md5-like hex string."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    for i in range(1, rows + 1):
        body = " ".join(rng.choices(words, k=rng.randint(50, 80)))
        yield f"{i}\t{body}\t{rng.getrandbits(128):032x}\n"


class _LineReader(io.RawIOBase):
    """A file object over an iterator of text lines, for COPY FROM STDIN."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while len(self._pending) < len(buffer):
            chunk = "".join(line for _, line in zip(range(2000), self._lines, strict=False))
            if not chunk:
                break
            self._pending += chunk.encode()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _load_text(pg: PgCluster, rows: int) -> None:
    pg.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL, tag text)",
               dbname="app")
    with closing(pg.connect("app")) as conn, conn.cursor() as cur:
        cur.copy_expert("COPY notes (id, body, tag) FROM STDIN",
                        io.BufferedReader(_LineReader(_text_rows(rows)), 1 << 20))


_SMALL_TABLES_SQL = """
DO $$
BEGIN
  FOR i IN {first}..{last} LOOP
    EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, label text, payload text)', i);
    EXECUTE format(
      'INSERT INTO small_%s SELECT g, ''label '' || g, repeat(md5(g::text), 3)'
      ' FROM generate_series(1, %s) g', i, 5 + i % 40);
  END LOOP;
END $$
"""


def _pgbench(pg: PgCluster, scale: int) -> None:
    assert pg.socket_dir is not None
    subprocess.run(
        as_postgres([pg.bindir / "pgbench", "-i", "-q", "-s", str(scale), "-h", pg.socket_dir,
                     "-p", str(pg.port), "-U", pg.user, "app"]),
        env=pg.server_env, cwd="/", check=True, capture_output=True, text=True,
    )


def build_cluster(
    target_mib: int, log: Callable[[str], None] = print, shape: str = "standard",
) -> tuple[PgCluster, ClusterPlan]:
    """initdb, load the data of `shape`, VACUUM and CHECKPOINT; the cluster is running.

    The caller stops it (`cluster.stop()` also removes its work directory).
    """
    plan = ClusterPlan.for_size(target_mib, shape)
    started = time.monotonic()
    pg = init_cluster(make_workdir("bench-pg"), 15, tablespace=True,
                      remove_workdir_on_stop=True)
    try:
        pg.execute("ALTER SYSTEM SET max_wal_size = '4GB'")
        pg.execute("SELECT pg_reload_conf()")
        if plan.pgbench_scale:
            log(f"loading pgbench -s {plan.pgbench_scale}")
            _pgbench(pg, plan.pgbench_scale)
        if plan.hash_rows:
            log(f"loading {plan.hash_rows} rows of hex hashes (one large relation)")
            pg.execute("CREATE TABLE hashes AS SELECT md5(i::text) || md5((-i)::text) AS h"
                       f" FROM generate_series(1, {plan.hash_rows}) i", dbname="app")
        log(f"loading {plan.text_rows} rows of random text")
        _load_text(pg, plan.text_rows)
        log(f"creating {plan.small_tables} small tables")
        for first in range(1, plan.small_tables + 1, 1000):  # a transaction's locks are few
            last = min(plan.small_tables, first + 999)
            pg.execute(_SMALL_TABLES_SQL.format(first=first, last=last), dbname="app")
        pg.execute("VACUUM ANALYZE", dbname="app")
        pg.execute("CHECKPOINT")
    except BaseException:
        pg.stop()
        raise
    log(f"cluster built in {time.monotonic() - started:.0f}s")
    return pg, plan


def data_size(pg: PgCluster) -> tuple[int, int]:
    """(bytes, files) a base backup of this cluster reads: PGDATA minus pg_wal, plus tbs1."""
    total = files = 0
    roots = [pg.pgdata] + ([pg.tablespace_dir] if pg.tablespace_dir else [])
    for root in roots:
        for path in Path(root).rglob("*"):
            if "pg_wal" in path.parts or not path.is_file() or path.is_symlink():
                continue
            total += path.stat().st_size
            files += 1
    return total, files
