"""A pure token bucket over caller-supplied float time.

Theory of operation
-------------------
The bucket holds ``tokens`` (bytes), refilled continuously at ``rate`` tokens per second up to
``burst``. Time is never read from a clock: every method takes ``now`` (seconds, monotonic,
non-decreasing; an earlier ``now`` than the last one seen is treated as "no time passed").

``consume(n, now)`` always succeeds and may drive the balance negative (a *debt*): this models a
receiver that has already read the bytes, and a sender that must emit a whole frame. Callers that
must not overdraw ask ``can_consume``/``time_until`` first. ``ready_at(n)`` is the absolute time
at which the balance reaches ``n`` if nothing else is consumed, so a caller can compute a timer
without knowing ``now``; comparisons allow a tiny epsilon so that waking up exactly at
``ready_at(n)`` always succeeds despite float rounding.

``rate == 0`` means unlimited: every query answers "now" and consuming is free.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]

_EPS = 1e-6


class TokenBucket:
    """Token bucket: ``rate`` bytes/s (0 = unlimited), at most ``burst`` bytes saved up."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be finite and >= 0, got {rate!r}")
        if rate > 0 and burst <= 0:
            raise ValueError(f"burst must be > 0 when rate > 0, got {burst!r}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    @property
    def rate(self) -> float:
        """Refill rate in tokens per second (0 = unlimited)."""
        return self._rate

    @property
    def burst(self) -> int:
        """Capacity of the bucket."""
        return int(self._burst)

    @property
    def unlimited(self) -> bool:
        """True when ``rate == 0``."""
        return self._rate == 0.0

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def available(self, now: float) -> float:
        """The balance at ``now`` (negative while in debt; ``inf`` when unlimited)."""
        if self._rate == 0.0:
            return math.inf
        self._refill(now)
        return self._tokens

    def can_consume(self, n: float, now: float) -> bool:
        """Whether ``n`` tokens are available at ``now``."""
        if self._rate == 0.0:
            return True
        self._refill(now)
        return self._tokens + _EPS >= n

    def consume(self, n: float, now: float) -> None:
        """Take ``n`` tokens; the balance may go negative (a debt repaid by later refills)."""
        if self._rate == 0.0:
            return
        self._refill(now)
        self._tokens -= n

    def ready_at(self, n: float) -> float:
        """Absolute time when the balance reaches ``n`` if nothing more is consumed.

        Returns the time of the last update if it is already reached, and ``inf`` if it never
        will be (``n`` above ``burst``). Unlimited buckets return ``-inf``.
        """
        if self._rate == 0.0:
            return -math.inf
        if self._tokens + _EPS >= n:
            return self._last
        if n > self._burst + _EPS:
            return math.inf
        return self._last + (n - self._tokens) / self._rate

    def time_until(self, n: float, now: float) -> float:
        """Seconds from ``now`` until ``n`` tokens are available (0 if they already are)."""
        if self._rate == 0.0:
            return 0.0
        self._refill(now)
        return max(0.0, self.ready_at(n) - now)
