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


def test_password_from_pgpass_stays_out_of_cmdlines_logs_and_backup_info(s3, pg, bucket,
                                                                          tmp_path):
    """~/.pgpass as the only password source (no PGPASSWORD): the backup works and the
    password shows up nowhere else."""
    home = tmp_path / "home"
    home.mkdir()
    pgpass = home / ".pgpass"
    pgpass.write_text(f"{pg.host}:{pg.port}:*:{pg.user}:{pg.password}\n")
    pgpass.chmod(0o600)
    env = runner_env(s3, pg, {"HOME": str(home)})
    del env["PGPASSWORD"]
    secrets = [pg.password.encode(), s3.secret_key.encode()]
    argv = [*RUNNER, "-v", "--endpoint-url", s3.endpoint_url, "--immediate-checkpoint",
            "-J", "2", "-S", "2MB", "--max-bandwidth", "8MB", f"s3://{bucket}/pgpass", "pg"]
    process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    while process.poll() is None:
        for cmdline in _all_cmdlines():
            assert not any(secret in cmdline for secret in secrets), cmdline
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr.decode()
    for secret in secrets:
        assert secret not in stdout + stderr
    infos = [k for k in s3.list_objects(bucket, "pgpass/") if k.endswith("backup.info")]
    assert infos
    for key in infos:
        info = s3.get_object(bucket, key)
        assert b"status=DONE" in info
        assert not any(secret in info for secret in secrets)
    # without the file the same run cannot connect: the password really came from it
    pgpass.unlink()
    failed = subprocess.run([*RUNNER, "--endpoint-url", s3.endpoint_url, f"s3://{bucket}/x",
                             "pg"], env=env, cwd=REPO, capture_output=True, timeout=120)
    assert failed.returncode == 1
    assert b"password" in failed.stderr
