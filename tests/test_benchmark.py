"""The benchmark runs end to end on a tiny cluster and writes its JSON and PNG.

Why: `make bench` is how performance claims are made and checked, so it must keep working as the
engine changes. Only that it runs is checked here: timings on a shared 2-core machine are far too
noisy to assert (the measured table lives in benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.rig.tools import REPO_ROOT

TIMEOUT_S = 600


def _bench(out: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--size-mib", "8", "--jobs", "1",
         "--out", str(out), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [report] = out.glob("bench-*.json")
    [chart] = out.glob("bench-*.png")
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "| codec | -J |" in result.stdout
    data: dict[str, Any] = json.loads(report.read_text())
    return data


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_benchmark_with_barman_and_limits(tmp_path: Path) -> None:
    data = _bench(tmp_path, "--codecs", "none,gzip")
    runs = data["runs"]
    tools = {run["tool"] for run in runs}
    assert {"runner", "streaming", "barman", "pg_basebackup", "raw-put", "ingest",
            "codec"} <= tools
    assert all(run["ok"] for run in runs), runs
    none, gzip = data["rows"]
    assert (none["codec"], gzip["codec"], gzip["jobs"]) == ("none", "gzip", 1)
    assert gzip["runner_bytes"] > 0 and gzip["barman_bytes"] > 0
    assert gzip["speedup"] is not None and gzip["runner_rss"] > 0
    assert data["cluster"]["bytes"] > 1 << 20
    # the in-memory upload: the whole tar stored, compared with Barman for `none`
    [ingest] = [run for run in runs if run["tool"] == "ingest"]
    assert ingest["bytes_stored"] == ingest["bytes_in"] > 1 << 20
    assert none["ingest_vs_barman"] > 0 and len(data["ingest_notes"]) == 1
    # the streaming source (BASE_BACKUP over TCP) and pg_basebackup -Ft beside them
    for row in (none, gzip):
        assert row["streaming_s"] > 0 and row["streaming_rss"] > 0
        assert row["streaming_vs_runner"] is not None and row["streaming_vs_barman"] is not None
        assert row["pg_basebackup_s"] > 0 and row["streaming_vs_pg_basebackup"] is not None
    # uncompressed, all three store the same files: within a few tar headers of each other
    assert abs(none["streaming_bytes"] - none["runner_bytes"]) < none["runner_bytes"] * 0.05
    assert abs(none["pg_basebackup_bytes"] - none["runner_bytes"]) < none["runner_bytes"] * 0.05
    assert gzip["streaming_bytes"] < none["streaming_bytes"]
    assert gzip["pg_basebackup_bytes"] < none["pg_basebackup_bytes"]
    targets = [target["target"] for target in data["targets"]]
    assert any(t.startswith("streaming none -J 1:") and "local-files" in t for t in targets)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_benchmark_without_barman_with_dag(tmp_path: Path) -> None:
    """--dag: the example DAG under a real scheduler (LocalExecutor) beside the runner (and
    --no-streaming leaves the streaming source and pg_basebackup out), on the cluster shape
    whose largest relation is most of it."""
    data = _bench(tmp_path, "--codecs", "none", "--no-barman", "--no-limits", "--no-streaming",
                  "--dag", "--shape", "large-relation")
    assert data["cluster"]["shape"] == "large-relation" and data["cluster"]["hash_rows"] > 0
    runs = data["runs"]
    assert sorted((run["tool"], run["codec"], run["jobs"], run["ok"]) for run in runs) == [
        ("dag", "none", 1, True), ("runner", "none", 1, True),
    ]
    [row] = data["rows"]
    assert row["barman_s"] is None and row["runner_s"] > 0
    assert row["dag_s"] > 0 and row["dag_vs_runner"] is not None
    # --report prints the same table again from the JSON alone
    [report] = tmp_path.glob("bench-*.json")
    again = subprocess.run([sys.executable, "-m", "benchmarks.run", "--report", str(report)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert "| none | 1 |" in again.stdout and "DAG s" in again.stdout


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_many_files_benchmark(tmp_path: Path) -> None:
    """benchmarks.files (the many-files shape): two counts, runner and Barman, with the tree's
    and the largest process's peak RSS and a chart."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.files", "--counts", "500,1500", "--jobs", "2",
         "--barman-up-to", "500", "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [report] = tmp_path.glob("files-*.json")
    assert report.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    runs = json.loads(report.read_text())["runs"]
    assert [(run["tool"], run["ok"]) for run in runs] == [
        ("runner", True), ("barman", True), ("runner", True)]
    assert runs[2]["files"] - runs[0]["files"] == 1000
    assert all(run["peak_rss"] >= run["largest_rss"] > 0 for run in runs)
    assert "| runner | " in result.stdout
