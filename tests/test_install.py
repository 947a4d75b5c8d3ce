"""The runner installs and backs up without Airflow: the wheel, no extras, in a fresh venv.

A DBA puts the drop-in ``barman-cloud-backup`` on a database host with a plain
``pip install airflow-provider-pgcloud``. This builds the wheel from the repository, installs it
without extras into a new virtual environment (dependencies from PyPI), checks that Airflow is
not there and that the engine is, then takes a real backup with the venv's ``pgcloud-backup``
console script (Barman's options, credentials in the environment only), verifies it with
``pgcloud-verify``, runs ``pgcloud-cleanup --dry-run``, and has Barman restore it, rows intact.
Nothing here runs from the source tree: subprocesses get no PYTHONPATH and run outside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RestoreAndCheck
from tests.rig.barman import backup_list
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import make_workdir, remove_workdir
from tests.runner_cli import REPO

MAX_VENV_MB = 300
"""The engine's venv is ~85 MB; Airflow alone would add ~350 MB, its Google provider ~1.7 GB."""

INSTALL_TIMEOUT_S = 900  # the first run downloads the dependencies from PyPI
TOOL_TIMEOUT_S = 600


@dataclass(frozen=True)
class EngineVenv:
    path: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.path / "bin" / name


def _uv() -> str:
    """uv as scripts/install.sh finds it: on PATH, else in the system Python's scripts dir."""
    found = shutil.which("uv")
    if found:
        return found
    scripts = subprocess.run(
        ["/usr/bin/python3", "-c", "import sysconfig; print(sysconfig.get_path('scripts'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    candidate = Path(scripts) / "uv"
    assert candidate.exists(), "uv is neither on PATH nor in the system Python's scripts dir"
    return str(candidate)


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without this checkout's Python setup or stray credentials."""
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        and not k.startswith(("AWS_", "PG", "AZURE_", "GOOGLE_", "UV_PROJECT"))
    }
    env["UV_COMPILE_BYTECODE"] = "1"  # as pip does by default: the size measured is the real one
    env.update(extra or {})
    return env


def _run(argv: list[str | Path], *, cwd: Path, timeout: float = TOOL_TIMEOUT_S,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env or _clean_env(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def engine_venv(tmp_path_factory: pytest.TempPathFactory) -> EngineVenv:
    """The repository's wheel installed without extras into a fresh venv."""
    uv = _uv()
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    _ok(_run([uv, "build", "--wheel", "--out-dir", dist, REPO], cwd=Path(REPO)))
    [wheel] = dist.glob("airflow_provider_pgcloud-*.whl")
    venv = root / "venv"
    _ok(_run([uv, "venv", "--python", "/usr/bin/python3", venv], cwd=root))
    _ok(_run([uv, "pip", "install", "--python", venv / "bin" / "python", wheel], cwd=root,
             timeout=INSTALL_TIMEOUT_S))
    return EngineVenv(venv, wheel)


def _du_mb(path: Path) -> int:
    out = _ok(_run(["du", "-sm", path], cwd=path)).stdout
    return int(out.split()[0])


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_the_runner_installs_without_airflow(
    engine_venv: EngineVenv, capsys: pytest.CaptureFixture[str]
) -> None:
    cwd = engine_venv.path.parent
    no_airflow = _run([engine_venv.python, "-c", "import airflow"], cwd=cwd)
    assert no_airflow.returncode != 0
    assert "No module named 'airflow'" in no_airflow.stderr, no_airflow.stderr
    # the Airflow side of the package says what to install
    for module in ("operators", "hooks", "taskgroup", "fleet"):
        refused = _run([engine_venv.python, "-c", f"import airflow_provider_pgcloud.{module}"],
                       cwd=cwd)
        assert refused.returncode != 0
        assert "airflow-provider-pgcloud[airflow]" in refused.stderr, refused.stderr

    # The engine, its console scripts' modules and every codec import from the wheel (not from
    # this checkout) and load no Airflow module; the extras' cloud SDKs are not there.
    probe = (
        "import importlib, json, sys\n"
        "import airflow_provider_pgcloud.runner as r\n"
        "for m in ('airflow_provider_pgcloud.runner.cli.backup',"
        " 'airflow_provider_pgcloud.runner.cli.verify',"
        " 'airflow_provider_pgcloud.runner.cli.cleanup',"
        " 'airflow_provider_pgcloud.runner.cli.restore',"
        " 'airflow_provider_pgcloud.runner.cli.wal_restore',"
        " 'airflow_provider_pgcloud.runner.cli.drill',"
        " 'isal.isal_zlib', 'snappy', 'lz4.frame', 'zstandard', 'crc32c', 'psycopg2', 'boto3'):\n"
        "    importlib.import_module(m)\n"
        "def absent(m):\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ModuleNotFoundError:\n"
        "        return True\n"
        "    return False\n"
        "print(json.dumps({'file': r.__file__,"
        " 'airflow': sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'),"
        " 'absent': [m for m in ('airflow', 'azure.storage.blob', 'google.cloud.storage')"
        " if absent(m)]}))\n"
    )
    info = json.loads(_ok(_run([engine_venv.python, "-c", probe], cwd=cwd)).stdout)
    assert info["file"].startswith(str(engine_venv.path)), info["file"]
    assert info["airflow"] == []
    assert info["absent"] == ["airflow", "azure.storage.blob", "google.cloud.storage"]

    # The documented module form keeps working, and an extra's provider names its extra.
    usage = _ok(_run([engine_venv.python, "-m", "airflow_provider_pgcloud.runner", "--help"],
                     cwd=cwd))
    assert "--endpoint-url" in usage.stdout
    missing = _run([engine_venv.script("pgcloud-backup"), "--cloud-provider",
                    "azure-blob-storage", "-t", "https://account.blob.core.windows.net/c", "pg"],
                   cwd=cwd)
    assert missing.returncode != 0
    assert "airflow-provider-pgcloud[azure]" in missing.stderr, missing.stderr

    _ok(_run([_uv(), "pip", "check", "--python", engine_venv.python], cwd=cwd))
    size_mb = _du_mb(engine_venv.path)
    with capsys.disabled():
        print(f"\n[test_install] {engine_venv.wheel.name} without extras: venv {size_mb} MB "
              f"({engine_venv.path})")
    assert size_mb < MAX_VENV_MB, f"the engine's venv is {size_mb} MB: is Airflow pulled in?"


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 900)
def test_console_scripts_back_up_verify_and_clean_up(
    engine_venv: EngineVenv, s3: S3Server, pg: PgCluster, bucket: str,
    restore_and_check: RestoreAndCheck,
) -> None:
    cwd = engine_venv.path.parent
    env = _clean_env({**s3.env(), **pg.env()})
    url = f"s3://{bucket}/dbhost"
    name = f"install-{uuid.uuid4().hex[:8]}"

    backup = _ok(_run([engine_venv.script("pgcloud-backup"), "--endpoint-url", s3.endpoint_url,
                       "-z", "--immediate-checkpoint", "-n", name, url, "pg"], cwd=cwd, env=env))
    assert s3.secret_key not in backup.stdout + backup.stderr
    [listed] = backup_list(s3, url, "pg")
    assert (listed["status"], listed["backup_name"]) == ("DONE", name)
    backup_id = listed["backup_id"]
    assert any(key.endswith(f"/base/{backup_id}/data.tar.gz") for key in
               s3.list_objects(bucket, "dbhost/"))

    _ok(_run([engine_venv.script("pgcloud-verify"), "--endpoint-url", s3.endpoint_url, url, "pg",
              backup_id], cwd=cwd, env=env))
    before = s3.list_objects(bucket)
    _ok(_run([engine_venv.script("pgcloud-cleanup"), "--dry-run", "--endpoint-url",
              s3.endpoint_url, url, "pg"], cwd=cwd, env=env))
    assert s3.list_objects(bucket) == before

    # pgcloud-restore of the wheel restores it, pg_control last; the other scripts answer
    target = make_workdir("install-restore")
    try:
        _ok(_run([engine_venv.script("pgcloud-restore"), "--endpoint-url", s3.endpoint_url,
                  "--tablespace", f"tbs1:{target / 'tbs1'}", url, "pg", backup_id,
                  str(target / "pgdata")], cwd=cwd, env=env))
        assert (target / "pgdata" / "global" / "pg_control").exists()
        assert (target / "pgdata" / "pg_tblspc" / "16384").resolve() == target / "tbs1"
    finally:
        remove_workdir(target)
    for script in ("pgcloud-wal-restore", "pgcloud-drill"):
        assert "source_url" in _ok(_run([engine_venv.script(script), "--help"], cwd=cwd)).stdout

    # A row written after the backup reaches the restore only through Barman's WAL archive.
    pg.execute("CREATE TABLE IF NOT EXISTS after_install_backup (id int, note text)",
               dbname="app")
    pg.execute("INSERT INTO after_install_backup VALUES (%s, %s)", (1, name), dbname="app")
    restore_and_check(url, "pg", name, pg)
