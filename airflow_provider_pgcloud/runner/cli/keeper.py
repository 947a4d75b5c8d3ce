"""The backup-session keeper's command line (internal: an Airflow task starts it, session.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..session import DEFAULT_DEADLINE_SECONDS, serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hold a PostgreSQL backup session")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_SECONDS)
    args = parser.parse_args(argv)
    return serve(args.socket, args.deadline)
