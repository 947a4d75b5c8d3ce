"""Progress lines for long work: bytes done of bytes planned, and throughput."""

from __future__ import annotations

import logging
import time

from .sizes import format_size


def configure_logging(level: int) -> None:
    """Barman's log line shape on stderr; SDK chatter only from WARNING up."""
    logging.basicConfig(
        level=level, format="%(asctime)s [%(process)d] %(levelname)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "azure", "google"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level))


class Progress:
    """Logs `done/planned (pct) at N MB/s` at most every `interval` seconds."""

    def __init__(self, label: str, planned: int, logger: logging.Logger,
                 interval: float = 10.0) -> None:
        self.label, self.planned, self.done = label, planned, 0
        self._log, self._interval = logger, interval
        self._start = self._last = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._log.info("%s: %s", self.label, self.summary())

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._start

    def summary(self) -> str:
        rate = self.done / max(self.seconds, 1e-6) / 1e6
        pct = f" ({100 * self.done / self.planned:.0f}%)" if self.planned else ""
        return (
            f"{format_size(self.done)} of {format_size(self.planned)}{pct} "
            f"in {self.seconds:.1f}s, {rate:.1f} MB/s"
        )
