"""Imported first by the Airflow side of the package (operators, hooks, the task group), so that
an install without the `airflow` extra says what to install instead of a bare import error.
The runner (runner/) never imports it: it needs no Airflow."""

from __future__ import annotations

try:
    import airflow.sdk  # noqa: F401  (Airflow 3's task SDK)
except ModuleNotFoundError as exc:
    if exc.name not in ("airflow", "airflow.sdk"):
        raise
    raise ModuleNotFoundError(
        "the pgcloud operators, hooks and task group need Apache Airflow 3: pip install "
        '"airflow-provider-pgcloud[airflow]" (or [airflow-azure], [airflow-google]). The '
        "runner needs no Airflow: pgcloud-backup, pgcloud-verify, pgcloud-cleanup.",
        name=exc.name,
    ) from exc
