"""Command-line pieces every pgcloud command shares: argument types, bad input as exit 3,
verbosity, and failures as one line with the spec's exit code."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import NoReturn

from .errors import PgCloudError
from .progress import configure_logging
from .sizes import parse_size

log = logging.getLogger("pgcloud")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad input: one line and exit 3, as barman-cloud-backup does."""
        self.exit(3, f"{self.prog}: error: {message}\n")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer")
    return value


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a non-negative integer")
    return value


def size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure_verbosity(args: argparse.Namespace) -> None:
    """-v/-q counts to a log level: INFO by default, -v DEBUG, -q WARNING, -qq ERROR."""
    level = logging.INFO + 10 * (args.quiet - args.verbose)
    configure_logging(max(logging.DEBUG, min(level, logging.CRITICAL)))


def report_failures(body: Callable[[], int], interrupted: str = "interrupted by the user") -> int:
    """Run `body`; turn any failure into one logged line and its exit code (4 if unexpected,
    with the traceback at -v)."""
    try:
        return body()
    except PgCloudError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("%s", interrupted)
        return 1
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        log.error("unexpected error: %s: %s", type(exc).__name__,
                  (str(exc).splitlines() or [""])[0])
        return 4
