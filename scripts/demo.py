"""Demo: the runner's main job against a throwaway PostgreSQL 15 and SeaweedFS (``make demo``).

Why: it shows the product end to end on an embedded default, exactly as a user would run it on
a database host: ``python -m airflow_provider_pgcloud.runner`` as a drop-in for Barman's
``barman-cloud-backup``, with credentials only in the environment. It starts PostgreSQL 15 (with
a tablespace, WAL archived by Barman into the same Barman layout), SeaweedFS, bucket ``demo``,
runs one gzip backup named ``demo-nightly``, then the same backup once more through the example
Airflow DAG (``airflow dags test pgcloud_backup``, with the services as Airflow connections in a
throwaway AIRFLOW_HOME), then shows what Barman sees (``barman-cloud-backup-list``) and every
stored object. Everything is stopped at the end, also on Ctrl-C or errors.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python scripts/demo.py` puts scripts/ first, not the repo
    sys.path.insert(0, str(REPO_ROOT))

from tests.rig.barman import run_barman  # noqa: E402
from tests.rig.pgcluster import PgCluster, WalArchive, init_cluster  # noqa: E402
from tests.rig.s3server import S3Server, start_s3_server  # noqa: E402
from tests.rig.tools import make_workdir  # noqa: E402

BUCKET = "demo"
DESTINATION_URL = f"s3://{BUCKET}/backups"
SERVER_NAME = "pg"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_dag(s3: S3Server, pg: PgCluster) -> int:
    """Run the example DAG once with ``airflow dags test``; its exit code."""
    home = tempfile.mkdtemp(prefix="pgcloud-demo-airflow-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG"))}
        env.update({
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW_CONN_PGCLOUD_POSTGRES": json.dumps({
                "conn_type": "postgres", "host": pg.host, "port": pg.port, "login": pg.user,
                "password": pg.password, "schema": "postgres"}),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
                "conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
                "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}}),
        })
        airflow = str(Path(sys.executable).parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=env, cwd=REPO_ROOT, check=True,
                       capture_output=True)
        conf = {"destination_url": DESTINATION_URL, "server_name": SERVER_NAME,
                "backup_name": "demo-dag", "compression": "gzip", "max_archive_size": "8MB",
                "immediate_checkpoint": True}
        cmd = [airflow, "dags", "test", "pgcloud_backup", "-c", json.dumps(conf)]
        banner("airflow dags test pgcloud_backup -c " + json.dumps(conf))
        result = subprocess.run(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, check=False)
        lines = [line for line in result.stdout.splitlines()
                 if "pgcloud" in line or "state=" in line or "Marking run" in line]
        print("\n".join(lines[-25:]))
        print(f"(airflow dags test exit code {result.returncode})")
        return result.returncode
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_demo(s3: S3Server, pg: PgCluster) -> int:
    """Run the backup with the runner and with the DAG, and show the result."""
    env = {**os.environ, **pg.env(), **s3.env()}
    cmd = [
        sys.executable, "-m", "airflow_provider_pgcloud.runner",
        "--endpoint-url", s3.endpoint_url,
        "-z", "-n", "demo-nightly",
        DESTINATION_URL, SERVER_NAME,
    ]
    banner("runner: " + " ".join(cmd[1:]))
    result = subprocess.run(
        cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, check=False,
    )
    print(result.stdout, end="" if result.stdout.endswith("\n") else "\n")
    print(f"(runner exit code {result.returncode})")
    dag_code = run_dag(s3, pg)

    banner(f"barman-cloud-backup-list {DESTINATION_URL} {SERVER_NAME}")
    listing = run_barman(
        "barman-cloud-backup-list", DESTINATION_URL, SERVER_NAME, s3=s3, check=False
    )
    print(listing.stdout + listing.stderr, end="")

    banner(f"objects in s3://{BUCKET}")
    objects = s3.list_objects(BUCKET)
    width = max((len(k) for k in objects), default=10)
    for key, size in sorted(objects.items()):
        print(f"{key:<{width}}  {size:>12,d}")
    print(f"{len(objects)} objects, {sum(objects.values()):,d} bytes")
    return result.returncode or dag_code


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    s3: S3Server | None = None
    pg: PgCluster | None = None
    try:
        banner("starting SeaweedFS (S3) and PostgreSQL 15 on loopback")
        s3 = start_s3_server(make_workdir("demo-s3"), remove_workdir_on_stop=True)
        s3.create_bucket(BUCKET)
        # WAL goes where Barman users put it: same URL and server name as the base backups.
        wal_archive = WalArchive(s3, DESTINATION_URL, SERVER_NAME)
        pg = init_cluster(
            make_workdir("demo-pg15"), 15, tablespace=True, wal_archive=wal_archive,
            remove_workdir_on_stop=True,
        )
        print(f"S3:         {s3.endpoint_url} (bucket {BUCKET})")
        print(f"PostgreSQL: {pg.dsn()} (data {pg.pgdata}, tablespace tbs1 {pg.tablespace_dir})")
        return run_demo(s3, pg)
    except KeyboardInterrupt:
        print("\ninterrupted, stopping services", file=sys.stderr)
        return 130
    finally:
        if pg is not None:
            pg.stop()
        if s3 is not None:
            s3.stop()


if __name__ == "__main__":
    sys.exit(main())
