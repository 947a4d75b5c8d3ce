"""`python -m airflow_provider_pgcloud.runner`: a drop-in for barman-cloud-backup."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
