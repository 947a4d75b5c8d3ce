"""Benchmark: memory and speed against the number of files (the many-files shape).

    python -m benchmarks.files [--counts 10000,100000,1000000] [--jobs 4] [--codec none]
                               [--barman-up-to 100000] [--out DIR] [--report JSON]

A cluster with almost no data (initdb, the rig's tablespace) gets `count` small plain files
inside PGDATA (`pgcloud_many_files/<n // 1000>/<n>`, 16 bytes each: a base backup takes any
file there as it is), then the runner backs it up with `-J jobs` as the postgres user, into a
fresh bucket; barman-cloud-backup does the same for the counts up to --barman-up-to (it
needs minutes per 100,000 files). The counts grow in place: each adds files to the last.

Recorded per run: seconds, files per second (the files the backup read / its time), and the
peak RSS of the whole process tree (every worker included) and of its largest process.
Prints a Markdown table, writes the runs as JSON and a chart of peak RSS against the file
count (PNG) into --out.
"""

from __future__ import annotations

import argparse
import compileall
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.measure import RssSampler, exit_timed, write_results
from benchmarks.run import (
    FLAGS,
    MB,
    _barman_argv,
    _barman_env,
    _runner_argv,
    _runner_env,
    drop_bucket,
    fresh_bucket,
    log,
)
from tests.rig.pgcluster import PgCluster, init_cluster
from tests.rig.s3server import S3Server, start_s3_server
from tests.rig.tools import REPO_ROOT, chown_to_postgres, make_workdir

FILE_BYTES = b"pgcloud bench\n\0\0"  # 16 bytes
PER_DIRECTORY = 1000
TOOLS = ("runner", "barman")


@dataclass
class FilesRun:
    tool: str
    files: int  # the files the backup read (the added ones and the cluster's own)
    jobs: int
    codec: str
    seconds: float
    peak_rss: int  # the whole process tree
    largest_rss: int  # its largest process
    ok: bool

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0


def _add_files(pg: PgCluster, have: int, want: int) -> None:
    root = pg.pgdata / "pgcloud_many_files"
    for n in range(have, want):
        directory = root / str(n // PER_DIRECTORY)
        if n % PER_DIRECTORY == 0 or n == have:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / str(n)).write_bytes(FILE_BYTES)
    chown_to_postgres(root, recursive=True)


def _cluster_files(pg: PgCluster) -> int:
    roots = [pg.pgdata] + ([pg.tablespace_dir] if pg.tablespace_dir else [])
    return sum(1 for root in roots for path in Path(root).rglob("*")
               if path.is_file() and "pg_wal" not in path.parts)


def _measure(argv: list[str], env: dict[str, str]) -> tuple[float, int, int, bool, str]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with RssSampler(proc.pid) as sampler:
        _out, err = proc.communicate(timeout=7200)
    return (time.perf_counter() - started, sampler.peak, sampler.largest,
            proc.returncode == 0, err[-2000:])


def backup_runs(s3: S3Server, pg: PgCluster, counts: Sequence[int], jobs: int, codec: str,
                barman_up_to: int) -> list[FilesRun]:
    runs: list[FilesRun] = []
    have = 0
    for count in counts:
        log(f"adding files: {have} -> {count}")
        _add_files(pg, have, count)
        have = count
        files = _cluster_files(pg)
        for tool in TOOLS:
            if tool == "barman" and count > barman_up_to:
                continue
            bucket = fresh_bucket(s3)
            url = f"s3://{bucket}/files"
            if tool == "runner":
                argv, env = _runner_argv(codec, jobs, s3, url), _runner_env(s3, pg)
            else:
                argv, env = _barman_argv(codec, jobs, s3, pg, url), _barman_env(s3, pg)
            try:
                seconds, peak, largest, ok, err = _measure(argv, env)
            finally:
                drop_bucket(s3, bucket)
            run = FilesRun(tool, files, jobs, codec, seconds, peak, largest, ok)
            runs.append(run)
            log(f"{tool:7} {files:8d} files {seconds:7.1f}s {run.files_per_s:7.0f} files/s "
                f"RSS tree {peak / MB:5.0f} MB, largest {largest / MB:4.0f} MB "
                f"{'ok' if ok else 'FAILED: ' + err}")
    return runs


def table(runs: Sequence[FilesRun]) -> str:
    lines = ["| tool | files | -J | codec | s | files/s | peak RSS MB (tree) | "
             "largest process MB |", "|---|--:|--:|---|--:|--:|--:|--:|"]
    for run in runs:
        lines.append(f"| {run.tool} | {run.files:,} | {run.jobs} | {run.codec} | "
                     f"{run.seconds:.1f} | {run.files_per_s:,.0f} | {run.peak_rss / MB:.0f} | "
                     f"{run.largest_rss / MB:.0f} |")
    return "\n".join(lines)


def chart(runs: Sequence[FilesRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for tool in TOOLS:
        mine = [run for run in runs if run.tool == tool and run.ok]
        if mine:
            axis.plot([r.files for r in mine], [r.peak_rss / MB for r in mine], marker="o",
                      label=f"{tool}: tree peak RSS")
    axis.axhline(400, color="grey", linestyle="--", label="target: 400 MB")
    axis.set_xscale("log")
    axis.set_xlabel("files in the backup")
    axis.set_ylabel("peak RSS of the process tree, MB")
    axis.set_title("Memory against the number of files")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.files",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--counts", default="10000,100000,1000000")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--codec", choices=sorted(FLAGS), default="none")
    parser.add_argument("--barman-up-to", type=int, default=100_000)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    parser.add_argument("--report", help="print the table of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.report:
        data = json.loads(Path(args.report).read_text())
        print(table([FilesRun(**run) for run in data["runs"]]))
        return 0
    counts = sorted(int(c) for c in args.counts.split(",") if c)
    compileall.compile_dir(REPO_ROOT / "airflow_provider_pgcloud", quiet=1)  # as installed
    s3 = start_s3_server(make_workdir("bench-s3"), remove_workdir_on_stop=True)
    pg = None
    try:
        pg = init_cluster(make_workdir("bench-pg"), 15, tablespace=True,
                          remove_workdir_on_stop=True)
        runs = backup_runs(s3, pg, counts, args.jobs, args.codec, args.barman_up_to)
    finally:
        if pg is not None:
            pg.stop()
        s3.stop()
    print(table(runs))
    path = write_results(args.out, f"files-{counts[-1]}",
                         " ".join(["python -m benchmarks.files", *(argv or sys.argv[1:])]),
                         {"runs": [asdict(run) for run in runs]})
    chart(runs, path.with_suffix(".png"))
    log(f"wrote {path} and its chart")
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    exit_timed(main, log)
