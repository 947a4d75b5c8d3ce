"""Configuration kept outside PGDATA (as Debian does) is stored in the data archive, as Barman
stores it, so a restored directory has what it needs to start."""

from __future__ import annotations

import io
import shutil
import tarfile

from tests.rig.pgcluster import _append_conf, _start, init_cluster
from tests.rig.tools import chown_to_postgres, make_workdir, remove_workdir
from tests.runner_cli import run_runner


def test_hba_and_ident_outside_pgdata_are_archived(s3, bucket):
    workdir = make_workdir("pgconf")
    cluster = init_cluster(workdir, 15, tablespace=False)
    try:
        cluster.stop()
        etc = workdir / "etc"
        etc.mkdir()
        for name in ("pg_hba.conf", "pg_ident.conf"):
            shutil.move(str(cluster.pgdata / name), etc / name)
        chown_to_postgres(etc, recursive=True)
        _append_conf(cluster.pgdata, f"hba_file = '{etc}/pg_hba.conf'\n"
                                     f"ident_file = '{etc}/pg_ident.conf'\n")
        _start(cluster)
        result = run_runner("--immediate-checkpoint", f"s3://{bucket}/c", "pg", s3=s3,
                            pg=cluster)
        assert result.returncode == 0, result.stderr
        archives = sorted(k for k in s3.list_objects(bucket, "c/pg/base/") if "/data" in k)
        with tarfile.open(fileobj=io.BytesIO(s3.get_object(bucket, archives[-1]))) as tar:
            stored = tar.extractfile("pg_hba.conf")
            assert stored is not None
            assert stored.read() == (etc / "pg_hba.conf").read_bytes()
            assert "pg_ident.conf" in tar.getnames()
    finally:
        cluster.stop()
        remove_workdir(workdir)
