"""The raw limits a backup cannot beat on this machine and store, each run as its own process.

- `put`: one multipart PUT, through boto3's managed transfer (`upload_fileobj`), of a tar stream
  of the same files the backup reads (GNU tar into a pipe): the upload limit.
- `ingest`: the same tar stream read into memory first (not timed), then uploaded as 16 MiB
  parts by 4 threads, each a `bytearray` body as the runner sends them (but SigV4-signed, as
  boto3 is configured for S3-compatible stores; the runner sends a CRC32C instead): the store
  fed by a client with no file to read, no tar to build and no process to start. Not a hard
  ceiling: the threads share one GIL. The timed section is reported as "seconds".
- `codec NAME`: the same tar stream through one codec, in-process, with the library and level
  the runner uses, output counted and dropped: the compression limit of one stream on one core.
- command-line tools (`zstd -T2 -3`, `gzip -9`...) on the same stream are run by `run.py` as shell
  pipelines, for reference.

`python -m benchmarks.limits put|ingest|codec ...` prints one JSON line: {"bytes_in",
"bytes_out"} (and "seconds" for `ingest`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from airflow_provider_pgcloud.runner.codecs import get_codec

READ = 1 << 20


def tar_argv(pgdata: str, tablespaces: Sequence[str] = ()) -> list[str]:
    """GNU tar of PGDATA (without WAL, pid file and temp stats) and the tablespaces, to stdout."""
    argv = ["tar", "-cf", "-", "--format=pax", "-C", pgdata,
            "--exclude=./pg_wal/*", "--exclude=./postmaster.pid", "--exclude=./pg_stat_tmp/*",
            "."]
    for location in tablespaces:
        argv += ["-C", location, "."]
    return argv


class _Counting:
    """A read-only file object over a pipe that counts what passes through."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data


def _client(args: argparse.Namespace) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=args.endpoint_url,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=args.concurrency,
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def put(args: argparse.Namespace) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    client = _client(args)
    config = TransferConfig(multipart_chunksize=args.part_size << 20,
                            max_concurrency=args.concurrency)
    with subprocess.Popen(tar_argv(args.pgdata, args.tablespace), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, bufsize=0) as tar:
        assert tar.stdout is not None
        source = _Counting(tar.stdout)
        client.upload_fileobj(source, args.bucket, args.key, Config=config)  # type: ignore[arg-type]
    size = client.head_object(Bucket=args.bucket, Key=args.key)["ContentLength"]
    return {"bytes_in": source.count, "bytes_out": size}


def ingest(args: argparse.Namespace) -> dict[str, Any]:
    part_size = args.part_size << 20
    parts: list[bytearray] = []
    with subprocess.Popen(tar_argv(args.pgdata, args.tablespace), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, bufsize=0) as tar:
        assert tar.stdout is not None
        while True:
            part = bytearray(part_size)
            view, filled = memoryview(part), 0
            while filled < part_size and (got := os.readv(tar.stdout.fileno(), [view[filled:]])):
                filled += got
            view.release()  # a bytearray with a live view cannot be resized
            if not filled:
                break
            del part[filled:]
            parts.append(part)
    client = _client(args)
    started = time.perf_counter()
    upload_id = client.create_multipart_upload(Bucket=args.bucket, Key=args.key)["UploadId"]

    def send(number: int) -> dict[str, Any]:
        response = client.upload_part(Bucket=args.bucket, Key=args.key, UploadId=upload_id,
                                      PartNumber=number, Body=parts[number - 1])
        return {"PartNumber": number, "ETag": response["ETag"]}

    with ThreadPoolExecutor(args.concurrency) as pool:
        done = list(pool.map(send, range(1, len(parts) + 1)))
    client.complete_multipart_upload(Bucket=args.bucket, Key=args.key, UploadId=upload_id,
                                     MultipartUpload={"Parts": done})
    seconds = time.perf_counter() - started
    size = client.head_object(Bucket=args.bucket, Key=args.key)["ContentLength"]
    return {"bytes_in": sum(map(len, parts)), "bytes_out": size, "seconds": seconds}


def compress(args: argparse.Namespace) -> dict[str, Any]:
    compressor = get_codec(args.codec).new()
    produced = 0
    with subprocess.Popen(tar_argv(args.pgdata, args.tablespace), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, bufsize=0) as tar:
        assert tar.stdout is not None
        consumed = 0
        while data := tar.stdout.read(READ):
            consumed += len(data)
            produced += len(compressor.compress(data))
        produced += len(compressor.flush())
    return {"bytes_in": consumed, "bytes_out": produced}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limits")
    sub = parser.add_subparsers(dest="what", required=True)
    uploads = [sub.add_parser("put"), sub.add_parser("ingest")]
    for u in uploads:
        u.add_argument("--endpoint-url", required=True)
        u.add_argument("--part-size", type=int, default=16, help="MiB")
        u.add_argument("--concurrency", type=int, default=4)
        u.add_argument("bucket")
        u.add_argument("key")
    c = sub.add_parser("codec")
    c.add_argument("codec")
    for sp in (*uploads, c):
        sp.add_argument("--tablespace", action="append", default=[])
        sp.add_argument("pgdata")
    args = parser.parse_args(argv)
    result = {"put": put, "ingest": ingest, "codec": compress}[args.what](args)
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: it is not part of the limit


if __name__ == "__main__":
    sys.exit(main())
