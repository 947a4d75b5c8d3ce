"""Command-line plumbing shared by the store-only commands (verify, cleanup).

They take the runner's provider and credential options (credentials themselves come from the
environment, a profile or a managed identity, never from arguments) and its exit codes: 0 done,
1 the check or cleanup failed, 2 the cloud provider is unreachable, 3 bad input, 4 other.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from .argtypes import configure_verbosity, positive, report_failures
from .storage import PROVIDERS, StoreConfig

log = logging.getLogger("pgcloud")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="increase output verbosity")
    verbosity.add_argument("-q", "--quiet", action="count", default=0,
                           help="decrease output verbosity")
    parser.add_argument("--cloud-provider", choices=list(PROVIDERS), default="aws-s3",
                        help="the cloud provider of the store (default: aws-s3)")
    parser.add_argument("--endpoint-url", help="override the default S3 endpoint URL")
    parser.add_argument("-P", "--aws-profile", "--profile", dest="aws_profile",
                        help="AWS profile name")
    parser.add_argument("--read-timeout", type=positive, default=60,
                        help="seconds until a read from the store times out (default: 60)")
    parser.add_argument("--azure-credential", "--credential", dest="azure_credential",
                        choices=["azure-cli", "managed-identity", "default"],
                        help="Azure credential type; default: from the environment")


def store_config(args: argparse.Namespace, url: str) -> StoreConfig:
    return StoreConfig(
        destination_url=url, cloud_provider=args.cloud_provider,
        endpoint_url=args.endpoint_url, aws_profile=args.aws_profile,
        read_timeout=args.read_timeout, azure_credential=args.azure_credential,
    )


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
             body: Callable[[argparse.Namespace], int]) -> int:
    """Parse, log like the runner, and turn failures into one line and an exit code."""
    args = parser.parse_args(argv)
    configure_verbosity(args)
    return report_failures(lambda: body(args))
