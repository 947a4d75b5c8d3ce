"""docker-compose.yaml is well-formed and everything it takes from this repository exists.

Why no Docker: no Docker engine runs in CI, so the file is checked statically: it parses, the
host paths it mounts and builds from exist, the Dockerfiles copy only what exists, and the
wiring the design depends on is there (WAL archived by Barman, ./dags mounted, PGDATA readable
by the Airflow workers at PostgreSQL's own path, connections as valid JSON).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} with every variable unset."""
    return _DEFAULT.sub(lambda m: m.group(2) or "", text)


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(type, source, target, read_only) of each volume entry, short or long syntax."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            out.append((kind, source, target, len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((entry["type"], entry.get("source", ""), entry["target"],
                        bool(entry.get("read_only"))))
    return out


def test_services_present() -> None:
    services = load()["services"]
    assert {"postgres", "s3", "azurite", "airflow"} <= set(services)
    assert "seaweedfs" in services["s3"]["image"] or "minio" in services["s3"]["image"]
    assert "azurite" in services["azurite"]["image"]


def test_host_paths_exist() -> None:
    data = load()
    checked = 0
    for name, service in data["services"].items():
        for kind, source, _, _ in mounts(service):
            if kind == "bind":
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
                checked += 1
            else:
                assert source in data.get("volumes", {}), f"{name}: undeclared volume {source}"
        build = service.get("build")
        if build:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"{name}: build context {context}"
            dockerfile = context / (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            for source in copy_sources(dockerfile):
                assert (context / source).exists(), f"{dockerfile.name} copies missing {source}"
                checked += 1
    assert checked >= 4


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.split(" ", 1)[0].upper() in ("COPY", "ADD"):
            args = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
            sources += args[:-1]
    return sources


def test_postgres_archives_wal_with_barman() -> None:
    postgres = load()["services"]["postgres"]
    settings = dict(
        arg.split("=", 1) for arg in postgres["command"] if "=" in arg and not arg.startswith("-")
    )
    assert settings["archive_mode"] == "on"
    assert settings["wal_level"] in ("replica", "logical")
    assert settings["archive_command"].startswith("barman-cloud-wal-archive ")
    assert "%p" in settings["archive_command"]
    assert "AWS_SECRET_ACCESS_KEY" in postgres["environment"]


def test_airflow_mounts_dags_and_reads_pgdata() -> None:
    services = load()["services"]
    airflow, postgres = services["airflow"], services["postgres"]
    env = airflow["environment"]
    assert ("bind", "./dags", env["AIRFLOW__CORE__DAGS_FOLDER"], True) in mounts(airflow)
    pgdata = postgres["environment"]["PGDATA"]
    data_volume = next(src for kind, src, dst, _ in mounts(postgres) if dst == pgdata)
    assert ("volume", data_volume, pgdata, True) in mounts(airflow)
    assert "build" in airflow  # the image installs this provider


@pytest.mark.parametrize(
    ("variable", "conn_type"),
    [("AIRFLOW_CONN_PGCLOUD_POSTGRES", "postgres"), ("AIRFLOW_CONN_AWS_DEFAULT", "aws"),
     ("AIRFLOW_CONN_WASB_DEFAULT", "wasb")],
)
def test_airflow_connections_are_valid_json(variable: str, conn_type: str) -> None:
    conn = json.loads(interpolate(load()["services"]["airflow"]["environment"][variable]))
    assert conn["conn_type"] == conn_type
    if conn_type == "aws":
        assert conn["extra"]["endpoint_url"].startswith("http://s3:")
