"""The rig itself works: Barman backs up the session cluster, lists it, and restores it.

Why: every product test leans on these fixtures; if this test fails, the product is not at
fault. It uses Barman's own ``barman-cloud-backup`` (run as the postgres OS user, credentials in
the environment only) as the known-good writer.
"""

from __future__ import annotations

import pytest

from tests.conftest import RestoreAndCheck
from tests.rig.barman import backup_list, run_barman
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server


def test_s3_rejects_wrong_credentials(s3: S3Server, bucket: str) -> None:
    """The S3 server authenticates, so a product that ignores credentials would be caught."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    wrong = boto3.client(
        "s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
        aws_secret_access_key="not-the-secret", region_name=s3.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError):
        wrong.list_objects_v2(Bucket=bucket)
    assert s3.list_objects(bucket) == {}


def test_barman_backup_restores_pg15(
    s3: S3Server, pg: PgCluster, bucket: str, restore_and_check: RestoreAndCheck
) -> None:
    """barman-cloud-backup -> backup-list shows DONE -> restore + WAL replay == source."""
    url = f"s3://{bucket}/base"
    assert not pg.in_backup()
    pg.execute("INSERT INTO items (name, qty) VALUES ('before-backup', 1)", dbname="app")
    run_barman(
        "barman-cloud-backup", "--immediate-checkpoint", "-h", pg.host, "-p", str(pg.port),
        "-U", pg.user, url, "pg",
        s3=s3, env=pg.env(), as_postgres_user=True,
    )
    assert not pg.in_backup()
    pg.execute("INSERT INTO items (name, qty) VALUES ('after-backup', 2)", dbname="app")

    backups = backup_list(s3, url, "pg")
    assert [b["status"] for b in backups] == ["DONE"]
    backup_id = backups[0]["backup_id"]
    keys = s3.list_objects(bucket, f"base/pg/base/{backup_id}/")
    assert f"base/pg/base/{backup_id}/backup.info" in keys
    assert f"base/pg/base/{backup_id}/data.tar" in keys

    fingerprint = restore_and_check(url, "pg", backup_id, pg)
    assert fingerprint["app.public.items"].startswith("5002:")
    assert fingerprint["app.public.events"].startswith("3000:")
