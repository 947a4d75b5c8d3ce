"""Per-part retries: which store errors are transient, and a bounded, jittered backoff.

The engine owns the retries of multipart parts (S3 `UploadPart`, Azure `Put Block`), so the
policy is the same for every provider, every retry is logged with its part number, and the
worst case is a number one can compute: the S3 and Azure backends turn their SDK's own retries
off for part uploads (one SDK attempt per engine attempt). GCS resumes a chunk of its upload
session itself (it cannot re-send a part from the start), so its store declares
`capabilities.engine_retries_parts = False` and its parts are not retried here. Everything
else a backup sends (backup.info, objects smaller than one part, completing or aborting an
upload, listings) keeps the SDK's own retries.

Transient: a connection refused, reset or closed, a connect or read timeout, the answers 408,
429, 500, 502, 503 and 504 (S3's `SlowDown`, `InternalError`, `ServiceUnavailable`, Azure's
`ServerBusy`, ...), and S3's `BadDigest` (the store found the part's CRC32C wrong: its bytes
changed on the way, and the engine still holds the right ones). Anything else (access denied,
a missing bucket, a bad request) fails at once.

The backoff before retry n (1, 2, ...) is a uniform random delay in [0, min(cap, base * 2**(n-1))]
("full jitter"), so parts that failed together do not come back together. With the defaults a
part is tried at most 5 times and waits at most 1 + 2 + 4 + 8 = 15 s in all between attempts;
each attempt is itself bounded by the store's connect timeout and `--read-timeout`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import BackupFailed, PgCloudError, first_line

log = logging.getLogger("pgcloud")

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "RequestLimitExceeded",
    "TooManyRequestsException", "PriorRequestNotComplete", "ServerBusy", "OperationTimedOut",
    "InternalServerError",
    "BadDigest",  # the part's checksum did not match: its bytes changed on the way
})




def _botocore_transient(exc: BaseException) -> bool | None:
    try:
        import botocore.exceptions as be
    except ImportError:  # pragma: no cover - boto3 is a core dependency
        return None
    if isinstance(exc, be.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in RETRY_STATUS or error.get("Code") in RETRY_CODES
    if isinstance(exc, (be.ConnectionError, be.HTTPClientError)):
        return True  # refused, reset, closed, connect and read timeouts
    return None


def _azure_transient(exc: BaseException) -> bool | None:
    try:
        from azure.core import exceptions as ae
    except ImportError:
        return None
    if isinstance(exc, (ae.ServiceRequestError, ae.ServiceResponseError)):
        return True
    if isinstance(exc, ae.HttpResponseError):
        return exc.status_code in RETRY_STATUS or getattr(exc, "error_code", None) in RETRY_CODES
    return None


def _requests_transient(exc: BaseException) -> bool | None:
    try:
        import requests
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError)):
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """True if trying the same request again may well succeed."""
    if isinstance(exc, PgCloudError):
        return False  # the engine's own verdicts are final
    for check in (_botocore_transient, _azure_transient, _requests_transient):
        verdict = check(exc)
        if verdict is not None:
            return verdict
    return isinstance(exc, (ConnectionError, TimeoutError))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one request is retried."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based): full jitter."""
        return self.rng.uniform(0, min(self.cap, self.base * 2 ** (retry - 1)))

    @property
    def max_total_delay(self) -> float:
        return sum(min(self.cap, self.base * 2 ** (n - 1)) for n in range(1, self.attempts))

    def call(
        self,
        fn: Callable[[], T],
        what: str,
        *,
        give_up: Callable[[], bool] | None = None,
    ) -> T:
        """`fn()`, retried on transient errors. When the attempts are used up the last error
        is raised as BackupFailed naming `what`; a non-transient error is raised as it is.
        `give_up()` true (another part of the same object failed, or the upload is being
        aborted) stops retrying at once."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == self.attempts or (give_up is not None and give_up()):
                    raise BackupFailed(
                        f"{what} failed after {attempt} attempt{'s' if attempt > 1 else ''}: "
                        f"{first_line(exc)}"
                    ) from exc
                wait = self.delay(attempt)
                log.warning("%s failed (%s); retry %d of %d in %.1fs", what, first_line(exc),
                            attempt, self.attempts - 1, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")


PART_RETRY = RetryPolicy()
