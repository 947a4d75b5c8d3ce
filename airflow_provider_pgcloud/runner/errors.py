"""Exceptions that carry barman-cloud-backup's exit codes.

Every failure the runner can explain is one of these, so the command line prints a single line
and exits with the code the spec documents instead of a traceback.
"""

from __future__ import annotations


class PgCloudError(Exception):
    """A failure with a clear message; exit code 4 ("other non-zero code") unless overridden."""

    exit_code = 4


class InputError(PgCloudError):
    """The command input makes no sense (exit 3)."""

    exit_code = 3


class BackupFailed(PgCloudError):
    """The backup was not successful (exit 1)."""

    exit_code = 1


class CloudConnectionError(PgCloudError):
    """The connection to the cloud provider failed (exit 2)."""

    exit_code = 2


class BucketMissing(BackupFailed):
    """The destination bucket or container does not exist (exit 1, as Barman does)."""


class HookAbort(PgCloudError):
    """Barman hook mode on a backup that is not DONE: 63 tells Barman to abort."""

    exit_code = 63


def missing_module(name: str, extra: str | None = None,
                   cause: BaseException | None = None) -> BackupFailed:
    """An optional package is not installed: exit 1 with Barman's "Missing required python
    module: NAME", plus the pip extra that installs it and what the import said."""
    hint = f" (install airflow-provider-pgcloud[{extra}])" if extra else ""
    detail = f": {cause}" if cause else ""
    return BackupFailed(f"Missing required python module: {name}{hint}{detail}")


def first_line(value: BaseException | str) -> str:
    """An exception or a text as one line, for a message or backup.info's `error` (an empty
    exception gives its type, an empty text "unknown error")."""
    if isinstance(value, str):
        return (value.strip().splitlines() or ["unknown error"])[0]
    return (str(value).strip().splitlines() or [type(value).__name__])[0]
