"""What every pgcloud command shares: argument types, bad input as exit 3, verbosity, failures
as one line with the spec's exit code, and the store and PostgreSQL options.

Store options are declared on StoreConfig itself (storage/base.py): this module turns each
declaration into an argument and the parsed arguments back into a StoreConfig, so a new store
option needs no change here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from ..errors import PgCloudError, first_line
from ..postgres import build_conninfo
from ..progress import configure_logging
from ..sizes import parse_size
from ..storage import ObjectStore, StoreConfig, open_store
from ..storage.base import store_options
from ..values import parse_tag

log = logging.getLogger("pgcloud")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad input: one line and exit 3, as barman-cloud-backup does."""
        self.exit(3, f"{self.prog}: error: {message}\n")


# --- argument types ----------------------------------------------------------------------------

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


def tag(text: str) -> tuple[str, str]:
    try:
        return parse_tag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- options every command takes -------------------------------------------------------------

Container = argparse.ArgumentParser | argparse._ArgumentGroup


def store_command(prog: str, description: str, url: str = "destination_url") -> Parser:
    """The parser of a command that works on a store alone (no PostgreSQL): its location,
    verbosity and the store options that read (not those that only writing takes)."""
    parser = Parser(prog=prog, description=description)
    add_location(parser, url)
    add_verbosity(parser)
    add_store_arguments(parser, writes=False)
    return parser


def add_location(parser: argparse.ArgumentParser, url: str = "destination_url") -> None:
    """The two positional arguments every command starts with: where, and which server."""
    parser.add_argument(url, help=f"URL of the cloud {url.split('_')[0]}, e.g. s3://bucket/path")
    parser.add_argument("server_name", help="the name of the server as configured in Barman")


def add_verbosity(container: Container) -> None:
    verbosity = container.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="increase output verbosity (-vv is more than -v)")
    verbosity.add_argument("-q", "--quiet", action="count", default=0,
                           help="decrease output verbosity (-qq is less than -q)")


def add_store_arguments(parser: argparse.ArgumentParser, *, writes: bool,
                        groups: dict[str, Container] | None = None) -> None:
    """The store options StoreConfig declares, in help sections by cloud provider; with
    `writes`, also those that only a command writing a backup takes (encryption, tags).
    `groups` maps section names to sections the caller already made (e.g. "general")."""
    groups = dict(groups or {})
    for spec, option in store_options():
        if option.writes and not writes:
            continue
        if option.group not in groups:
            groups[option.group] = (parser if option.group == "general"
                                    else parser.add_argument_group(option.group))
        kwargs: dict[str, Any] = {"dest": spec.name, "help": option.help,
                                  "default": spec.default}
        if option.choices:
            kwargs["choices"] = list(option.choices)
        if option.kind == "positive":
            kwargs["type"] = positive
        elif option.kind == "tags":
            kwargs.update(type=tag, nargs="*", default=[], metavar="KEY,VALUE")
        groups[option.group].add_argument(*option.flags, **kwargs)


@contextlib.contextmanager
def checked_store(config: StoreConfig) -> Iterator[ObjectStore]:
    """The store, once found reachable and existing (exit 2 or 1 otherwise); closed after."""
    store = open_store(config)
    try:
        store.check()
        yield store
    finally:
        store.close()


def store_config(args: argparse.Namespace, url: str) -> StoreConfig:
    """The StoreConfig of parsed arguments: every store option the command declared."""
    given = vars(args)
    values = {spec.name: given[spec.name] for spec, _ in store_options() if spec.name in given}
    if "tags" in values:
        values["tags"] = tuple(values["tags"])
    return StoreConfig(destination_url=url, **values)


def store_arguments(config: StoreConfig) -> list[str]:
    """The command-line options that open the same store for reading, `store_config`'s inverse
    (only values that differ from the defaults; never a secret, which StoreConfig never holds):
    what a command that calls another command, such as restore's restore_command, passes on."""
    arguments: list[str] = []
    for spec, option in store_options():
        value = getattr(config, spec.name)
        if option.writes or value == spec.default:
            continue
        flag = next(flag for flag in option.flags if flag.startswith("--"))
        arguments += [flag, str(value)]
    return arguments


def add_postgres_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PostgreSQL connection (libpq defaults and PG* apply)")
    group.add_argument("-h", "--host", help="host or Unix socket for PostgreSQL connection")
    group.add_argument("-p", "--port", help="port for PostgreSQL connection")
    group.add_argument("-U", "--user", help="user name for PostgreSQL connection")
    group.add_argument("-d", "--dbname",
                       help="database name or conninfo string for Postgres connection "
                       "(default: postgres)")


def conninfo(args: argparse.Namespace) -> str:
    """The libpq conninfo of the PostgreSQL options (never with a password)."""
    return build_conninfo(args.host, args.port, args.user, args.dbname)


# --- running a command -----------------------------------------------------------------------

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
        log.error("unexpected error: %s: %s", type(exc).__name__, first_line(exc))
        return 4


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
             body: Callable[[argparse.Namespace], int],
             interrupted: str = "interrupted by the user") -> int:
    """Parse, log like the runner, and turn failures into one line and an exit code."""
    args = parser.parse_args(argv)
    configure_verbosity(args)
    return report_failures(lambda: body(args), interrupted)
