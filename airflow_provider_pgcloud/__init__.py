"""pgcloud: stream PostgreSQL base backups to cloud object storage in Barman's cloud layout."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "airflow-provider-pgcloud"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"


def get_provider_info() -> dict[str, object]:
    """Describe this provider to Airflow's ProvidersManager (the `apache_airflow_provider` hook)."""
    return {
        "package-name": DISTRIBUTION,
        "name": "pgcloud",
        "description": __doc__,
        "versions": [__version__],
        "integrations": [{
            "integration-name": "pgcloud",
            "tags": ["software"],
        }],
        "operators": [{
            "integration-name": "pgcloud",
            "python-modules": [
                "airflow_provider_pgcloud.operators.backup",
                "airflow_provider_pgcloud.operators.single",
                "airflow_provider_pgcloud.operators.verify",
            ],
        }],
        "hooks": [{
            "integration-name": "pgcloud",
            "python-modules": ["airflow_provider_pgcloud.hooks.pgcloud"],
        }],
    }
