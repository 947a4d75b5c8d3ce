"""The package's layers hold: the command line is the only argparse user, the engine never
imports Airflow, and a store option declared on StoreConfig reaches every command and operator.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_pgcloud.runner.storage.base import store_options
from tests.airflow_fixtures import airflow_home  # noqa: F401  (sets AIRFLOW_HOME first)
from tests.runner_cli import REPO

PACKAGE = Path(REPO) / "airflow_provider_pgcloud"


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (relative imports resolved)."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


def _modules(under: Path) -> list[Path]:
    return sorted(under.rglob("*.py"))


def test_only_the_command_line_imports_argparse() -> None:
    cli = PACKAGE / "runner" / "cli"
    offenders = [str(path.relative_to(REPO)) for path in _modules(PACKAGE)
                 if cli not in path.parents and "argparse" in _imports(path)]
    assert offenders == []


def test_the_engine_imports_neither_airflow_nor_the_airflow_side() -> None:
    offenders = []
    for path in _modules(PACKAGE / "runner"):
        for name in _imports(path):
            if name.split(".")[0] == "airflow" or name.startswith(
                    ("airflow_provider_pgcloud.operators", "airflow_provider_pgcloud.hooks",
                     "airflow_provider_pgcloud.taskgroup")):
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []


def _help(module: str) -> str:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=120, check=True)
    return result.stdout


@pytest.mark.parametrize(("module", "writes"), [
    ("airflow_provider_pgcloud.runner", True),
    ("airflow_provider_pgcloud.runner.verify", False),
    ("airflow_provider_pgcloud.runner.cleanup", False),
    ("airflow_provider_pgcloud.runner.wal_restore", False),
    ("airflow_provider_pgcloud.runner.cli.restore", False),
    ("airflow_provider_pgcloud.runner.cli.drill", False),
    ("airflow_provider_pgcloud.runner.cli.backup_delete", False),
    ("airflow_provider_pgcloud.runner.cli.backup_keep", False),
])
def test_every_store_option_is_on_the_command_line(module: str, writes: bool) -> None:
    usage = _help(module)
    for spec, option in store_options():
        for flag in option.flags:
            if option.writes and not writes:
                assert flag not in usage.split(), (module, spec.name)
            else:
                assert flag in usage, (module, spec.name, flag)


@pytest.mark.usefixtures("airflow_home")
def test_every_store_option_but_credentials_is_an_operator_argument() -> None:
    from airflow_provider_pgcloud.operators import StartBackupOperator

    given: dict[str, Any] = {"endpoint_url": "http://127.0.0.1:1", "read_timeout": "7",
             "encryption": "aws:kms", "sse_kms_key_id": "key", "tags": "team,db",
             "encryption_scope": "scope", "kms_key_name": "kms", "cloud_provider": "aws-s3",
             "lock_days": "30", "lock_mode": "compliance"}
    expected = {spec.name for spec, option in store_options() if not option.credential}
    assert set(given) == expected, "a new store option: give it a value here"
    op = StartBackupOperator(task_id="start", destination_url="s3://b/p", server_name="pg",
                             **given)
    assert expected <= set(op.template_fields)
    store = op.backup_options().store
    assert (store.endpoint_url, store.read_timeout, store.tags) == (
        "http://127.0.0.1:1", 7, (("team", "db"),))
    assert (store.encryption, store.sse_kms_key_id, store.encryption_scope,
            store.kms_key_name) == ("aws:kms", "key", "scope", "kms")
    assert (store.lock_days, store.lock_mode, store.compliance_lock) == (30, "compliance", True)
