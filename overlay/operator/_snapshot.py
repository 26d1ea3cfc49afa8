"""Scrape-time metrics: the records a node's snapshot callback returns, and their export.

Theory of operation
-------------------
When Prometheus scrapes, :class:`SnapshotCollector` calls the node's ``snapshot()`` once and
turns the :class:`MetricsSnapshot` into metric families. Which field becomes which family is
data, not code: :data:`_SCALARS` (one value per family), :data:`_SPLITS` (one family, a fixed
set of label values), :data:`_PER_CHANNEL` (one sample per channel, channels sorted). The few
families of a shape of their own (routing targets, capability peers, the DHT latency
histogram) are built by hand in :meth:`SnapshotCollector.collect`. docs/operator-guide.md lists
every family (a test compares it with a scrape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "ChannelSnapshot",
    "DhtSnapshot",
    "MAX_LABEL_VALUES",
    "MetricsSnapshot",
    "SnapshotCollector",
    "SnapshotSource",
    "TargetSnapshot",
]

MAX_LABEL_VALUES = 64
"""Distinct values kept per free-form label of one metric; more are folded into ``other``."""


@dataclass(frozen=True, slots=True)
class ChannelSnapshot:
    """Scrape-time values of one channel, summed over all peers.

    The traffic totals are counters: they must never decrease, so the node adds the totals of
    closed connections to those of open ones.
    """

    bytes_sent: int = 0
    """Payload bytes sent on this channel since start."""
    bytes_received: int = 0
    """Payload bytes received on this channel since start."""
    messages_sent: int = 0
    """Messages sent on this channel since start."""
    messages_received: int = 0
    """Messages received on this channel since start."""
    messages_dropped: int = 0
    """Responses dropped on this channel since start because no request was waiting for them
    (unknown, timed-out or cancelled request ids; late responses are normal). Undecodable
    messages are counted by ``invalid_message`` instead."""
    queue_depth_sum: int = 0
    """Messages waiting in send queues now, summed over connected peers."""
    queue_depth_max: int = 0
    """Messages waiting in the deepest single peer send queue now."""
    outbound_requests_in_flight: int = 0
    """Requests we sent that await a response now."""
    inbound_requests_in_flight: int = 0
    """Requests from peers that we are serving now."""


@dataclass(frozen=True, slots=True)
class DhtSnapshot:
    """The DHT's values at scrape time."""

    lookups_succeeded: int = 0
    lookups_failed: int = 0
    lookup_rounds: int = 0
    """Sum of the rounds of every lookup."""
    lookup_messages: int = 0
    """Sum of the queries sent by every lookup."""
    latency_buckets: tuple[float, ...] = ()
    """Upper bounds of the lookup latency histogram (seconds)."""
    latency_counts: tuple[int, ...] = ()
    """Lookups per bucket, then one count for longer lookups."""
    latency_sum: float = 0.0
    provider_records: int = 0
    """Provider records held for other nodes."""
    routing_table: int = 0
    requests_served: int = 0
    rate_limited: int = 0
    penalties: Mapping[str, int] = field(default_factory=dict)
    """Penalties given to peers for bad DHT answers or stores, by reason."""
    transient_outbound: int = 0
    transient_inbound: int = 0
    transient_idle_closed: int = 0


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """One routing target as exported at scrape time."""

    connected: int = 0
    required: int = 0
    deficit: int = 0
    attainable: bool = True


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything exported at scrape time (returned by the node's snapshot callback)."""

    peers_inbound: int = 0
    """Connected inbound peers."""
    peers_outbound: int = 0
    """Connected outbound peers."""
    known_peers: int = 0
    """Peers in the peer manager (connected or not)."""
    dialing_peers: int = 0
    """Dials in progress."""
    banned_peers: int = 0
    """Node ids currently banned."""
    banned_ips: int = 0
    """IP addresses currently banned."""
    address_book_new: int = 0
    """Address book entries never successfully connected to."""
    address_book_tried: int = 0
    """Address book entries connected to at least once."""
    wire_bytes_sent: int = 0
    """Bytes written to all connections since start (framed and encrypted)."""
    wire_bytes_received: int = 0
    """Bytes read from all connections since start (framed and encrypted)."""
    channels: Mapping[str, ChannelSnapshot] = field(default_factory=dict)
    """Per-channel values by channel name."""
    pending_handshakes: int = 0
    """Inbound connections in the Noise handshake now (all transports)."""
    inbound_accepted: int = 0
    """Inbound connections that completed the handshake since start."""
    inbound_refused: Mapping[str, int] = field(default_factory=dict)
    """Inbound connections closed at accept, before any cryptography, by reason: ``gate`` (the
    peer manager refused the address: ban, per-IP or per-netgroup limit), ``per_ip`` /
    ``per_netgroup`` (that IP or netgroup already had its share of pending handshakes) or
    ``overload`` (``max_pending_handshakes`` already in progress, none evictable)."""
    pending_evictions: int = 0
    """Pending inbound handshakes cut to make room for a newcomer from a less represented
    netgroup since start."""
    targets: Mapping[str, TargetSnapshot] = field(default_factory=dict)
    """Routing targets by capability (after the policy engine's last tick)."""
    record_seq: int = 0
    """The seq of this node's signed capability record (0 before the first is signed)."""
    capability_peers: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Per capability: connected peers whose record advertises it, and those of them that
    confirmed it by serving a request."""
    dht: DhtSnapshot = field(default_factory=DhtSnapshot)
    """The DHT's counters (all zero when the DHT is disabled or not running)."""


SnapshotSource = Callable[[], MetricsSnapshot]

_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]
_Get = Callable[[MetricsSnapshot], float]
_G, _C = GaugeMetricFamily, CounterMetricFamily

_SCALARS: tuple[tuple[_Family, str, str, _Get], ...] = (
    (_G, "known_peers", "Peers known to the peer manager.", lambda s: s.known_peers),
    (_G, "dialing_peers", "Dials in progress.", lambda s: s.dialing_peers),
    (_G, "banned_peers", "Node ids currently banned.", lambda s: s.banned_peers),
    (_G, "banned_ips", "IP addresses currently banned.", lambda s: s.banned_ips),
    (_G, "pending_handshakes", "Inbound connections in the Noise handshake now.",
     lambda s: s.pending_handshakes),
    (_C, "inbound_accepted_total", "Inbound connections that completed the handshake.",
     lambda s: s.inbound_accepted),
    (_C, "pending_handshake_evictions_total", "Pending inbound handshakes cut to admit a "
     "newcomer from a less represented netgroup.", lambda s: s.pending_evictions),
    (_C, "wire_sent_bytes_total", "Bytes written to all connections.",
     lambda s: s.wire_bytes_sent),
    (_C, "wire_received_bytes_total", "Bytes read from all connections.",
     lambda s: s.wire_bytes_received),
    (_G, "record_seq", "Sequence number of this node's signed capability record.",
     lambda s: s.record_seq),
    (_C, "dht_lookup_rounds_total", "Rounds of all DHT lookups.", lambda s: s.dht.lookup_rounds),
    (_C, "dht_lookup_messages_total", "Queries sent by all DHT lookups.",
     lambda s: s.dht.lookup_messages),
    (_G, "dht_provider_records", "Provider records held for other nodes.",
     lambda s: s.dht.provider_records),
    (_G, "dht_routing_table_contacts", "Contacts in the DHT routing table.",
     lambda s: s.dht.routing_table),
    (_C, "dht_requests_served_total", "DHT requests answered.", lambda s: s.dht.requests_served),
    (_C, "dht_rate_limited_total", "DHT requests refused by the per-peer rate limit.",
     lambda s: s.dht.rate_limited),
    (_C, "dht_transient_idle_closed_total", "Transient connections closed after their idle "
     "grace.", lambda s: s.dht.transient_idle_closed),
)
"""Families of one unlabelled value: (type, name, help, value)."""


def _refused(reason: str) -> _Get:
    return lambda s: s.inbound_refused.get(reason, 0)


_SPLITS: tuple[tuple[_Family, str, str, str, tuple[tuple[str, _Get], ...]], ...] = (
    (_G, "connected_peers", "Connected peers by direction.", "direction",
     (("inbound", lambda s: s.peers_inbound), ("outbound", lambda s: s.peers_outbound))),
    (_G, "address_book_entries", "Address book entries by table.", "table",
     (("new", lambda s: s.address_book_new), ("tried", lambda s: s.address_book_tried))),
    (_C, "inbound_refused_total", "Inbound connections closed at accept before any "
     "cryptography, by reason (gate: refused by the peer manager; per_ip, per_netgroup: that "
     "IP or netgroup already has its share of pending handshakes; overload: too many pending "
     "handshakes).", "reason",
     tuple((r, _refused(r)) for r in ("gate", "per_ip", "per_netgroup", "overload"))),
    (_C, "dht_lookups_total", "DHT lookups by result.", "result",
     (("succeeded", lambda s: s.dht.lookups_succeeded),
      ("failed", lambda s: s.dht.lookups_failed))),
    (_G, "dht_transient_connections", "Open transient (DHT-only) connections by direction.",
     "direction", (("outbound", lambda s: s.dht.transient_outbound),
                   ("inbound", lambda s: s.dht.transient_inbound))),
)
"""Families of a fixed set of label values: (type, name, help, label, ((value, get), ...))."""

_PER_CHANNEL: tuple[tuple[_Family, str, str, Callable[[ChannelSnapshot], int]], ...] = (
    (_C, "sent_bytes_total", "Payload bytes sent per channel.", lambda c: c.bytes_sent),
    (_C, "received_bytes_total", "Payload bytes received per channel.",
     lambda c: c.bytes_received),
    (_C, "sent_messages_total", "Messages sent per channel.", lambda c: c.messages_sent),
    (_C, "received_messages_total", "Messages received per channel.",
     lambda c: c.messages_received),
    (_C, "dropped_messages_total", "Responses dropped per channel because no request was "
     "waiting for them.", lambda c: c.messages_dropped),
    (_G, "send_queue_messages", "Messages queued to send per channel, summed over peers.",
     lambda c: c.queue_depth_sum),
    (_G, "send_queue_max_messages", "Messages queued to send in the deepest peer queue per "
     "channel.", lambda c: c.queue_depth_max),
    (_G, "outbound_requests_in_flight", "Requests sent that await a response, per channel.",
     lambda c: c.outbound_requests_in_flight),
    (_G, "inbound_requests_in_flight", "Requests from peers being served, per channel.",
     lambda c: c.inbound_requests_in_flight),
)
"""Families with one sample per channel: (type, name, help, value of a channel)."""


class SnapshotCollector(Collector):
    """Exports a :class:`MetricsSnapshot` at scrape time (nothing while ``source`` is None)."""

    def __init__(self, namespace: str) -> None:
        self._ns = namespace
        self.source: SnapshotSource | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families(MetricsSnapshot())

    def collect(self) -> Iterable[Metric]:
        if self.source is None:
            return []
        return self._families(self.source())

    def _families(self, snap: MetricsSnapshot) -> list[Metric]:
        ns = self._ns
        out: list[Metric] = [
            kind(f"{ns}_{name}", doc, value=get(snap)) for kind, name, doc, get in _SCALARS
        ]
        for kind, name, doc, label, values in _SPLITS:
            family = kind(f"{ns}_{name}", doc, labels=[label])
            for label_value, get in values:
                family.add_metric([label_value], get(snap))
            out.append(family)
        channels = sorted(snap.channels)
        for kind, name, doc, per in _PER_CHANNEL:
            family = kind(f"{ns}_{name}", doc, labels=["channel"])
            for channel in channels:
                family.add_metric([channel], per(snap.channels[channel]))
            out.append(family)
        out += self._routing(snap)
        out += self._dht(snap.dht)
        return out

    def _routing(self, snap: MetricsSnapshot) -> list[Metric]:
        ns = self._ns
        target_peers = GaugeMetricFamily(
            f"{ns}_routing_target_peers",
            "Routing targets: connected peers with the capability, the number required and "
            "the deficit (kind).", labels=["capability", "kind"],
        )
        attainable = GaugeMetricFamily(
            f"{ns}_routing_target_attainable",
            "1 when enough providers of the capability are known to meet its target.",
            labels=["capability"],
        )
        for cap in sorted(snap.targets):
            t = snap.targets[cap]
            target_peers.add_metric([cap, "connected"], t.connected)
            target_peers.add_metric([cap, "required"], t.required)
            target_peers.add_metric([cap, "deficit"], t.deficit)
            attainable.add_metric([cap], 1 if t.attainable else 0)
        caps = GaugeMetricFamily(
            f"{ns}_capability_peers",
            "Connected peers per capability: kind=advertised (their record lists it) or "
            "confirmed (they also served a request for it).",
            labels=["capability", "kind"],
        )
        busiest = sorted(snap.capability_peers.items(), key=lambda kv: (-kv[1][0], kv[0]))
        for name, (advertised, confirmed) in sorted(busiest[:MAX_LABEL_VALUES]):
            caps.add_metric([name, "advertised"], advertised)
            caps.add_metric([name, "confirmed"], confirmed)
        return [target_peers, attainable, caps]

    def _dht(self, dht: DhtSnapshot) -> list[Metric]:
        ns = self._ns
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(dht.latency_buckets, dht.latency_counts, strict=False):
            running += count
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", sum(dht.latency_counts)))
        latency = HistogramMetricFamily(f"{ns}_dht_lookup_seconds", "Duration of DHT lookups.",
                                        buckets=buckets, sum_value=dht.latency_sum)
        penalties = CounterMetricFamily(f"{ns}_dht_penalties_total",
                                        "Peers penalised for bad DHT answers, by reason.",
                                        labels=["reason"])
        for reason in sorted(dht.penalties):
            penalties.add_metric([reason], dht.penalties[reason])
        return [latency, penalties]
