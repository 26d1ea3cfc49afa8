"""Round trips and in-flight requests of one connection: what a destination selects by.

Theory of operation
-------------------
A :class:`RoundTripMeter` belongs to one connection. Its driver feeds it every ping round trip
(``sample``) and, for each outbound request, ``started`` when the request is queued and
``finished`` when it ends however it ends; a request answered with a response also ``sample``s
its round trip (error answers do not: a fast refusal says nothing about how long an answer
takes). ``rtt`` is an exponentially weighted moving average of the samples (``alpha`` = 1/8, as
TCP's smoothed RTT), ``None`` before the first one. Invariant: ``in_flight`` equals the sum of
the per-channel counts, and neither is ever negative. Pure: no clock, no I/O; the caller measures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["RTT_ALPHA", "RoundTripMeter"]

RTT_ALPHA = 0.125
"""Weight of a new round-trip sample in the moving average."""

_EMPTY: Mapping[int, int] = MappingProxyType({})


class RoundTripMeter:
    """Round-trip EWMA and in-flight request counts of one connection."""

    __slots__ = ("_by_channel", "in_flight", "rtt", "samples")

    def __init__(self) -> None:
        self.rtt: float | None = None
        """Smoothed round trip in seconds (pings and answered requests); None before any."""
        self.samples = 0
        """Round trips measured so far."""
        self.in_flight = 0
        """Outbound requests started and not finished, all channels together."""
        self._by_channel: dict[int, int] = {}

    def sample(self, rtt: float) -> None:
        """A round trip of ``rtt`` seconds was measured (negative or non-finite: ignored)."""
        if not (math.isfinite(rtt) and rtt >= 0.0):
            return
        prev = self.rtt
        self.rtt = rtt if prev is None else prev + RTT_ALPHA * (rtt - prev)
        self.samples += 1

    def started(self, channel_id: int) -> None:
        """An outbound request on ``channel_id`` was queued."""
        self.in_flight += 1
        self._by_channel[channel_id] = self._by_channel.get(channel_id, 0) + 1

    def finished(self, channel_id: int) -> None:
        """An outbound request on ``channel_id`` ended (answered, failed, expired, cancelled)."""
        count = self._by_channel.get(channel_id, 0)
        if count <= 0:
            raise ValueError(f"no request in flight on channel {channel_id}")
        if count == 1:
            del self._by_channel[channel_id]
        else:
            self._by_channel[channel_id] = count - 1
        self.in_flight -= 1

    def in_flight_by_channel(self) -> Mapping[int, int]:
        """A read-only copy: channel id to requests in flight (channels with none left out)."""
        if not self._by_channel:
            return _EMPTY
        return MappingProxyType(dict(self._by_channel))
