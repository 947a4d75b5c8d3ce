"""Benchmark: this runner against barman-cloud-backup 3.20 and the raw limits, on one cluster.

    python -m benchmarks.run [--size-mib 1024] [--shape standard|large-relation]
                             [--codecs none,gzip,...] [--jobs 1,2,4]
                             [--no-barman] [--no-limits] [--no-streaming] [--repeat N]
                             [--out DIR]

Builds a realistic cluster (benchmarks/cluster.py), starts SeaweedFS, then for every codec and
job count runs the runner (reading PGDATA), the runner with --streaming (BASE_BACKUP over one
replication connection), Barman and `pg_basebackup -Ft` to a local directory back to back on
the same cluster and store, rotating which goes first, each backup into a fresh bucket (or
directory) that is deleted afterwards. The limits (one raw multipart PUT of a tar of the same
files; each codec alone on that tar stream) run on the same cluster. Prints a table and writes
it as JSON and as a PNG chart into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cluster import SHAPES, build_cluster, data_size
from benchmarks.dag import Airflow
from benchmarks.measure import Measured, load_average, run_measured
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
    remove_workdir,
)

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
JOBS = (1, 2, 4)
FLAGS = {"none": [], "gzip": ["-z"], "bzip2": ["-j"], "snappy": ["--snappy"], "lz4": ["--lz4"],
         "zstd": ["--zstd"]}
# command-line tools on the same tar stream, for reference (not the limit: that is in-process)
CLI_CODECS = {
    "gzip": "gzip -9",  # what Barman does (zlib level 9), on one core
    "zstd": "zstd -T2 -3",
    "lz4": "lz4 -1",
}
# pg_basebackup -Ft writing to a local directory: what PostgreSQL 15's client can do with the same
# server stream. Compression on the client, as the runner does it (the server only streams);
# zstd at the runner's level on every core; no snappy in pg_basebackup.
PG_BASEBACKUP_COMPRESS = {
    "none": [],
    "gzip": ["--compress=client-gzip"],  # zlib's default level (6), one thread
    "lz4": ["--compress=client-lz4"],  # lz4's default (fast) level, one thread
    "zstd": [f"--compress=client-zstd:level=2,workers={os.cpu_count() or 1}"],
}
# the runner reading PGDATA, the runner streaming it over the replication protocol, Barman,
# pg_basebackup: one backup each, into a fresh bucket (or directory) deleted afterwards
BACKUP_TOOLS = ("runner", "streaming", "barman", "pg_basebackup")
# runs that keep one core busy for ~100 s on 2 GB (zlib level 9): scheduled after all others
LONG_RUNS = {("barman", "gzip"), ("cli", "gzip")}
MB = 1_000_000


@dataclass
class Run:
    """One measured command."""

    tool: str  # runner | streaming | barman | pg_basebackup | dag | raw-put | ingest | codec | cli
    codec: str
    jobs: int
    seconds: float
    bytes_in: int
    bytes_stored: int
    peak_rss: int
    load: tuple[float, float, float]
    ok: bool = True
    note: str = ""
    extra_bytes: int = 0  # stored outside base/: the runner's manifests

    @property
    def mb_s(self) -> float:
        return self.bytes_in / MB / self.seconds if self.seconds else 0.0


@dataclass
class Results:
    started: str
    command: str
    host: dict[str, Any]
    cluster: dict[str, Any]
    runs: list[Run] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- the store
def fresh_bucket(s3: S3Server) -> str:
    name = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


def drop_bucket(s3: S3Server, bucket: str) -> None:
    """Empty and delete a bucket (SeaweedFS then drops its volume, freeing the disk)."""
    client = s3.client()
    keys = list(s3.list_objects(bucket))
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k}
                                                                 for k in keys[i:i + 1000]]})
    with contextlib.suppress(Exception):
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


def stored_backup(s3: S3Server, bucket: str) -> tuple[int, int, str]:
    """(bytes under base/ (the archives and backup.info, what Barman stores), bytes elsewhere
    (the runner's manifests), backup.info status) of the one backup in `bucket`."""
    objects = s3.list_objects(bucket)
    status = ""
    for key in objects:
        if key.endswith("/backup.info"):
            for line in s3.get_object(bucket, key).decode().splitlines():
                if line.startswith("status="):
                    status = line.partition("=")[2]
    base = sum(size for key, size in objects.items() if "/base/" in key)
    return base, sum(objects.values()) - base, status


# ----------------------------------------------------------------------------- the tools
def _runner_argv(codec: str, jobs: int, s3: S3Server, url: str,
                 streaming: bool = False) -> list[str]:
    # --streaming connects as the other tools do (PGHOST etc.: TCP to 127.0.0.1, a password),
    # over initdb's default `host replication` line, which the rig keeps
    return as_postgres([
        sys.executable, "-m", "airflow_provider_pgcloud.runner", "--endpoint-url",
        s3.endpoint_url, *(["--streaming"] if streaming else []), "--immediate-checkpoint",
        "-J", str(jobs), *FLAGS[codec], url, "pg",
    ])


def _runner_env(s3: S3Server, pg: PgCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PG", "AZURE_", "GOOGLE_", "VIRTUAL_ENV"))}
    env.update(s3.env())
    env.update(pg.env())
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["HOME"] = postgres_home()
    return env


def _barman_argv(codec: str, jobs: int, s3: S3Server, pg: PgCluster, url: str) -> list[str]:
    return as_postgres([
        str(barman_bin("barman-cloud-backup")), "--endpoint-url", s3.endpoint_url,
        "--immediate-checkpoint", "-J", str(jobs), *FLAGS[codec], "-h", pg.host,
        "-p", str(pg.port), "-U", pg.user, url, "pg",
    ])


def _barman_env(s3: S3Server, pg: PgCluster) -> dict[str, str]:
    env = barman_env(s3, pg.env())
    env["HOME"] = postgres_home()
    return env


def backup_run(tool: str, codec: str, jobs: int, s3: S3Server, pg: PgCluster,
               raw_bytes: int, airflow: Airflow | None = None) -> Run:
    """One backup by `tool` into a fresh bucket; the bucket is deleted afterwards."""
    bucket = fresh_bucket(s3)
    url = f"s3://{bucket}/bench"
    cwd = "/"
    if tool in ("runner", "streaming"):
        argv = _runner_argv(codec, jobs, s3, url, streaming=tool == "streaming")
        env = _runner_env(s3, pg)
    elif tool == "dag":
        assert airflow is not None
        argv, cwd = airflow.argv(url, codec, jobs), str(REPO_ROOT)
        env = airflow.env
    else:
        argv, env = _barman_argv(codec, jobs, s3, pg, url), _barman_env(s3, pg)
    if airflow is not None and tool == "dag":
        airflow.resume()
    load = load_average()
    try:
        measured = run_measured(argv, env, cwd=cwd)
        stored, extra, status = stored_backup(s3, bucket)
    finally:
        drop_bucket(s3, bucket)
        if airflow is not None and tool == "dag":
            airflow.pause()
    ok = measured.returncode == 0 and status == "DONE"
    note = "" if ok else f"exit {measured.returncode}, status {status!r}: " + \
        (measured.stdout.strip()[-300:] + measured.stderr.strip()[-400:])
    seconds = measured.seconds
    if tool == "dag" and ok:
        # the DAG run itself, without the Airflow import and DAG parsing that a running
        # scheduler has done once and for all; the whole process is kept in the note
        seconds = json.loads(measured.stdout.strip().splitlines()[-1])["seconds"]
        note = f"process {measured.seconds:.1f}s"
    run = Run(tool, codec, jobs, seconds, raw_bytes, stored, measured.peak_rss, load,
              ok, note, extra)
    _log_backup(run)
    return run


def _log_backup(run: Run) -> None:
    log(f"{run.tool:7s} {run.codec:6s} -J {run.jobs}: {run.seconds:6.1f}s {run.mb_s:6.0f} MB/s "
        f"stored {run.bytes_stored / MB:8.1f} MB  peak RSS {run.peak_rss / MB:5.0f} MB  "
        f"load {run.load[0]:.2f}" + ("" if run.ok else f"  FAILED {run.note}"))


def _pg_basebackup_argv(codec: str, pg: PgCluster, target: Path) -> list[str]:
    # -X none --no-manifest: the same server work as the runner's BASE_BACKUP (no WAL, no
    # manifest); --no-sync: the runner does not fsync what it sends either
    return as_postgres([
        pg.bindir / "pg_basebackup", "-D", target, "-Ft", "-X", "none", "--no-manifest",
        "--no-sync", "-c", "fast", *PG_BASEBACKUP_COMPRESS[codec], "-h", pg.host,
        "-p", str(pg.port), "-U", pg.user,
    ])


def pg_basebackup_run(codec: str, jobs: int, pg: PgCluster, raw_bytes: int) -> Run:
    """`pg_basebackup -Ft` into a fresh local directory, removed afterwards. It has no -J: the
    same command runs in every -J group, for the rotation."""
    workdir = make_workdir("bench-basebackup")
    target = workdir / "backup"
    target.mkdir()
    chown_to_postgres(target, mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(pg.env())
    load = load_average()
    try:
        measured = run_measured(_pg_basebackup_argv(codec, pg, target), env)
        archives = sorted(path.name for path in target.iterdir())
        stored = sum(path.stat().st_size for path in target.iterdir())
    finally:
        remove_workdir(workdir)
    ok = measured.returncode == 0 and any(name.startswith("base.tar") for name in archives)
    note = ", ".join(archives) if ok else \
        f"exit {measured.returncode}: {measured.stderr.strip()[-400:]}"
    run = Run("pg_basebackup", codec, jobs, measured.seconds, raw_bytes, stored,
              measured.peak_rss, load, ok, note)
    _log_backup(run)
    return run


def _limit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.limits", *args]


def _tablespace_args(pg: PgCluster) -> list[str]:
    return ["--tablespace", str(pg.tablespace_dir)] if pg.tablespace_dir else []


def store_upload(tool: str, s3: S3Server, pg: PgCluster) -> Run:
    """The raw PUT (`raw-put`) or the in-memory upload (`ingest`) into a fresh bucket."""
    bucket = fresh_bucket(s3)
    env = {**os.environ, **s3.env(), "PYTHONPATH": str(REPO_ROOT)}
    load = load_average()
    try:
        measured = run_measured(_limit_argv(
            {"raw-put": "put", "ingest": "ingest"}[tool], "--endpoint-url", s3.endpoint_url,
            *_tablespace_args(pg), bucket, "bench/raw.tar", str(pg.pgdata)),
            env, cwd=str(REPO_ROOT))
    finally:
        drop_bucket(s3, bucket)
    return _limit_run(tool, "none", measured, load)


def codec_alone(codec: str, pg: PgCluster) -> Run:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    load = load_average()
    measured = run_measured(_limit_argv("codec", *_tablespace_args(pg), codec, str(pg.pgdata)),
                            env, cwd=str(REPO_ROOT))
    return _limit_run("codec", codec, measured, load)


def cli_codec(codec: str, pg: PgCluster) -> Run:
    from benchmarks.limits import tar_argv

    tar = " ".join(tar_argv(str(pg.pgdata), [str(pg.tablespace_dir)] if pg.tablespace_dir
                            else []))
    # no pipefail: GNU tar exits 1 when a file changed while it was read, as PostgreSQL's do
    script = f"{tar} 2>/dev/null | tee >(wc -c >&2) | {CLI_CODECS[codec]} -c | wc -c"
    load = load_average()
    measured = run_measured(["bash", "-c", script])
    if measured.returncode == 0:
        measured.stdout = json.dumps({
            "bytes_in": int(measured.stderr.split()[-1]), "bytes_out": int(measured.stdout)})
    run = _limit_run("cli", codec, measured, load)
    run.note = CLI_CODECS[codec]
    return run


def _limit_run(tool: str, codec: str, measured: Measured, load: tuple[float, float, float]) -> Run:
    ok = measured.returncode == 0
    counts = json.loads(measured.stdout.strip().splitlines()[-1]) if ok else {}
    # `ingest` times only its upload, not the reading of the data into memory before it
    run = Run(tool, codec, 0, counts.get("seconds", measured.seconds), counts.get("bytes_in", 0),
              counts.get("bytes_out", 0), measured.peak_rss, load, ok,
              "" if ok else measured.stderr.strip()[-400:])
    log(f"{tool:7s} {codec:6s}      : {run.seconds:6.1f}s {run.mb_s:6.0f} MB/s "
        f"out {run.bytes_stored / MB:8.1f} MB  load {load[0]:.2f}" + ("" if ok else " FAILED"))
    return run


# ---------------------------------------------------------------------------- the schedule
def schedule(codecs: Sequence[str], jobs: Sequence[int], barman: bool, limits: bool,
             repeat: int, dag: bool = False,
             streaming: bool = False) -> Iterator[tuple[str, str, int]]:
    """(tool, codec, jobs) in run order.

    For each codec: the codec alone (a limit), then for each -J the runner and Barman side by
    side (with the streaming runner and pg_basebackup when asked, the DAG when asked, and the
    raw PUT and the in-memory upload for `none`), who goes first rotating from one group to the
    next, and each group's order rotating from one repeat to the next, so that no tool always
    runs in the same place.

    The long, light runs (LONG_RUNS: ~100 s on one core) come last, after every repeat, so
    that no short run ever follows one: this VM drops pages nobody touched for 60 s, so a run
    that follows a long, light one reads them back and is up to 2.5 s slower, the DAG most of
    all (benchmarks/README.md, item 13). Among themselves the penalty is a few percent of 100 s.
    """
    runs = list(_rotation(codecs, jobs, barman, limits, repeat, dag, streaming))
    yield from (run for run in runs if run[:2] not in LONG_RUNS)
    yield from (run for run in runs if run[:2] in LONG_RUNS)


def _rotation(codecs: Sequence[str], jobs: Sequence[int], barman: bool, limits: bool,
              repeat: int, dag: bool, streaming: bool) -> Iterator[tuple[str, str, int]]:
    """Every run of `schedule`, in the rotating order, long ones still in their place."""
    for round_ in range(repeat):
        turn = round_
        for codec in codecs:
            if limits and codec != "none":
                yield "codec", codec, 0
                if codec in CLI_CODECS:
                    yield "cli", codec, 0
            for j in jobs:
                group = ["runner", *(["streaming"] if streaming else []),
                         *(["barman"] if barman else []),
                         *(["pg_basebackup"] if streaming and codec in PG_BASEBACKUP_COMPRESS
                           else []),
                         *(["dag"] if dag else []),
                         *(["raw-put", "ingest"] if limits and codec == "none" else [])]
                turn += 1
                first = turn % len(group)
                for tool in group[first:] + group[:first]:
                    yield tool, codec, j


def run_all(args: argparse.Namespace, results: Results, s3: S3Server, pg: PgCluster,
            raw_bytes: int, airflow: Airflow | None = None) -> None:
    for tool, codec, j in schedule(args.codecs, args.jobs, args.barman, args.limits,
                                   args.repeat, airflow is not None, args.streaming):
        if tool in ("raw-put", "ingest"):
            results.runs.append(store_upload(tool, s3, pg))
        elif tool == "codec":
            results.runs.append(codec_alone(codec, pg))
        elif tool == "cli":
            results.runs.append(cli_codec(codec, pg))
        elif tool == "pg_basebackup":
            results.runs.append(pg_basebackup_run(codec, j, pg, raw_bytes))
        else:
            results.runs.append(backup_run(tool, codec, j, s3, pg, raw_bytes, airflow))
    if args.limits and "none" not in args.codecs:  # compressed uploads need the PUT rate too
        results.runs.append(store_upload("raw-put", s3, pg))


# ---------------------------------------------------------------------------- the summary
def summarize(results: Results) -> list[dict[str, Any]]:
    """One row per (codec, jobs): medians of the runner's and Barman's runs, and the ratios."""
    runs = [r for r in results.runs if r.ok]

    def median(tool: str, codec: str, jobs: int, attr: str = "seconds") -> float | None:
        values = [getattr(r, attr) for r in runs
                  if r.tool == tool and r.codec == codec and r.jobs == jobs]
        return statistics.median(values) if values else None

    def peak(tool: str, codec: str, jobs: int) -> int | None:
        values = [r.peak_rss for r in runs
                  if r.tool == tool and r.codec == codec and r.jobs == jobs]
        return max(values) if values else None

    put = median("raw-put", "none", 0)
    ingest = median("ingest", "none", 0)
    put_bytes = median("raw-put", "none", 0, "bytes_in")
    cores = os.cpu_count() or 1
    rows = []
    keys = sorted({(r.codec, r.jobs) for r in results.runs if r.tool in BACKUP_TOOLS},
                  key=lambda k: (CODECS.index(k[0]) if k[0] in CODECS else 99, k[1]))
    for codec, jobs in keys:
        ours, theirs = median("runner", codec, jobs), median("barman", codec, jobs)
        raw = next(r.bytes_in for r in results.runs if r.codec == codec and r.jobs == jobs)
        stored = median("runner", codec, jobs, "bytes_stored")
        if codec == "none":
            limit = put
        else:
            # the slower of: compressing on the cores the jobs can use, and uploading the
            # compressed bytes at the raw PUT's rate
            alone = median("codec", codec, 0)
            upload = put * stored / put_bytes if put and stored and put_bytes else 0.0
            limit = max(upload, alone / min(jobs, cores)) if alone else None
        row: dict[str, Any] = {
            "codec": codec, "jobs": jobs, "raw_bytes": raw,
            "runner_s": ours, "barman_s": theirs,
            "runner_mb_s": raw / MB / ours if ours else None,
            "barman_mb_s": raw / MB / theirs if theirs else None,
            "runner_bytes": stored,
            "runner_manifest_bytes": median("runner", codec, jobs, "extra_bytes"),
            "barman_bytes": median("barman", codec, jobs, "bytes_stored"),
            "runner_rss": peak("runner", codec, jobs), "barman_rss": peak("barman", codec, jobs),
            "limit_s": limit,
            # a plain client uploading these bytes from memory: where the store's bound lies
            "ingest_s": ingest if codec == "none" else None,
        }
        row["speedup"] = theirs / ours if ours and theirs else None
        row["bytes_ratio"] = (row["runner_bytes"] / row["barman_bytes"]
                              if row["runner_bytes"] and row["barman_bytes"] else None)
        row["vs_limit"] = ours / limit if ours and limit else None
        row["ingest_vs_barman"] = theirs / ingest if codec == "none" and theirs and ingest \
            else None
        dag = median("dag", codec, jobs)
        row["dag_s"] = dag
        row["dag_vs_runner"] = dag / ours if dag and ours else None
        # the streaming source, and pg_basebackup -Ft to local disk on the same server stream
        streamed, basebackup = median("streaming", codec, jobs), median("pg_basebackup", codec,
                                                                         jobs)
        row.update({
            "streaming_s": streamed,
            "streaming_mb_s": raw / MB / streamed if streamed else None,
            "streaming_bytes": median("streaming", codec, jobs, "bytes_stored"),
            "streaming_rss": peak("streaming", codec, jobs),
            # speed ratios (> 1: the streaming source is faster)
            "streaming_vs_runner": ours / streamed if ours and streamed else None,
            "streaming_vs_barman": theirs / streamed if theirs and streamed else None,
            "pg_basebackup_s": basebackup,
            "pg_basebackup_mb_s": raw / MB / basebackup if basebackup else None,
            "pg_basebackup_bytes": median("pg_basebackup", codec, jobs, "bytes_stored"),
            "pg_basebackup_rss": peak("pg_basebackup", codec, jobs),
            "streaming_vs_pg_basebackup": (basebackup / streamed if basebackup and streamed
                                           else None),
        })
        rows.append(row)
    return rows


TARGETS = {
    # codec: (min speedup over Barman, max bytes ratio, max time / limit)
    "none": (1.3, None, 1.2),
    "gzip": (10.0, 1.05, None),
    "zstd": (2.0, None, None),
}
MAX_RSS_J4 = 400 * MB
MAX_DAG_VS_RUNNER = 1.5
MIN_NONE_VS_INGEST = 0.9  # uncompressed: at least this fraction of the in-memory upload's speed
# the streaming source: codec: (min speed vs the local-files runner, min speed vs Barman)
STREAMING_TARGETS = {
    "none": (0.8, None),
    "zstd": (None, 2.0),
}


def check_targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """(description, met) for every target that applies to the rows measured."""
    checks = []
    for row in rows:
        codec, jobs = row["codec"], row["jobs"]
        speedup, max_bytes, max_limit = TARGETS.get(codec, (None, None, None))
        where = f"{codec} -J {jobs}"
        if speedup and row["speedup"] is not None:
            checks.append((f"{where}: {row['speedup']:.2f}x Barman's speed >= {speedup}x",
                           row["speedup"] >= speedup))
        if max_bytes and row["bytes_ratio"] is not None:
            checks.append((f"{where}: {row['bytes_ratio']:.3f}x Barman's bytes <= {max_bytes}x",
                           row["bytes_ratio"] <= max_bytes))
        if codec == "none" and row.get("ingest_s") and row["runner_s"]:
            vs_ingest = row["ingest_s"] / row["runner_s"]
            checks.append((f"{where}: {vs_ingest:.2f}x the in-memory upload's speed >= "
                           f"{MIN_NONE_VS_INGEST}x", vs_ingest >= MIN_NONE_VS_INGEST))
        if max_limit and row["vs_limit"] is not None:
            checks.append((f"{where}: {row['vs_limit']:.2f}x the raw PUT time <= {max_limit}x",
                           row["vs_limit"] <= max_limit))
        if row.get("dag_vs_runner") is not None:
            checks.append((f"{where}: the DAG takes {row['dag_vs_runner']:.2f}x the runner's "
                           f"time <= {MAX_DAG_VS_RUNNER}x",
                           row["dag_vs_runner"] <= MAX_DAG_VS_RUNNER))
        if jobs == 4 and row["runner_rss"] is not None:
            checks.append((f"{where}: peak RSS {row['runner_rss'] / MB:.0f} MB <= 400 MB",
                           row["runner_rss"] <= MAX_RSS_J4))
        checks += _streaming_checks(row)
    return checks


def _streaming_checks(row: dict[str, Any]) -> list[tuple[str, bool]]:
    checks = []
    where = f"streaming {row['codec']} -J {row['jobs']}"
    vs_local, vs_barman = STREAMING_TARGETS.get(row["codec"], (None, None))
    if vs_local and row.get("streaming_vs_runner") is not None:
        checks.append((f"{where}: {row['streaming_vs_runner']:.2f}x the local-files "
                       f"source's speed >= {vs_local}x", row["streaming_vs_runner"] >= vs_local))
    if vs_barman and row.get("streaming_vs_barman") is not None:
        checks.append((f"{where}: {row['streaming_vs_barman']:.2f}x Barman's speed "
                       f">= {vs_barman}x", row["streaming_vs_barman"] >= vs_barman))
    if row["jobs"] == 4 and row.get("streaming_rss") is not None:
        checks.append((f"{where}: peak RSS {row['streaming_rss'] / MB:.0f} MB <= 400 MB",
                       row["streaming_rss"] <= MAX_RSS_J4))
    return checks


def ingest_notes(rows: list[dict[str, Any]]) -> list[str]:
    """For `none`: a plain upload of the same bytes from memory, against Barman's speed.

    Uncompressed, every tool is bound by how fast the store takes the bytes, and here the
    store shares the cores with the tool. A client with no files to read shows where that
    bound lies; it is not a hard ceiling (its threads share one GIL).
    """
    return [
        f"none -J {row['jobs']}: boto3 uploads the same bytes from memory in "
        f"{row['ingest_s']:.1f}s, {row['ingest_vs_barman']:.2f}x Barman's speed "
        f"(the runner: {_fmt(row['speedup'], '.2f')}x)"
        for row in rows if row.get("ingest_vs_barman") is not None
    ]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: Results, rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (seconds, MB/s, MB stored, peak RSS MB, ratios)."""
    lines = [
        "| codec | -J | runner s | runner MB/s | Barman s | Barman MB/s | speed vs Barman "
        "| runner MB stored | Barman MB stored | bytes vs Barman | runner RSS MB "
        "| Barman RSS MB | limit s | runner / limit |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['codec']} | {r['jobs']} | {_fmt(r['runner_s'], '.1f')} "
            f"| {_fmt(r['runner_mb_s'], '.0f')} | {_fmt(r['barman_s'], '.1f')} "
            f"| {_fmt(r['barman_mb_s'], '.0f')} | {_fmt(r['speedup'], '.2f')}x "
            f"| {_fmt(r['runner_bytes'] and r['runner_bytes'] / MB, '.1f')} "
            f"| {_fmt(r['barman_bytes'] and r['barman_bytes'] / MB, '.1f')} "
            f"| {_fmt(r['bytes_ratio'], '.3f')} "
            f"| {_fmt(r['runner_rss'] and r['runner_rss'] / MB, '.0f')} "
            f"| {_fmt(r['barman_rss'] and r['barman_rss'] / MB, '.0f')} "
            f"| {_fmt(r['limit_s'], '.1f')} | {_fmt(r['vs_limit'], '.2f')}x |"
        )
    if any(r.get("streaming_s") or r.get("pg_basebackup_s") for r in rows):
        lines += ["", streaming_table(rows)]
    if any(r.get("dag_s") for r in rows):
        lines += ["", "| codec | -J | runner s | DAG s (LocalExecutor) | DAG / runner |",
                  "|---|--:|--:|--:|--:|"]
        for r in rows:
            lines.append(f"| {r['codec']} | {r['jobs']} | {_fmt(r['runner_s'], '.1f')} "
                         f"| {_fmt(r['dag_s'], '.1f')} | {_fmt(r['dag_vs_runner'], '.2f')}x |")
    limits: dict[tuple[str, str, str], list[Run]] = {}
    for run in results.runs:
        if run.tool in ("raw-put", "ingest", "codec", "cli") and run.ok:
            limits.setdefault((run.tool, run.codec, run.note), []).append(run)
    if limits:
        lines += ["", "| limit (median of n runs) | codec | n | s | MB/s in | MB out |",
                  "|---|---|--:|--:|--:|--:|"]
        for (tool, codec, note), runs in limits.items():
            what = {"raw-put": "raw multipart PUT of a tar stream (boto3)",
                    "ingest": "store ingest: the tar stream from memory, 16 MiB parts, "
                              "4 threads",
                    "codec": "codec alone, in-process, one stream",
                    "cli": f"`{note}` on the tar stream"}[tool]
            seconds = statistics.median(run.seconds for run in runs)
            out = statistics.median(run.bytes_stored for run in runs)
            lines.append(f"| {what} | {codec} | {len(runs)} | {seconds:.1f} "
                         f"| {runs[0].bytes_in / MB / seconds:.0f} | {out / MB:.1f} |")
    manifests = [r["runner_manifest_bytes"] for r in rows if r.get("runner_manifest_bytes")]
    if manifests:
        low, high = f"{min(manifests) / MB:.1f}", f"{max(manifests) / MB:.1f}"
        lines += ["", f"Bytes stored count what Barman also stores (the archives and backup.info "
                      f"under base/); the runner also writes its per-archive manifests beside "
                      f"them: {low if low == high else low + '-' + high} MB here."]
    loads = [r.load[0] for r in results.runs]
    if loads:
        lines += ["", f"Load average (1 min) at the start of each run: min {min(loads):.2f}, "
                      f"median {statistics.median(loads):.2f}, max {max(loads):.2f} "
                      f"on {os.cpu_count()} cores."]
    return "\n".join(lines)


def streaming_table(rows: list[dict[str, Any]]) -> str:
    """The streaming source beside the local-files runner, Barman and pg_basebackup -Ft."""
    lines = [
        "| codec | -J | local files s | streaming s | streaming MB/s | streaming vs local files "
        "| Barman s | streaming vs Barman | pg_basebackup -Ft s | pg_basebackup MB/s "
        "| streaming vs pg_basebackup | streaming MB stored | pg_basebackup MB stored "
        "| streaming RSS MB | pg_basebackup RSS MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['codec']} | {r['jobs']} | {_fmt(r['runner_s'], '.1f')} "
            f"| {_fmt(r.get('streaming_s'), '.1f')} | {_fmt(r.get('streaming_mb_s'), '.0f')} "
            f"| {_fmt(r.get('streaming_vs_runner'), '.2f')}x | {_fmt(r['barman_s'], '.1f')} "
            f"| {_fmt(r.get('streaming_vs_barman'), '.2f')}x "
            f"| {_fmt(r.get('pg_basebackup_s'), '.1f')} "
            f"| {_fmt(r.get('pg_basebackup_mb_s'), '.0f')} "
            f"| {_fmt(r.get('streaming_vs_pg_basebackup'), '.2f')}x "
            f"| {_fmt(r.get('streaming_bytes') and r['streaming_bytes'] / MB, '.1f')} "
            f"| {_fmt(r.get('pg_basebackup_bytes') and r['pg_basebackup_bytes'] / MB, '.1f')} "
            f"| {_fmt(r.get('streaming_rss') and r['streaming_rss'] / MB, '.0f')} "
            f"| {_fmt(r.get('pg_basebackup_rss') and r['pg_basebackup_rss'] / MB, '.0f')} |"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Throughput (runner, Barman, limit; the streaming runner and pg_basebackup when measured)
    per codec and job count, and the tools' peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['codec']}\n-J {r['jobs']}" for r in rows]
    xs = range(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.8), 8),
                                      height_ratios=[2, 1], sharex=True)

    def mbs(key: str) -> list[float]:
        return [r["raw_bytes"] / MB / r[key] if r.get(key) else 0 for r in rows]

    def present(series: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """The series that were measured (the runner's always)."""
        return [s for s in series if s[0].startswith("runner") or any(r.get(s[0]) for r in rows)]

    speeds = present([
        ("runner_s", "this runner (local files)", "C0"),
        ("streaming_s", "this runner, --streaming", "C2"),
        ("barman_s", "barman-cloud-backup 3.20", "C1"),
        ("pg_basebackup_s", "pg_basebackup -Ft, local disk", "C4"),
        ("limit_s", "limit (raw PUT / codec)", "lightgray"),
    ])
    width = 0.8 / len(speeds)
    for i, (key, label, color) in enumerate(speeds):
        offset = (i - (len(speeds) - 1) / 2) * width
        top.bar([x + offset for x in xs], mbs(key), width, label=label, color=color)
    top.set_ylabel("MB/s (uncompressed)")
    top.set_title(title)
    top.set_ylim(0, max([v for key, _, _ in speeds for v in mbs(key)] + [1]) * 1.3)
    top.legend(loc="upper left", fontsize="small", ncols=3)
    memories = present([
        ("runner_rss", "this runner", "C0"),
        ("streaming_rss", "this runner, --streaming", "C2"),
        ("barman_rss", "barman-cloud-backup", "C1"),
    ])
    width = 0.8 / len(memories)
    for i, (key, label, color) in enumerate(memories):
        offset = (i - (len(memories) - 1) / 2) * width
        bottom.bar([x + offset for x in xs], [(r.get(key) or 0) / MB for r in rows], width,
                   label=label, color=color)
    bottom.axhline(400, color="red", linestyle="--", linewidth=1, label="400 MB")
    bottom.set_ylabel("peak RSS, MB")
    bottom.set_xticks(list(xs), labels)
    peak = max([(r.get(key) or 0) / MB for r in rows for key, _, _ in memories] + [400])
    bottom.set_ylim(0, peak * 1.35)
    bottom.legend(loc="upper left", fontsize="small", ncols=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- entry point
def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024,
                        help="approximate cluster size in MiB (default 1024)")
    parser.add_argument("--shape", choices=SHAPES, default="standard",
                        help="cluster shape (benchmarks/cluster.py): standard or large-relation")
    parser.add_argument("--codecs", type=_csv(str), default=list(CODECS),
                        help=f"comma-separated subset of {','.join(CODECS)}")
    parser.add_argument("--jobs", type=_csv(int), default=list(JOBS),
                        help="comma-separated -J values (default 1,2,4)")
    parser.add_argument("--no-barman", dest="barman", action="store_false",
                        help="skip barman-cloud-backup")
    parser.add_argument("--no-limits", dest="limits", action="store_false",
                        help="skip the raw PUT, store ingest and codec-alone limits")
    parser.add_argument("--no-streaming", dest="streaming", action="store_false",
                        help="skip the runner's --streaming source and pg_basebackup -Ft")
    parser.add_argument("--dag", action="store_true",
                        help="also run the example DAG (LocalExecutor, mapped uploads) each time")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure every pair N times, alternating the order; medians")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: print the table of an earlier run's JSON")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="directory for the JSON and PNG (default benchmarks/results)")
    args = parser.parse_args(argv)
    unknown = set(args.codecs) - set(FLAGS)
    if unknown:
        parser.error(f"unknown codecs: {', '.join(sorted(unknown))}")
    return args


def report(path: Path) -> int:
    """Print the table and the targets of a JSON this module wrote."""
    data = json.loads(path.read_text())
    runs = [Run(**{**run, "load": tuple(run["load"])}) for run in data.pop("runs")]
    results = Results(data["started"], data["command"], data["host"], data["cluster"], runs)
    rows = summarize(results)
    size = results.cluster.get("bytes", 0) / MB
    print(f"{results.command}\n\n{size:.0f} MB cluster, {results.host['cpus']} cores "
          f"({results.started})\n\n{table(results, rows)}\n")
    print_verdicts(rows)
    return 0


def print_verdicts(rows: list[dict[str, Any]]) -> tuple[list[tuple[str, bool]], list[str]]:
    """Print every target met or not, and the store-ingest comparisons; return both."""
    checks, notes = check_targets(rows), ingest_notes(rows)
    for description, met in checks:
        print(f"{'met    ' if met else 'NOT MET'}  {description}")
    for note in notes:
        print(f"ingest   {note}")
    return checks, notes


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    # a killed benchmark must still stop its servers and clusters (the finally below)
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results(
        started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), command=command.strip(),
        host={"cpus": os.cpu_count(), "platform": platform.platform(),
              "python": platform.python_version()},
        cluster={},
    )
    # an installed package has its bytecode compiled; the runner runs as postgres, which
    # cannot write __pycache__ into this tree, so compile it here once
    subprocess.run([sys.executable, "-m", "compileall", "-q", "airflow_provider_pgcloud"],
                   cwd=REPO_ROOT, check=False)
    s3 = start_s3_server(make_workdir("bench-s3"), remove_workdir_on_stop=True)
    pg: PgCluster | None = None
    airflow: Airflow | None = None
    try:
        log(f"building a cluster of about {args.size_mib} MiB")
        pg, plan = build_cluster(args.size_mib, log, args.shape)
        raw_bytes, files = data_size(pg)
        results.cluster = {**asdict(plan), "bytes": raw_bytes, "files": files}
        log(f"cluster: {raw_bytes / MB:.0f} MB in {files} files")
        if args.dag:
            log("preparing Airflow (metadata database, API server, DAG processor, scheduler)")
            airflow = Airflow(pg, s3)
            # a deployment has run its DAG before: the first run of a fresh Airflow also
            # serializes the DAG and fills caches, so it is run once unmeasured
            warm = backup_run("dag", args.codecs[0], max(args.jobs), s3, pg, raw_bytes, airflow)
            log(f"(that DAG run warmed Airflow up and is not counted: ok={warm.ok})")
        run_all(args, results, s3, pg, raw_bytes, airflow)
    finally:
        if airflow is not None:
            airflow.stop()
        if pg is not None:
            pg.stop()
        s3.stop()
    rows = summarize(results)
    text = table(results, rows)
    size = results.cluster.get("bytes", 0) / MB
    title = f"{size:.0f} MB cluster, {results.host['cpus']} cores ({results.started})"
    print(f"\n{command}\n\n{title}\n\n{text}\n")
    checks, notes = print_verdicts(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{int(size)}MB-{time.strftime('%Y%m%dT%H%M%S')}"
    payload = {**asdict(results), "rows": rows,
               "targets": [{"target": d, "met": m} for d, m in checks], "ingest_notes": notes}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    chart(rows, args.out / f"{stem}.png", title)
    print(f"\nwrote {args.out / stem}.json and .png")
    failed = [r for r in results.runs if not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
