"""A fault-injecting HTTP proxy on loopback, between a store client and the S3 server.

Why: the engine's retries and failure handling can only be believed when the faults are
real ones on the wire — a 503 with S3's SlowDown body, a connection reset while the part's
body is still being sent, a response that never comes — and when they hit exactly the
requests a test chooses. The proxy forwards byte for byte (the client signs requests for the
proxy's address, which it forwards unchanged, so SigV4 still verifies) and looks only at
request heads: for each request `plan(request)` returns a fault kind or None.

Every forwarded request is sent upstream with `Connection: close`, so each client connection
carries one request and request boundaries never need parsing past the head.

Fault kinds:
  "503"        answer `503 Slow Down` (S3's SlowDown error body) without forwarding;
  "500"        answer `500 Internal Error` (S3's InternalError) without forwarding;
  "403"        answer `403 Forbidden` (AccessDenied), a permanent error;
  "reset"      read the whole request, then reset the connection (RST) instead of answering;
  "reset-body" accept the body (`100 Continue`), read half of it, then reset;
  "timeout"    read the whole request and answer nothing for `hold` seconds, then close;
  "corrupt"    forward the request with one byte of its body flipped (a bit error on the way:
               the store must notice it from the part's checksum);
  "no-checksums" answer `400 InvalidArgument`, as stores that do not know S3's
               flexible-checksum headers answer a request that carries them;
  "501"        answer `501 Not Implemented` (NotImplemented), as a store answers an API it
               does not have (S3 DeleteObjects, an Azure blob batch, a GCS batch request).
`blackhole(True)` makes the store unavailable: new connections are accepted and read but never
answered, and connections being forwarded stop passing data either way.
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

KINDS = ("503", "500", "reset", "reset-body", "timeout", "corrupt")

_RESPONSES = {
    "503": (b"503 Slow Down", b"SlowDown", b"Please reduce your request rate."),
    "500": (b"500 Internal Server Error", b"InternalError",
            b"We encountered an internal error. Please try again."),
    "403": (b"403 Forbidden", b"AccessDenied", b"Access Denied"),  # permanent: no retry
    "501": (b"501 Not Implemented", b"NotImplemented",
            b"A header you provided implies functionality that is not implemented."),
    "no-checksums": (b"400 Bad Request", b"InvalidArgument",
                     b"Unsupported header 'x-amz-checksum-crc32c' received for this API call."),
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def is_upload_part(self) -> bool:
        return self.method == "PUT" and "partNumber" in self.query and "uploadId" in self.query

    @property
    def has_checksum(self) -> bool:
        """The request carries an S3 flexible-checksum header."""
        return any(name.startswith(("x-amz-checksum-", "x-amz-sdk-checksum-"))
                   for name in self.headers)

    @property
    def part(self) -> tuple[str, str, str]:
        return self.path, self.query["uploadId"][0], self.query["partNumber"][0]


Plan = Callable[[Request], str | None]


@dataclass
class EveryNthPart:
    """Fault the UploadPart requests number offset, offset+n, offset+2n... (1-based, in arrival
    order), each part at most once (its retry goes through), cycling through `kinds`. With
    `n=1` the first attempt of every part fails."""

    n: int = 20
    offset: int = 1
    kinds: Sequence[str] = KINDS
    seen: int = 0
    faulted: list[tuple[str, tuple[str, str, str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> str | None:
        if not request.is_upload_part:
            return None
        with self._lock:
            self.seen += 1
            if self.seen % self.n != self.offset % self.n:
                return None
            if any(part == request.part for _, part in self.faulted):
                return None
            kind = self.kinds[len(self.faulted) % len(self.kinds)]
            self.faulted.append((kind, request.part))
            return kind


def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _parse(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    parts = urlsplit(target)
    return Request(method, parts.path, parse_qs(parts.query, keep_blank_values=True), headers)


def _with_connection_close(head: bytes) -> bytes:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    kept = [line for line in lines if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n"


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """A running proxy to `upstream` (an http://host:port URL); `endpoint_url` is its own."""

    def __init__(self, upstream: str, plan: Plan | None = None, hold: float = 5.0) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.plan: Plan = plan or (lambda _request: None)
        self.hold = hold
        self.requests = 0
        self.injected: list[tuple[str, str]] = []  # (kind, method path)
        self._blackhole = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 64

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    # --- control ---------------------------------------------------------------------------
    def blackhole(self, on: bool = True) -> None:
        if on:
            self._blackhole.set()
        else:
            self._blackhole.clear()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- per connection --------------------------------------------------------------------
    def _track(self, sock: socket.socket, on: bool) -> None:
        with self._lock:
            if on:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _serve(self, client: socket.socket) -> None:
        self._track(client, True)
        try:
            if self._blackhole.is_set():
                self._swallow(client)
                return
            read = _read_head(client)
            if read is None:
                return
            head, rest = read
            request = _parse(head)
            with self._lock:
                self.requests += 1
            kind = self.plan(request)
            if self._blackhole.is_set():
                self._swallow(client)
                return
            if kind is not None:
                with self._lock:
                    self.injected.append((kind, f"{request.method} {request.path}"))
            if kind is None or kind == "corrupt":
                self._forward(client, head, rest, corrupt=kind == "corrupt")
            else:
                self._fault(client, kind, request, rest)
        except OSError:
            pass
        finally:
            self._track(client, False)
            with contextlib.suppress(OSError):
                client.close()

    def _swallow(self, client: socket.socket) -> None:
        """Read and drop whatever comes until the client gives up (or the proxy stops)."""
        client.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                if not client.recv(65536):
                    return
            except TimeoutError:
                continue

    def _read_body(self, client: socket.socket, request: Request, rest: bytes,
                   limit: int | None = None) -> None:
        length = int(request.headers.get("content-length", "0") or 0)
        if "100-continue" in request.headers.get("expect", "").lower():
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        want = length if limit is None else min(length, limit)
        got = len(rest)
        client.settimeout(10)
        while got < want:
            chunk = client.recv(min(65536, want - got))
            if not chunk:
                return
            got += len(chunk)

    def _fault(self, client: socket.socket, kind: str, request: Request, rest: bytes) -> None:
        if kind in _RESPONSES:
            status, code, message = _RESPONSES[kind]
            if "100-continue" not in request.headers.get("expect", "").lower():
                self._read_body(client, request, rest)
            body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + code
                    + b"</Code><Message>" + message + b"</Message></Error>")
            client.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\n"
                           + f"Content-Length: {len(body)}\r\n".encode()
                           + b"Connection: close\r\n\r\n" + body)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)
            # let the client read the answer before the socket goes away
            client.settimeout(1)
            with contextlib.suppress(OSError):
                while client.recv(65536):
                    pass
        elif kind == "reset":
            self._read_body(client, request, rest)
            _reset(client)
        elif kind == "reset-body":
            length = int(request.headers.get("content-length", "0") or 0)
            self._read_body(client, request, rest, limit=max(1, length // 2))
            _reset(client)
        elif kind == "timeout":
            self._read_body(client, request, rest)
            self._stopping.wait(self.hold)
        else:
            raise ValueError(f"unknown fault {kind!r}")

    def _forward(self, client: socket.socket, head: bytes, rest: bytes,
                 corrupt: bool = False) -> None:
        upstream = socket.create_connection(self.upstream, timeout=10)
        self._track(upstream, True)
        try:
            if corrupt and rest:
                rest, corrupt = bytes([rest[0] ^ 0x01]) + rest[1:], False
            upstream.sendall(_with_connection_close(head) + rest)
            client.setblocking(False)
            upstream.setblocking(False)
            # bytes waiting to be sent TO that socket
            pending = {client: bytearray(), upstream: bytearray()}
            other = {client: upstream, upstream: client}
            client_open = True
            while not self._stopping.is_set():
                if self._blackhole.is_set():  # the store stops answering mid-request
                    client.setblocking(True)
                    self._swallow(client)
                    return
                # read a side only while what it sent is not piling up (back-pressure)
                readers = [s for s in ([upstream] + ([client] if client_open else []))
                           if len(pending[other[s]]) < 1 << 20]
                writers = [s for s, data in pending.items() if data]
                readable, writable, _ = select.select(readers, writers, [], 0.2)
                for sock in writable:
                    sent = sock.send(pending[sock])
                    del pending[sock][:sent]
                for sock in readable:
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if corrupt and sock is client and data:
                        data, corrupt = bytes([data[0] ^ 0x01]) + data[1:], False
                    if not data:
                        if sock is upstream:
                            if pending[client]:
                                self._flush(client, bytes(pending[client]))
                            return
                        client_open = False
                        continue
                    pending[other[sock]] += data
        finally:
            self._track(upstream, False)
            with contextlib.suppress(OSError):
                upstream.close()

    def _flush(self, sock: socket.socket, data: bytes) -> None:
        sock.setblocking(True)
        sock.settimeout(10)
        sock.sendall(data)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")

