"""Credentials never reach process arguments, logs or backup metadata."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.runner_cli import REPO, RUNNER, runner_env


def _all_cmdlines() -> list[bytes]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes())
            except OSError:
                continue
    return lines


def test_no_secret_in_cmdlines_logs_or_backup_info(s3, pg, bucket):
    secrets = [pg.password.encode(), s3.secret_key.encode()]
    argv = [*RUNNER, "-v", "--endpoint-url", s3.endpoint_url, "--immediate-checkpoint",
            "-J", "2", "-S", "2MB", "--max-bandwidth", "8MB", f"s3://{bucket}/sec", "pg"]
    process = subprocess.Popen(argv, env=runner_env(s3, pg), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    seen_workers = 0
    while process.poll() is None:
        cmdlines = _all_cmdlines()
        seen_workers = max(seen_workers, sum(b"multiprocessing" in c for c in cmdlines))
        for cmdline in cmdlines:
            assert not any(secret in cmdline for secret in secrets), cmdline
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert seen_workers >= 1  # the scan really overlapped the worker processes
    for secret in secrets:
        assert secret not in stdout + stderr
    for key in s3.list_objects(bucket, "sec/"):
        if key.endswith("backup.info"):
            info = s3.get_object(bucket, key)
            assert not any(secret in info for secret in secrets)
    assert os.path.isdir(REPO)
