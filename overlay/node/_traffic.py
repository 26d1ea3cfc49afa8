"""Traffic a node adds up over its connections: typed records summed by field.

A connection's counters (:class:`~overlay.connection._types.ChannelStatistics`) die with it;
the node keeps the totals of closed connections (:class:`TrafficTotals`) so the counters it
exports never decrease. A scrape adds the open connections' counters to them and reads the
gauges (queue depths, requests in flight) of the open connections only.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from overlay.connection._types import ChannelStatistics, ConnectionStatistics

__all__ = ["ChannelLoad", "ChannelTraffic", "TrafficTotals", "channel_loads"]


_R = TypeVar("_R", "ChannelTraffic", "ChannelLoad")


def _fieldwise(a: _R, b: _R, **combine: Callable[[Any, Any], Any]) -> _R:
    """``a`` and ``b`` combined field by field: added, unless ``combine`` names another
    function for a field (``queue_depth_max=max``)."""
    return type(a)(**{
        f.name: combine.get(f.name, operator.add)(getattr(a, f.name), getattr(b, f.name))
        for f in fields(a)
    })


@dataclass(frozen=True, slots=True)
class ChannelTraffic:
    """Cumulative counters of one channel (payload bytes, uncompressed)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    """Responses to unknown, timed-out or cancelled requests."""

    @classmethod
    def of(cls, stats: ChannelStatistics) -> ChannelTraffic:
        return cls(
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
            messages_sent=stats.messages_sent,
            messages_received=stats.messages_received,
            messages_dropped=stats.messages_dropped,
        )

    def __add__(self, other: ChannelTraffic) -> ChannelTraffic:
        return _fieldwise(self, other)


@dataclass(frozen=True, slots=True)
class ChannelLoad:
    """Gauges of one channel over the open connections."""

    queue_depth_sum: int = 0
    """Messages waiting in send queues, summed over peers."""
    queue_depth_max: int = 0
    """Messages waiting in the deepest single peer send queue."""
    outbound_requests_in_flight: int = 0
    inbound_requests_in_flight: int = 0

    @classmethod
    def of(cls, stats: ChannelStatistics) -> ChannelLoad:
        return cls(
            queue_depth_sum=stats.queue_depth,
            queue_depth_max=stats.queue_depth,
            outbound_requests_in_flight=stats.outbound_requests_in_flight,
            inbound_requests_in_flight=stats.inbound_requests_active,
        )

    def __add__(self, other: ChannelLoad) -> ChannelLoad:
        return _fieldwise(self, other, queue_depth_max=max)


@dataclass(frozen=True, slots=True)
class TrafficTotals:
    """Wire bytes and per-channel counters of a set of connections."""

    wire_bytes_sent: int = 0
    """Frame bytes written (before encryption)."""
    wire_bytes_received: int = 0
    channels: Mapping[int, ChannelTraffic] = field(default_factory=dict)
    """By channel id."""

    def plus(self, stats: ConnectionStatistics) -> TrafficTotals:
        """These totals with one more connection's counters added."""
        channels = dict(self.channels)
        for ch in stats.channels:
            channels[ch.channel_id] = channels.get(ch.channel_id, ChannelTraffic()) + (
                ChannelTraffic.of(ch)
            )
        return TrafficTotals(
            wire_bytes_sent=self.wire_bytes_sent + stats.bytes_out,
            wire_bytes_received=self.wire_bytes_received + stats.bytes_in,
            channels=channels,
        )

    def plus_all(self, many: Iterable[ConnectionStatistics]) -> TrafficTotals:
        totals = self
        for stats in many:
            totals = totals.plus(stats)
        return totals


def channel_loads(many: Iterable[ConnectionStatistics]) -> dict[int, ChannelLoad]:
    """The gauges of every channel over the connections ``many``, by channel id."""
    loads: dict[int, ChannelLoad] = {}
    for stats in many:
        for ch in stats.channels:
            loads[ch.channel_id] = loads.get(ch.channel_id, ChannelLoad()) + ChannelLoad.of(ch)
    return loads
