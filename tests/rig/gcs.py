"""A throwaway Google Cloud Storage emulator on loopback.

Why ``gcp-storage-emulator``: it is on PyPI (in the project's dev dependencies), pure Python,
and speaks the JSON API that google-cloud-storage uses, including resumable uploads. Clients
find it through ``STORAGE_EMULATOR_HOST`` and then use anonymous credentials; there is no
authentication to get wrong.

Facts learned running it (2026.7.19):
* it serves the JSON API only: initiating an XML multipart upload (what Barman 3.20 writes
  archives with) answers 501; Barman's reads (list, download) work, so it lists and restores;
* resumable sessions work, chunk by chunk (308 with ``Range``), and the final object carries
  crc32c and md5; cancelling a session (DELETE) answers 501;
* one request at a time (a plain ``http.server.HTTPServer``): concurrent clients queue;
* ``--in-memory`` keeps nothing on disk; it is ready in about a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud.storage import Client

from tests.rig.tools import (
    REPO_ROOT,
    ToolMissingError,
    free_port,
    register_cleanup,
    remove_workdir,
    stop_process_group,
    unregister_cleanup,
    wait_until_ready,
)

START_TIMEOUT_S = 30.0
PROVIDER = "google-cloud-storage"


def emulator_bin() -> Path:
    """``gcp-storage-emulator`` from the project venv (PyPI gcp-storage-emulator)."""
    for path in (Path(sys.executable).parent / "gcp-storage-emulator",
                 REPO_ROOT / ".venv" / "bin" / "gcp-storage-emulator"):
        if path.exists():
            return path
    raise ToolMissingError(
        "gcp-storage-emulator not found next to the test interpreter: run `make install`"
        " (scripts/install.sh, which syncs the dev dependencies)."
    )


@dataclass
class GcsEmulator:
    """A running GCS emulator endpoint."""

    endpoint: str  # http://127.0.0.1:PORT
    workdir: Path | None = None
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    remove_workdir_on_stop: bool = False

    provider = PROVIDER

    def env(self) -> dict[str, str]:
        """Environment for Barman and the runner (google-cloud-storage's emulator switch)."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def url(self, bucket: str, path: str = "") -> str:
        return f"gs://{bucket}" + (f"/{path}" if path else "")

    def client(self) -> Client:
        return Client(project="pgcloud-test", credentials=AnonymousCredentials(),
                      client_options={"api_endpoint": self.endpoint})

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def list_objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix`` as name -> size in bytes."""
        return {b.name: int(b.size) for b in self.client().list_blobs(bucket, prefix=prefix)}

    def get_object(self, bucket: str, name: str) -> bytes:
        data: bytes = self.client().bucket(bucket).blob(name).download_as_bytes()
        return data

    def metadata(self, bucket: str, name: str) -> dict[str, str]:
        blob = self.client().bucket(bucket).get_blob(name)
        assert blob is not None, f"gs://{bucket}/{name} does not exist"
        return dict(blob.metadata or {})

    def stop(self) -> None:
        unregister_cleanup(self.stop)
        stop_process_group(self.process)
        self.process = None
        if self.remove_workdir_on_stop and self.workdir is not None:
            remove_workdir(self.workdir)


def _ready(server: GcsEmulator) -> bool:
    list(server.client().list_buckets(max_results=1, timeout=2, retry=None))
    return True


def start_gcs_emulator(workdir: Path, *, remove_workdir_on_stop: bool = False) -> GcsEmulator:
    """Start ``gcp-storage-emulator`` in memory on a free loopback port."""
    port = free_port()
    log_file = workdir / "gcs-emulator.log"
    args = [os.fspath(emulator_bin()), "start", "--host", "127.0.0.1", "--port", str(port),
            "--in-memory", "--quiet"]
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env={k: v for k, v in os.environ.items() if not k.startswith("STORAGE_EMULATOR")},
            start_new_session=True,
        )
    server = GcsEmulator(endpoint=f"http://127.0.0.1:{port}", workdir=workdir,
                         log_file=log_file, process=proc,
                         remove_workdir_on_stop=remove_workdir_on_stop)
    register_cleanup(server.stop)
    try:
        wait_until_ready(f"GCS emulator at {server.endpoint}", server.process,
                         server.log_file, lambda: _ready(server), START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server
