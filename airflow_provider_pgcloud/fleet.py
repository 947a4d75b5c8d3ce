"""A fleet of PostgreSQL clusters to back up, read from one YAML file.

Why a file: a team with forty clusters wants one reviewed list (which cluster, where its backups
go, when, from which worker), not forty DAG files. `read_fleet` turns the file into `Cluster`
entries and rejects a typo with a message naming the entry and the key, so a wrong file shows
up as a DAG import error instead of a backup that silently never runs. The example DAG
`dags/pgcloud_fleet.py` makes one DAG per entry.

The file::

    clusters:
      - server_name: orders           # the Barman server name (required)
        postgres_conn_id: pg_orders   # the Airflow connection of the cluster (required)
        destination_url: s3://backups/fleet   # (required)
        schedule: "@daily"            # cron or preset; default @daily; null: only when triggered
        source: local                 # local (reads PGDATA) or streaming; default local
        queue: db-orders              # the queue of a worker that can run the tasks
        compression: zstd             # none, gzip, bzip2, snappy, lz4, zstd; default none
        jobs: 4                       # parallel archive uploads; default 2
        options:                      # any other keyword of pg_cloud_backup_group
          immediate_checkpoint: true
          aws_conn_id: aws_backups
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import _need_airflow  # noqa: F401  (a clear error without Airflow, which brings yaml)
from .runner.sources import SOURCES

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class FleetError(ValueError):
    """The fleet file cannot be used as it is; the message says where and why."""


@dataclass(frozen=True)
class Cluster:
    """One cluster of the fleet: what `pg_cloud_backup_group` needs, plus when to run."""

    server_name: str
    postgres_conn_id: str
    destination_url: str
    schedule: str | None = "@daily"
    source: str = "local"
    queue: str | None = None
    compression: str = "none"
    jobs: int = 2
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def dag_id(self) -> str:
        return f"pgcloud_fleet_{self.server_name}"

    def group_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `pg_cloud_backup_group`."""
        return {
            "destination_url": self.destination_url, "server_name": self.server_name,
            "postgres_conn_id": self.postgres_conn_id, "source": self.source,
            "queue": self.queue, "compression": self.compression, "jobs": self.jobs,
            **self.options,
        }


_REQUIRED = ("server_name", "postgres_conn_id", "destination_url")
_KEYS = tuple(f.name for f in fields(Cluster))


def read_fleet(path: str | Path) -> list[Cluster]:
    """The clusters of the fleet file at `path`, checked; FleetError names what is wrong."""
    import yaml  # after _need_airflow: an install without Airflow has no yaml either

    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise FleetError(f"cannot read the fleet file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise FleetError(f"{path} is not valid YAML: {exc}") from exc
    entries = document.get("clusters") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise FleetError(f"{path}: expected a top-level 'clusters:' list")
    clusters = [_cluster(entry, f"{path}: clusters[{n}]") for n, entry in enumerate(entries)]
    seen: set[str] = set()
    for cluster in clusters:
        if cluster.server_name in seen:
            raise FleetError(f"{path}: server_name {cluster.server_name!r} appears twice")
        seen.add(cluster.server_name)
    return clusters


def _cluster(entry: object, where: str) -> Cluster:
    if not isinstance(entry, Mapping):
        raise FleetError(f"{where}: expected a mapping of keys to values")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise FleetError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    missing = [key for key in _REQUIRED if not entry.get(key)]
    if missing:
        raise FleetError(f"{where}: {missing[0]} is required")
    for key in ("server_name", "postgres_conn_id", "destination_url", "schedule", "queue",
                "compression"):
        if key in entry and entry[key] is not None and not isinstance(entry[key], str):
            raise FleetError(f"{where}: {key} must be a string")
    name = entry["server_name"]
    if not _NAME.match(name):
        raise FleetError(f"{where}: server_name {name!r} may hold only letters, digits, "
                         "'_', '.' and '-'")
    if entry.get("source", "local") not in SOURCES:
        raise FleetError(f"{where} ({name}): source must be one of {', '.join(SOURCES)}")
    jobs = entry.get("jobs", 2)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise FleetError(f"{where} ({name}): jobs must be a positive integer")
    if not isinstance(entry.get("options", {}), Mapping):
        raise FleetError(f"{where} ({name}): options must be a mapping")
    return Cluster(**{key: value for key, value in entry.items()
                      if value is not None or key == "schedule"})
