"""`python -m airflow_provider_pgcloud.runner`: pgcloud-backup, barman-cloud-backup's drop-in."""

from __future__ import annotations

import sys

from .cli.backup import main

if __name__ == "__main__":
    sys.exit(main())
