"""A throwaway Azurite blob service on loopback, with its own account and key.

Why Azurite: it is Microsoft's own emulator, shipped on npm (``azurite``, installed by
scripts/install.sh under ``$PGCLOUD_TOOLS/npm/azurite``), so it needs no Docker. Why a random
account: ``AZURITE_ACCOUNTS`` replaces the well-known development key, so a client that signs
with the wrong key is rejected as it would be by Azure.

Facts learned running it (Azurite 3.37):
* ``--skipApiVersionCheck`` is needed: the Python SDK sends a newer x-ms-version than Azurite
  knows and would be refused otherwise;
* ``--disableTelemetry``: otherwise Azurite tries to send usage data out;
* it supports block blobs (stage_block / commit_block_list) and blob index tags
  (``get_blob_tags``), which the tests check;
* URLs are path style: ``http://127.0.0.1:PORT/ACCOUNT/CONTAINER/BLOB``;
* it is ready in under a second; SIGTERM stops it at once.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient

from tests.rig.tools import (
    TOOLS_DIR,
    ToolMissingError,
    free_port,
    register_cleanup,
    remove_workdir,
    stop_process_group,
    unregister_cleanup,
    wait_until_ready,
)

START_TIMEOUT_S = 30.0
PROVIDER = "azure-blob-storage"


def azurite_bin() -> Path:
    """``azurite-blob`` from the npm package installed by scripts/install.sh."""
    path = TOOLS_DIR / "npm" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if not path.exists():
        raise ToolMissingError(
            f"Azurite not found at {path}. Run `make install` (scripts/install.sh) first"
            f" (PGCLOUD_TOOLS={TOOLS_DIR})."
        )
    return path


@dataclass
class AzuriteServer:
    """A running Azurite blob endpoint and the one account it accepts."""

    endpoint: str  # http://127.0.0.1:PORT
    account: str
    key: str
    workdir: Path | None = None
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    remove_workdir_on_stop: bool = False

    provider = PROVIDER

    @property
    def account_url(self) -> str:
        return f"{self.endpoint}/{self.account}"

    def connection_string(self, key: str | None = None, endpoint: str | None = None) -> str:
        """A connection string for this account (``key``/``endpoint`` override, for tests of
        a wrong key or a dead endpoint)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={key or self.key};"
            f"BlobEndpoint={endpoint or self.endpoint}/{self.account};"
        )

    def env(self) -> dict[str, str]:
        """Environment for Barman and the runner: the connection string, as Barman requires
        for emulated storage."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string()}

    def url(self, container: str, path: str = "") -> str:
        """The destination URL of ``container/path`` in the emulator's path-style form."""
        return f"{self.account_url}/{container}" + (f"/{path}" if path else "")

    def service(self, **options: Any) -> BlobServiceClient:
        return BlobServiceClient(
            self.account_url, credential=AzureNamedKeyCredential(self.account, self.key),
            **options,
        )

    def create_container(self, name: str) -> None:
        with self.service() as service:
            service.create_container(name)

    def list_objects(self, container: str, prefix: str = "") -> dict[str, int]:
        """Every blob under ``prefix`` as name -> size in bytes."""
        with self.service() as service:
            client = service.get_container_client(container)
            return {b.name: int(b.size) for b in client.list_blobs(name_starts_with=prefix)}

    def get_object(self, container: str, name: str) -> bytes:
        with self.service() as service:
            return service.get_blob_client(container, name).download_blob().readall()

    def tags(self, container: str, name: str) -> dict[str, str]:
        """The blob index tags of one blob."""
        with self.service() as service:
            return dict(service.get_blob_client(container, name).get_blob_tags())

    def block_count(self, container: str, name: str) -> int:
        """How many committed blocks the blob is made of (0 for a single-PUT blob)."""
        with self.service() as service:
            committed, _ = service.get_blob_client(container, name).get_block_list("committed")
            return len(committed)

    def stop(self) -> None:
        unregister_cleanup(self.stop)
        stop_process_group(self.process)
        self.process = None
        if self.remove_workdir_on_stop and self.workdir is not None:
            remove_workdir(self.workdir)


def _ready(server: AzuriteServer) -> bool:
    # no SDK retries: its first backoff is 15 s, longer than Azurite takes to start
    with server.service(retry_total=0) as service:
        next(iter(service.list_containers(results_per_page=1)), None)
    return True


def start_azurite(workdir: Path, *, remove_workdir_on_stop: bool = False) -> AzuriteServer:
    """Start ``azurite-blob`` on a free loopback port with a fresh account and key."""
    account = "pgcloud" + secrets.token_hex(4)
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    port = free_port()
    data = workdir / "azurite-data"
    data.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "azurite.log"
    args = [
        os.fspath(azurite_bin()),
        "--blobHost", "127.0.0.1",
        "--blobPort", str(port),
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--location", os.fspath(data),
        "--silent",
    ]
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env={**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"},
            start_new_session=True,
        )
    server = AzuriteServer(
        endpoint=f"http://127.0.0.1:{port}", account=account, key=key, workdir=workdir,
        log_file=log_file, process=proc, remove_workdir_on_stop=remove_workdir_on_stop,
    )
    register_cleanup(server.stop)
    try:
        wait_until_ready(f"Azurite at {server.endpoint}", server.process, server.log_file,
                         lambda: _ready(server), START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server
