"""Run the product's command line the way a user does: a subprocess, credentials in the env."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server

RUNNER = [sys.executable, "-m", "airflow_provider_pgcloud.runner"]
VERIFY = [sys.executable, "-m", "airflow_provider_pgcloud.runner.verify"]
CLEANUP = [sys.executable, "-m", "airflow_provider_pgcloud.runner.cleanup"]
RESTORE = [sys.executable, "-m", "airflow_provider_pgcloud.runner.cli.restore"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runner_env(s3: S3Server | None = None, pg: PgCluster | None = None,
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without stray credentials, plus the S3 and libpq ones."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AWS_", "PG", "AZURE_", "GOOGLE_"))
    }
    env.update(s3.env() if s3 else {})
    env.update(pg.env() if pg else {})
    env.update(extra or {})
    env["PYTHONPATH"] = REPO
    return env


def run_runner(
    *args: str,
    s3: S3Server | None = None,
    pg: PgCluster | None = None,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """`python -m airflow_provider_pgcloud.runner ARGS` (with --endpoint-url when s3 is given)."""
    argv = [*prefix, *RUNNER]
    if s3 is not None:
        argv += ["--endpoint-url", s3.endpoint_url]
    argv += list(args)
    return subprocess.run(
        argv, env=runner_env(s3, pg, env), capture_output=True, text=True, timeout=timeout,
        cwd=REPO, check=False,
    )


def run_restore(*args: str, s3: S3Server, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`pgcloud-restore --endpoint-url ... ARGS`, credentials in the environment only."""
    return subprocess.run(
        [*RESTORE, "--endpoint-url", s3.endpoint_url, *args], env=runner_env(s3),
        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
    )
