"""The fleet file: the example DAG makes one DAG per cluster, and a wrong file says what is wrong.

The fleet running for real, under Celery with two workers, is tests/test_celery.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.airflow_fixtures import REPO_ROOT  # sets AIRFLOW_HOME before airflow is imported

FLEET_DAG = REPO_ROOT / "dags" / "pgcloud_fleet.py"


def _dag_bag(fleet: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PGCLOUD_FLEET_FILE", str(fleet))
    return DagBag(dag_folder=str(FLEET_DAG))


def test_the_example_fleet_makes_one_dag_per_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    bag = _dag_bag(REPO_ROOT / "dags" / "pgcloud_fleet.example.yaml", monkeypatch)
    assert not bag.import_errors, bag.import_errors
    assert sorted(bag.dag_ids) == ["pgcloud_fleet_billing", "pgcloud_fleet_orders"]
    orders, billing = bag.dags["pgcloud_fleet_orders"], bag.dags["pgcloud_fleet_billing"]
    # local files: start, mapped uploads, stop, all pinned to the database host's queue
    assert {task.queue for task in orders.tasks} == {"db-orders"}
    assert "pgcloud_backup.upload_chunk" in orders.task_ids
    # streaming: one task takes the backup, one records how it ended
    assert set(billing.task_ids) == {"pgcloud_backup.backup", "pgcloud_backup.end_backup"}
    assert {task.queue for task in billing.tasks} == {"backup"}


def test_without_a_fleet_file_there_are_no_fleet_dags(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv("PGCLOUD_FLEET_FILE", raising=False)
    bag = DagBag(dag_folder=str(FLEET_DAG))
    assert not bag.import_errors and not bag.dag_ids


GOOD = """\
  - server_name: main
    postgres_conn_id: pg_main
    destination_url: s3://b/p
"""


@pytest.mark.parametrize(("text", "message"), [
    ("clusters: {}\n", "expected a top-level 'clusters:' list"),
    ("clusters:\n  - server_name: a\n    postgres_conn_id: c\n", "clusters[0]: destination_url "
     "is required"),
    (f"clusters:\n{GOOD}    sources: streaming\n", "clusters[0]: unknown key 'sources'"),
    (f"clusters:\n{GOOD}    source: disk\n", "clusters[0] (main): source must be one of local, "
     "streaming"),
    (f"clusters:\n{GOOD}    jobs: 0\n", "clusters[0] (main): jobs must be a positive integer"),
    (f"clusters:\n{GOOD}{GOOD}", "server_name 'main' appears twice"),
    ("clusters:\n  - server_name: a/b\n    postgres_conn_id: c\n    destination_url: s3://b\n",
     "server_name 'a/b' may hold only letters"),
    ("clusters: [\n", "is not valid YAML"),
], ids=["no-list", "missing", "unknown-key", "source", "jobs", "twice", "name", "yaml"])
def test_a_wrong_fleet_file_is_an_import_error_naming_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str,
) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(text)
    bag = _dag_bag(fleet, monkeypatch)
    assert not bag.dag_ids
    [error] = bag.import_errors.values()
    assert message in error, error
    assert str(fleet) in error
