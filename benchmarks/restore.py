"""Benchmark: pgcloud-restore against barman-cloud-restore and the raw fetch, on one backup.

    python -m benchmarks.restore [--size-mib 1024] [--codecs none,gzip,zstd] [--jobs 2]
                                 [--repeat N] [--into /tmp,/dev/shm] [--out DIR]
                                 [--report JSON]

Builds the benchmark's cluster (benchmarks/cluster.py) and store (SeaweedFS), takes one backup
per codec with the runner (not measured), then restores each backup, back to back and in
rotating order:

- `pgcloud`: `pgcloud-restore -J N` into an empty directory (tablespace beside it);
- `barman`: `barman-cloud-restore` 3.20 of the same backup (it has no -J: one object after
  another, its decompression piped into GNU tar);
- `raw`: the raw limit, the same archive objects fetched from the store into memory and
  dropped, N objects at once, each as 8 MiB ranged GETs four at a time (as the restore
  fetches): what the store and the network give a plain client with nothing to write.

Every restore runs as the postgres OS user, as a database host would, into a fresh directory
under each of `--into` (default: /tmp, this machine's disk). Dirty pages are written back
(sync) before each run, so that no run pays for the last one's. Restores on disk are removed
only at the end (one per run: 1.1 GB each): right after 13,000 files are deleted, ext4 here
spends up to 400 us of kernel time per file created (its inode allocator scans past the
recently freed inodes; perf shows find_inode_bit -> recently_deleted), which would make
each measurement pay for the previous one's clean-up. Restores into tmpfs are removed at
once. A second `--into` such as /dev/shm (tmpfs) shows what the tools cost apart from the
file system, whose file creation both tools pay and the raw fetch does not.

The package is byte-compiled first, as an installed wheel is (the postgres user cannot
write `__pycache__` in this checkout, and compiling on every start cost each process 0.2 s).

Recorded per run: wall-clock seconds, MB/s of the restored data (the bytes of the files in
the archives), and the peak RSS of the whole process tree. Prints a Markdown table with the
targets and writes the runs as JSON into --out.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.cluster import build_cluster, data_size
from benchmarks.measure import exit_timed, load_average, run_measured, write_results
from benchmarks.run import FLAGS, MB, drop_bucket, fresh_bucket, log
from tests.rig.barman import barman_env
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server, start_s3_server
from tests.rig.tools import (
    REPO_ROOT,
    as_postgres,
    barman_bin,
    chown_to_postgres,
    make_workdir,
    postgres_home,
)

CODECS = ("none", "gzip", "zstd")
TOOLS = ("pgcloud", "barman", "raw")
RAW_FETCH = """
import concurrent.futures, json, os, sys
import boto3
bucket, jobs = sys.argv[1], int(sys.argv[3])
objects = [(key, int(size)) for key, size in (item.split("=") for item in sys.argv[2].split(","))]
client = boto3.client("s3", endpoint_url=os.environ["PGCLOUD_BENCH_ENDPOINT"])
RANGE = 8 << 20
def get(key, start, size):
    end = min(start + RANGE, size) - 1
    body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
    return len(body.read())
def fetch(item):
    key, size = item
    with concurrent.futures.ThreadPoolExecutor(4) as ranges:
        return sum(ranges.map(lambda start: get(key, start, size), range(0, size, RANGE)))
with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    print(json.dumps({"bytes": sum(pool.map(fetch, sorted(objects, key=lambda o: -o[1])))}))
"""


@dataclass
class RestoreRun:
    tool: str  # pgcloud | barman | raw
    codec: str
    jobs: int
    seconds: float
    data_bytes: int  # the restored files' bytes (the same for every tool of a codec)
    stored_bytes: int
    peak_rss: int
    load: tuple[float, float, float]
    ok: bool = True
    note: str = ""
    into: str = "/tmp"  # the file system restored into (the raw fetch writes nothing)

    @property
    def mb_s(self) -> float:
        return self.data_bytes / MB / self.seconds if self.seconds else 0.0


def _env(s3: S3Server) -> dict[str, str]:
    env = barman_env(s3)
    env.update({"PYTHONPATH": str(REPO_ROOT), "HOME": postgres_home(),
                "PGCLOUD_BENCH_ENDPOINT": s3.endpoint_url})
    return env


def _backup(s3: S3Server, pg: PgCluster, codec: str, jobs: int) -> tuple[str, str, str]:
    """(bucket, url, backup ID) of one runner backup of the cluster."""
    bucket = fresh_bucket(s3)
    url = f"s3://{bucket}/bench"
    env = _env(s3) | pg.env()
    done = run_measured(as_postgres([
        sys.executable, "-m", "airflow_provider_pgcloud.runner", "--endpoint-url",
        s3.endpoint_url, "--immediate-checkpoint", "-J", str(jobs), *FLAGS[codec], url, "pg",
    ]), env=env)
    if done.returncode != 0:
        raise RuntimeError(f"backup ({codec}) failed: {done.stderr[-2000:]}")
    [info] = [k for k in s3.list_objects(bucket) if k.endswith("/backup.info")]
    return bucket, url, info.split("/")[-2]


def _restore_argv(tool: str, s3: S3Server, url: str, backup_id: str, target: Path,
                  jobs: int, bucket: str, keys: Sequence[str]) -> list[str]:
    tablespace = f"tbs1:{target.parent / 'tbs1'}"
    if tool == "pgcloud":
        return as_postgres([sys.executable, "-m", "airflow_provider_pgcloud.runner.cli.restore",
                            "--endpoint-url", s3.endpoint_url, "-J", str(jobs),
                            "--tablespace", tablespace, url, "pg", backup_id, str(target)])
    if tool == "barman":
        return as_postgres([str(barman_bin("barman-cloud-restore")), "--endpoint-url",
                            s3.endpoint_url, "--tablespace", tablespace, url, "pg", backup_id,
                            str(target)])
    return [sys.executable, "-c", RAW_FETCH, bucket, ",".join(keys), str(jobs)]


def _workdir(into: str) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="pgcloud-bench-restore-", dir=into))
    workdir.chmod(0o755)
    chown_to_postgres(workdir)
    return workdir


def _in_memory(path: str) -> bool:
    """Whether `path` is on a tmpfs (its mount point is the longest that prefixes it)."""
    best, kind = "", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _device, point, fstype, *_ = line.split()
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fstype
    return kind == "tmpfs"


def restore_runs(s3: S3Server, pg: PgCluster, codecs: Sequence[str], jobs: int,
                 repeat: int, data_bytes: int, into: Sequence[str]) -> list[RestoreRun]:
    runs: list[RestoreRun] = []
    kept: list[Path] = []  # restores on disk, removed at the end (see the module doc)
    for n, codec in enumerate(codecs):
        bucket, url, backup_id = _backup(s3, pg, codec, jobs)
        objects = s3.list_objects(bucket, f"bench/pg/base/{backup_id}/")
        keys = [f"{k}={objects[k]}" for k in objects if ".tar" in k]
        stored = sum(size for k, size in objects.items() if ".tar" in k)
        try:
            for r in range(repeat):
                order = TOOLS[(n + r) % 3:] + TOOLS[:(n + r) % 3]  # who goes first rotates
                for tool in order:
                    for place in into if tool != "raw" else into[:1]:
                        workdir = _workdir(place)
                        target = workdir / "pgdata"
                        os.sync()  # the last run's dirty pages are not written back during this
                        load = load_average()
                        done = run_measured(_restore_argv(tool, s3, url, backup_id, target,
                                                          jobs, bucket, keys), env=_env(s3))
                        if _in_memory(place):
                            shutil.rmtree(workdir, ignore_errors=True)
                        else:
                            kept.append(workdir)
                        run = RestoreRun(tool, codec, jobs, done.seconds, data_bytes, stored,
                                         done.peak_rss, load, done.returncode == 0,
                                         done.stderr[-300:] if done.returncode else "", place)
                        runs.append(run)
                        log(f"{codec:5} {tool:8} {place:9} {run.seconds:6.1f}s "
                            f"{run.mb_s:6.0f} MB/s RSS {run.peak_rss / MB:4.0f} MB "
                            f"{'ok' if run.ok else 'FAILED'}")
        finally:
            drop_bucket(s3, bucket)
    for workdir in kept:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def _median(runs: list[RestoreRun], tool: str, codec: str, into: str) -> RestoreRun | None:
    mine = sorted((r for r in runs if r.tool == tool and r.codec == codec and r.ok
                   and (tool == "raw" or r.into == into)), key=lambda r: r.seconds)
    return mine[len(mine) // 2] if mine else None


def _cell(run: RestoreRun | None, value: str) -> str:
    return f"{getattr(run, value) / (MB if value == 'peak_rss' else 1):.1f}" if run else "-"


def table(runs: list[RestoreRun]) -> str:
    lines = ["| codec | into | -J | pgcloud-restore s | MB/s | peak RSS MB | "
             "barman-cloud-restore s | MB/s | peak RSS MB | raw fetch s | vs Barman | "
             "vs raw fetch |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    targets: list[str] = []
    for codec in dict.fromkeys(r.codec for r in runs):
        for into in dict.fromkeys(r.into for r in runs if r.tool != "raw"):
            ours, barman, raw = (_median(runs, tool, codec, into) for tool in TOOLS)
            if ours is None:
                continue
            vs_barman = barman.seconds / ours.seconds if barman else float("nan")
            vs_raw = ours.seconds / raw.seconds if raw else float("nan")
            lines.append(
                f"| {codec} | {into} | {ours.jobs} | {ours.seconds:.2f} | {ours.mb_s:.0f} | "
                f"{ours.peak_rss / MB:.0f} | {_cell(barman, 'seconds')} | "
                f"{barman.mb_s if barman else float('nan'):.0f} | "
                f"{barman.peak_rss / MB if barman else float('nan'):.0f} | "
                f"{_cell(raw, 'seconds')} | {vs_barman:.2f}x | {vs_raw:.2f}x |")
            if codec == "none":
                targets.append(f"none into {into} within 1.3x of the raw fetch: {vs_raw:.2f}x "
                               f"{'MET' if vs_raw <= 1.3 else 'MISSED'}")
            else:
                targets.append(f"{codec} into {into} at least 2x barman-cloud-restore: "
                               f"{vs_barman:.2f}x {'MET' if vs_barman >= 2 else 'MISSED'}")
            targets.append(f"{codec} into {into} peak RSS at most 400 MB: "
                           f"{ours.peak_rss / MB:.0f} MB "
                           f"{'MET' if ours.peak_rss <= 400 * MB else 'MISSED'}")
    return "\n".join(lines) + "\n\nTargets:\n" + "\n".join(f"- {t}" for t in targets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restore",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--into", default="/tmp",
                        help="comma-separated directories to restore under (each its own row)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument("--report", help="print the table of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.report:
        data = json.loads(Path(args.report).read_text())
        print(table([RestoreRun(**{**r, "load": tuple(r["load"])}) for r in data["runs"]]))
        return 0
    codecs = [c for c in args.codecs.split(",") if c]
    # as an installed wheel is: byte-compiled (this checkout runs as the postgres user, who
    # cannot write __pycache__ here, so every start would compile the package again)
    compileall.compile_dir(REPO_ROOT / "airflow_provider_pgcloud", quiet=1)
    s3 = start_s3_server(make_workdir("bench-s3"), remove_workdir_on_stop=True)
    pg = None
    try:
        pg, _plan = build_cluster(args.size_mib, log)
        data_bytes, files = data_size(pg)
        log(f"cluster: {data_bytes / MB:.0f} MB in {files} files")
        runs = restore_runs(s3, pg, codecs, args.jobs, args.repeat, data_bytes,
                            [place for place in args.into.split(",") if place])
    finally:
        if pg is not None:
            pg.stop()
        s3.stop()
    report = table(runs)
    print(report)
    path = write_results(args.out, f"restore-{data_bytes // MB}MB",
                         " ".join(["python -m benchmarks.restore", *(argv or sys.argv[1:])]),
                         {"data_bytes": data_bytes, "files": files,
                          "runs": [asdict(r) for r in runs]})
    log(f"wrote {path}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    exit_timed(main, log)
