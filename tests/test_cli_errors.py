"""Bad input and unreachable services: one clear line and the spec's exit code, no traceback."""

from __future__ import annotations

import os

import pytest

from tests.rig.tools import free_port
from tests.runner_cli import REPO, run_runner


def assert_one_line(stderr: str, text: str) -> None:
    errors = [line for line in stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, stderr
    assert text in errors[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-S", "10M"], "'10M' is not a valid size string"),
        (["-S", "0"], "is not a valid size string"),
        (["--min-chunk-size=-5MB"], "is not a valid size string"),
        (["-J", "0"], "is not a positive integer"),
        (["-n", "latest"], "reserved word"),
        (["-n", "20240101T000000"], "backup ID"),
        (["-z", "--zstd"], "not allowed with argument"),
        (["-e", "DES"], "invalid choice"),
        (["--read-timeout", "x"], "is not a positive integer"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_nonsense_options_exit_3(args, message):
    result = run_runner(*args, "s3://bucket/path", "pg")
    assert result.returncode == 3
    assert_one_line(result.stderr, message)


TAGS = ["--tags", *(f"k{n},v" for n in range(11))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sse-kms-key-id", "k1"], 'Encryption type must be "aws:kms"'),
        (["-e", "AES256", "--sse-kms-key-id", "k1"], 'Encryption type must be "aws:kms"'),
        (TAGS, "Maximum number of tags per object exceeded"),
        (["--tags", "a,1", "a,2"], "Duplicate tag keys found"),
    ],
)
def test_conflicting_options_exit_4_as_barman(args, message):
    """Rules across options exit 4 in Barman 3.20 (it checks them after parsing), not 3."""
    result = run_runner("s3://bucket/path", "pg", *args)  # --tags takes every word after it
    assert result.returncode == 4
    assert_one_line(result.stderr, message)


def test_missing_positional_exits_3():
    result = run_runner("s3://bucket/path")
    assert result.returncode == 3
    assert_one_line(result.stderr, "required")


def test_postgres_unreachable_exits_1(s3, bucket):
    result = run_runner("-h", "127.0.0.1", "-p", str(free_port()), f"s3://{bucket}/x", "pg",
                        s3=s3)
    assert result.returncode == 1
    assert_one_line(result.stderr, "Cannot connect to postgres")


def test_wrong_password_exits_1(s3, pg, bucket):
    result = run_runner(f"s3://{bucket}/x", "pg", s3=s3, pg=pg, env={"PGPASSWORD": "wrong"})
    assert result.returncode == 1
    assert_one_line(result.stderr, "password authentication failed")


def test_test_mode_reachable_bucket_exits_0(s3, bucket):
    result = run_runner("-t", f"s3://{bucket}/x", "pg", s3=s3)
    assert result.returncode == 0, result.stderr


def test_test_mode_refused_endpoint_exits_2(s3):
    port = free_port()
    result = run_runner("--endpoint-url", f"http://127.0.0.1:{port}", "-t", "s3://b/x", "pg",
                        env=s3.env())
    assert result.returncode == 2
    assert_one_line(result.stderr, "Can't connect to cloud provider")


def test_test_mode_missing_bucket_exits_1(s3):
    result = run_runner("-t", "s3://no-such-bucket-here/x", "pg", s3=s3)
    assert result.returncode == 1
    assert_one_line(result.stderr, "Bucket no-such-bucket-here does not exist")


def test_backup_to_missing_bucket_exits_1_and_leaves_no_backup_running(s3, pg):
    result = run_runner("s3://no-such-bucket-here/x", "pg", s3=s3, pg=pg)
    assert result.returncode == 1
    assert_one_line(result.stderr, "does not exist")
    assert not pg.in_backup()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_unreadable_pgdata_exits_1(s3, pg, bucket):
    # `nobody` can reach the server over TCP but cannot read the postgres-owned PGDATA.
    result = run_runner(f"s3://{bucket}/x", "pg", s3=s3, pg=pg,
                        prefix=["runuser", "-u", "nobody", "--"])
    assert result.returncode == 1, result.stderr
    assert_one_line(result.stderr, "permission denied")
    assert not pg.in_backup()
    assert os.path.isdir(REPO)
