"""Barman's cloud commands as the reference reader, writer and restorer.

Why Barman: the product promises that real users' Barman tooling lists and restores what it
writes. So the tests ask Barman itself (3.20.1, from its own venv under ``$PGCLOUD_TOOLS``)
instead of re-implementing its reader. Credentials go through the environment only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.rig.s3server import S3Server
from tests.rig.tools import as_postgres, barman_bin, postgres_home

BARMAN_TIMEOUT_S = 600


def barman_env(s3: S3Server, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus unrelated credentials, plus the S3 ones (and ``extra``)."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "PYTHONPATH", "VIRTUAL_ENV"))
    }
    env.update(s3.env())
    env.update(extra or {})
    return env


def run_barman(
    command: str,
    *args: str,
    s3: S3Server,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    as_postgres_user: bool = False,
    timeout: float = BARMAN_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run ``$PGCLOUD_TOOLS/barman/bin/<command> --endpoint-url <url> args...``.

    ``env`` adds variables (e.g. ``PGPASSWORD``) on top of ``s3.env()``. With
    ``as_postgres_user`` it runs through ``runuser -u postgres --`` (as a database host's
    postgres user would). With ``check`` a non-zero exit raises an error carrying both output
    streams (``subprocess.CalledProcessError`` does not show them in its message).
    """
    argv = [str(barman_bin(command)), "--endpoint-url", s3.endpoint_url, *args]
    full_env = barman_env(s3, env)
    if as_postgres_user:
        argv = as_postgres(argv)
        full_env["HOME"] = postgres_home()
    result = subprocess.run(
        argv, env=full_env, cwd="/", capture_output=True, text=True, check=False,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{command} exited {result.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


def backup_list(s3: S3Server, url: str, server: str) -> list[dict[str, Any]]:
    """``barman-cloud-backup-list --format json`` as a list of backup dicts (all statuses)."""
    result = run_barman("barman-cloud-backup-list", "--format", "json", url, server, s3=s3)
    data = json.loads(result.stdout)
    backups: list[dict[str, Any]] = data["backups_list"]
    return backups


def restore(
    s3: S3Server,
    url: str,
    server: str,
    backup_id: str,
    dest: Path,
    tablespaces: Mapping[str, Path] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``barman-cloud-restore`` into ``dest`` (missing or empty), remapping tablespaces.

    ``tablespaces`` maps a tablespace name to its new location (``--tablespace name:location``);
    unmapped ones go back to the location recorded in backup.info.
    """
    args: list[str] = []
    for name, location in (tablespaces or {}).items():
        args += ["--tablespace", f"{name}:{location}"]
    return run_barman(
        "barman-cloud-restore", *args, url, server, backup_id, str(dest), s3=s3
    )
