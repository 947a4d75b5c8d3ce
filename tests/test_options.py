"""The options barman-cloud-backup users rely on behave as documented, checked on the result."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from airflow_provider_pgcloud.runner.sizes import parse_size
from tests.rig.tools import barman_bin
from tests.runner_cli import run_runner

SIZE_STRINGS = [
    "1", "5", "1234B", "1KB", "10MB", "10mb", "10MiB", "1.5GB", "0.5KB", "2TB", "1PiB", "100GB",
    "10M", "0", "-1", "-5MB", "abc", "MB", "B", "1.5", "10 MB", "1XB", "0.0001KB",
]


def barman_sizes(values: list[str]) -> dict[str, int | None]:
    """Ask Barman 3.20's own parser what each size string means (None: it refuses it)."""
    python = barman_bin("python")
    script = (
        "import json, sys\n"
        "from barman.utils import check_size\n"
        "out = {}\n"
        "for v in json.loads(sys.argv[1]):\n"
        "    try: out[v] = check_size(v)\n"
        "    except Exception: out[v] = None\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", script, json.dumps(values)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def ours(value: str) -> int | None:
    try:
        return parse_size(value)
    except ValueError:
        return None


def test_size_strings_mean_what_barman_says():
    expected = barman_sizes(SIZE_STRINGS)
    assert {v: ours(v) for v in SIZE_STRINGS} == expected


@pytest.mark.parametrize("option", ["-S", "--min-chunk-size", "--max-bandwidth"])
@pytest.mark.parametrize("value", [v for v in SIZE_STRINGS if ours(v) is None])
def test_every_size_option_refuses_what_barman_refuses(option, value):
    result = run_runner(f"{option}={value}", "s3://bucket/path", "pg")
    assert result.returncode == 3, result.stderr
    assert "is not a valid size string" in result.stderr


def test_tags_are_on_every_stored_object(s3, pg, bucket):
    result = run_runner("--immediate-checkpoint", "-S", "4MB", f"s3://{bucket}/tg", "pg",
                        "--tags", "team,db", '"cost,center",42', s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    client = s3.client()
    keys = s3.list_objects(bucket, "tg/")
    assert len(keys) > 3
    for key in keys:
        tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {"team": "db", "cost,center": "42"}, key


def test_max_bandwidth_caps_the_whole_backup(s3, pg, bucket):
    rate = 8 << 20
    started = time.monotonic()
    result = run_runner("--immediate-checkpoint", "-J", "2", "-S", "4MB", "--max-bandwidth",
                        "8MB", f"s3://{bucket}/bw", "pg", s3=s3, pg=pg)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    sizes = s3.list_objects(bucket, "bw/").values()
    # Only the first part may go out unpaced; everything else waits for its slot.
    assert elapsed >= (sum(sizes) - max(sizes)) / rate


def test_dbname_takes_a_full_conninfo(s3, pg, bucket):
    env = {"PGPASSWORD": pg.password or ""}
    result = run_runner("--immediate-checkpoint", "-d", pg.dsn("app"), f"s3://{bucket}/d", "pg",
                        s3=s3, env=env)
    assert result.returncode == 0, result.stderr


def test_quiet_and_verbose(s3, pg, bucket):
    quiet = run_runner("-qq", "--immediate-checkpoint", f"s3://{bucket}/q", "pg", s3=s3, pg=pg)
    assert quiet.returncode == 0 and quiet.stderr == ""
    verbose = run_runner("-v", "-t", f"s3://{bucket}/q", "pg", s3=s3)
    assert verbose.returncode == 0 and "DEBUG" in verbose.stderr


@pytest.mark.parametrize("flag", ["-P", "--aws-profile", "--profile"])
def test_aws_profile(flag, s3, bucket, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[backups]\naws_access_key_id = {s3.access_key}\n"
        f"aws_secret_access_key = {s3.secret_key}\n"
    )
    env = {k: v for k, v in s3.env().items() if not k.startswith("AWS_SECRET")}
    env.pop("AWS_ACCESS_KEY_ID")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials)
    ok = run_runner("--endpoint-url", s3.endpoint_url, flag, "backups", "-t",
                    f"s3://{bucket}/x", "pg", env=env)
    assert ok.returncode == 0, ok.stderr
    missing = run_runner("--endpoint-url", s3.endpoint_url, flag, "nope", "-t",
                         f"s3://{bucket}/x", "pg", env=env)
    assert missing.returncode == 3
    assert "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_sse_s3_encryption_is_on_every_stored_object(s3, pg, bucket):
    result = run_runner("--immediate-checkpoint", "-S", "4MB", "-e", "AES256",
                        f"s3://{bucket}/enc", "pg", s3=s3, pg=pg)
    assert result.returncode == 0, result.stderr
    client = s3.client()
    keys = s3.list_objects(bucket, "enc/")
    assert len(keys) > 3
    for key in keys:
        assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_sse_kms_key_is_on_every_stored_object(pg, moto):
    """SeaweedFS has no KMS here, so this one runs against moto's S3 and KMS over HTTP."""
    import boto3

    creds = {"aws_access_key_id": "moto", "aws_secret_access_key": "moto",
             "region_name": "us-east-1"}
    key_id = boto3.client("kms", endpoint_url=moto.endpoint_url, **creds).create_key()[
        "KeyMetadata"]["KeyId"]
    s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, **creds)
    s3.create_bucket(Bucket="kms")
    env = {"AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto",
           "AWS_DEFAULT_REGION": "us-east-1"}
    result = run_runner("--endpoint-url", moto.endpoint_url, "--immediate-checkpoint",
                        "-S", "4MB", "-e", "aws:kms", "--sse-kms-key-id", key_id,
                        "s3://kms/k", "pg", pg=pg, env=env)
    assert result.returncode == 0, result.stderr
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="kms")["Contents"]]
    assert len(keys) > 3
    for key in keys:
        head = s3.head_object(Bucket="kms", Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"].endswith(key_id), key
