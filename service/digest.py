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
    clock: float  # the cache's clock then


class DigestCache:
    """`await cache.get()`: the last digest while younger than `interval_s`, else a new one.

    `compute` (blocking) runs once at construction (the digest at load) and
    then at most once per `interval_s` of `clock`, one call at a time.
    """

    def __init__(self, compute: Callable[[], str], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._compute, self.interval_s, self._clock = compute, interval_s, clock
        self.loaded = self._stamp(compute())
        self._last, self._lock = self.loaded, anyio.Lock()

    def _stamp(self, sha256: str) -> Digest:
        """A digest computed now."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return Digest(sha256, now, self._clock())

    def age(self, digest: Digest) -> float:
        """Seconds since `digest` was computed."""
        return self._clock() - digest.clock

    async def get(self) -> Digest:
        """The current digest (recomputed when the last is `interval_s` old or older)."""
        async with self._lock:
            if self.interval_s == 0 or self.age(self._last) >= self.interval_s:
                sha256 = await anyio.to_thread.run_sync(self._compute)
                self._last = self._stamp(sha256)
            return self._last
