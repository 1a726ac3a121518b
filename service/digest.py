"""The served weights' digest, cheap whatever callers do: at most one hash per interval.

Hashing every weight (about 60 MB for VGG16) takes the model's CPU. So
`POST /weights_digest` serves the last digest while it is younger than the
interval, and concurrent callers past it share one computation (a lock, in a
worker thread): a flood of calls costs one hash per interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import anyio


@dataclass(frozen=True)
class Digest:
    """One digest and when it was computed."""

    sha256: str
    computed_at: str  # ISO 8601, UTC
    monotonic: float

    def age(self) -> float:
        """Seconds since it was computed."""
        return time.monotonic() - self.monotonic


def _now(sha256: str) -> Digest:
    return Digest(
        sha256, datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    )


class DigestCache:
    """`await cache.get()`: the last digest while younger than `interval_s`, else a new one.

    `compute` (blocking) runs once at construction (the digest at load) and
    then at most once per `interval_s`, one call at a time.
    """

    def __init__(self, compute: Callable[[], str], interval_s: float) -> None:
        self._compute, self.interval_s = compute, interval_s
        self.loaded = _now(compute())
        self._last, self._lock = self.loaded, anyio.Lock()
        self.computed = 1  # how many times the weights were hashed

    async def get(self) -> Digest:
        """The current digest (recomputed when the last is `interval_s` old or older)."""
        async with self._lock:
            if self.interval_s == 0 or self._last.age() >= self.interval_s:
                sha256 = await anyio.to_thread.run_sync(self._compute)
                self._last, self.computed = _now(sha256), self.computed + 1
            return self._last
