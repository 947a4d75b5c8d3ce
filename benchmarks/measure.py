"""Time a command and sample the peak resident memory of its whole process tree.

Peak RSS is the largest sum, over one sample, of the RSS of the process and all its
descendants (worker processes included), polled every `interval` seconds from /proc through
psutil. Summing RSS counts pages shared between processes (the interpreter, libraries) once per
process, so it overstates what the tree really holds: a conservative figure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psutil


@dataclass
class Measured:
    seconds: float
    peak_rss: int
    returncode: int
    stdout: str
    stderr: str


def process_rss(root: psutil.Process) -> list[int]:
    """RSS of `root` and of each of its descendants right now (those that exit meanwhile are
    left out)."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    sizes = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            sizes.append(proc.memory_info().rss)
    return sizes


def tree_rss(root: psutil.Process) -> int:
    """RSS of `root` and its descendants right now."""
    return sum(process_rss(root))


class RssSampler:
    """Polls a process tree in a background thread; `peak` is the largest sum seen, `largest`
    the largest single process."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self.largest = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = process_rss(self._root)
            self.peak = max(self.peak, sum(sizes))
            self.largest = max(self.largest, max(sizes, default=0))
            self._stop.wait(self._interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str = "/",
    timeout: float = 3600,
) -> Measured:
    """Run `argv`, returning wall-clock seconds, the tree's peak RSS and its output."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), env=dict(env) if env is not None else None, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    with RssSampler(proc.pid) as sampler:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    return Measured(seconds, sampler.peak, proc.returncode, stdout, stderr)


def measure_in_process(func: Callable[[], int]) -> tuple[float, int, int]:
    """(seconds, result, peak RSS of this process) for a call made in this process."""
    with RssSampler(os.getpid()) as sampler:
        started = time.perf_counter()
        result = func()
        seconds = time.perf_counter() - started
    return seconds, result, sampler.peak


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return os.getloadavg()


def write_results(out: str | Path, stem: str, command: str, payload: dict[str, Any]) -> Path:
    """Write a benchmark's runs as `<out>/<stem>-<UTC time>.json`, with the command that
    produced them and when it started; returns the path."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = directory / f"{stem}-{stamp}.json"
    path.write_text(json.dumps({"command": command, "started": stamp, **payload}, indent=1))
    return path


def exit_timed(main: Callable[[], int], log: Callable[[str], None]) -> NoReturn:
    """Run a benchmark's `main`, log how long it took and exit with its code."""
    started = time.monotonic()
    code = main()
    log(f"done in {time.monotonic() - started:.0f}s")
    sys.exit(code)
