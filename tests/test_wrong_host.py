"""A local-files backup run on a host whose data directory holds another cluster is refused.

Another host is simulated with a private mount namespace: inside it, the path the server
reports as its data directory shows the files of a different cluster (a fresh initdb), as it
would on an Airflow worker that is not the database host. The runner must refuse before it
writes anything; an upload task there must fail, and the backup end FAILED, never DONE.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_pgcloud.runner import backup_info as bi
from airflow_provider_pgcloud.runner import layout
from airflow_provider_pgcloud.runner.errors import BackupFailed
from airflow_provider_pgcloud.runner.session import LocalSession
from airflow_provider_pgcloud.runner.steps import BackupOptions, start_backup
from airflow_provider_pgcloud.runner.storage import StoreConfig, open_store
from airflow_provider_pgcloud.runner.teardown import finish_backup
from tests.rig.pgcluster import PgCluster
from tests.rig.s3server import S3Server
from tests.rig.tools import as_postgres, chown_to_postgres, make_workdir, pg_bindir, remove_workdir
from tests.runner_cli import REPO, run_runner, runner_env

REFUSAL = "run the backup on the database host"


@pytest.fixture(scope="module")
def other_cluster() -> Iterator[Path]:
    """The data directory of another cluster (never started): another system identifier."""
    workdir = make_workdir("other")
    pgdata = workdir / "data"
    pgdata.mkdir()
    chown_to_postgres(pgdata, mode=0o700)
    subprocess.run(as_postgres([pg_bindir(15) / "initdb", "-D", pgdata, "--no-sync"]),
                   cwd="/", capture_output=True, check=True)
    try:
        yield pgdata
    finally:
        remove_workdir(workdir)


def on_other_host(pg: PgCluster, other: Path) -> list[str]:
    """A command prefix that runs the rest with `other` mounted over pg's data directory."""
    data_directory = pg.execute("SHOW data_directory")[0][0]
    return ["unshare", "--mount", "--", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(other), data_directory]


def test_the_runner_refuses_another_clusters_files(
    s3: S3Server, pg: PgCluster, bucket: str, other_cluster: Path
) -> None:
    result = run_runner("-z", f"s3://{bucket}/wrong", "pg", s3=s3, pg=pg,
                        prefix=on_other_host(pg, other_cluster))
    assert result.returncode == 1, result.stderr
    assert REFUSAL in result.stderr
    assert "system identifier" in result.stderr
    assert s3.list_objects(bucket) == {}  # refused before anything was written
    assert not pg.in_backup()


_UPLOAD = """
import json, sys
from airflow_provider_pgcloud.runner.steps import BackupState, upload_chunk
from airflow_provider_pgcloud.runner.storage import open_store
state = BackupState.from_dict(json.loads(sys.stdin.read()))
store = open_store(state.store)
upload_chunk(state, state.chunks[0], store)
"""


def test_an_upload_on_another_host_fails_and_the_backup_ends_failed(
    s3: S3Server, pg: PgCluster, bucket: str, other_cluster: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in Airflow: start on the database host, one upload task on another host, then the
    teardown on the database host finds the upload missing and records FAILED."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    config = StoreConfig(f"s3://{bucket}/task", endpoint_url=s3.endpoint_url)
    session = LocalSession(pg.dsn(), password=pg.password)
    store = open_store(config)
    try:
        state = start_backup(BackupOptions(server_name="pg", store=config,
                                           immediate_checkpoint=True), session, store)
        upload = subprocess.run(
            [*on_other_host(pg, other_cluster), sys.executable, "-c", _UPLOAD],
            input=json.dumps(state.to_dict()), env=runner_env(s3), cwd=REPO,
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert upload.returncode != 0
        assert REFUSAL in upload.stderr, upload.stderr
        with pytest.raises(BackupFailed, match="archive objects not uploaded"):
            finish_backup(state, store, session, results=[])
        info = bi.decode(store.get(layout.info_key(state.prefix)))
        assert info["status"] == bi.FAILED
        assert not any(key.endswith(".tar") for key in
                       s3.list_objects(bucket, f"task/pg/base/{state.backup_id}/"))
    finally:
        session.abort()
        store.close()
    assert not pg.in_backup()
