"""Prometheus metrics of a node, and the ``/metrics`` endpoint.

Theory of operation
-------------------
:class:`NodeMetrics` owns a private :class:`prometheus_client.CollectorRegistry` (never the
global one, so several nodes can live in one process). It has two kinds of instruments:

* **event-time** counters and histograms, updated by the node as things happen through the
  methods :meth:`~NodeMetrics.dial_attempted`, :meth:`~NodeMetrics.dial_failed`, ... (or through
  :class:`MetricsObserver`, an :class:`~overlay.connection._observer.Observer` that forwards to
  them);
* **scrape-time** values read from a callback ``snapshot() -> MetricsSnapshot`` when Prometheus
  scrapes (peer counts, per-channel traffic totals, queue depths, in-flight requests, address
  book and ban sizes). The callback must be cheap and must not block; it runs on the event loop.

Names follow the Prometheus conventions: ``<namespace>_`` prefix, base units (``_seconds``,
``_bytes``), ``_total`` on counters, labels rather than name variants. With the default namespace
``overlay``:

=========================================================  =========  ============================
metric                                                     type       labels
=========================================================  =========  ============================
``overlay_connected_peers``                                gauge      direction (inbound/outbound)
``overlay_known_peers`` / ``overlay_dialing_peers``        gauge
``overlay_banned_peers`` / ``overlay_banned_ips``          gauge
``overlay_address_book_entries``                           gauge      table (new/tried)
``overlay_sent_bytes_total`` / ``..._received_bytes_total``  counter  channel
``overlay_sent_messages_total`` / ``..._received_messages_total``  counter  channel
``overlay_dropped_messages_total``                         counter    channel
``overlay_send_queue_messages``                            gauge      channel (sum over peers)
``overlay_send_queue_max_messages``                        gauge      channel (deepest peer)
``overlay_outbound_requests_in_flight``                    gauge      channel
``overlay_inbound_requests_in_flight``                     gauge      channel
``overlay_wire_sent_bytes_total`` / ``..._received_...``   counter    (all connections, framed)
``overlay_pending_handshakes``                             gauge      (inbound, all transports)
``overlay_inbound_accepted_total``                         counter
``overlay_inbound_refused_total``                          counter    reason (gate/per_ip/...)
``overlay_pending_handshake_evictions_total``              counter
``overlay_dials_total``                                    counter
``overlay_dial_failures_total``                            counter    reason
``overlay_handshake_failures_total``                       counter    direction, reason
``overlay_peer_evictions_total``                           counter
``overlay_peer_disconnects_total``                         counter    reason
``overlay_bans_total``                                     counter    kind (peer/ip)
``overlay_request_duration_seconds``                       histogram  channel (outbound requests)
``overlay_requests_total``                                 counter    channel, outcome
``overlay_served_request_duration_seconds``                histogram  channel (inbound requests)
``overlay_served_requests_total``                          counter    channel, outcome
``overlay_slow_peer_events_total``                         counter    channel
``overlay_invalid_messages_total``                         counter    channel
``overlay_node_info``                                      gauge (1)  node_id, network, version
``overlay_records_received_total``                         counter    entry (handshake/update)
``overlay_records_rejected_total``                         counter    entry, reason
``overlay_record_seq``                                     gauge      (our record's seq)
``overlay_capability_peers``                               gauge      capability, kind
``overlay_pex_requests_sent_total``                        counter    outcome
``overlay_pex_requests_served_total``                      counter    verdict (served/rate_limited)
``overlay_pex_records_received_total``                     counter
``overlay_pex_records_accepted_total``                     counter
``overlay_pex_records_rejected_total``                     counter    reason
``overlay_pex_penalties_total``                            counter    reason
=========================================================  =========  ============================

The PEX driver (``overlay.node._pex``) feeds the ``pex`` family: requests it sent by outcome
(``answered``, ``refused``, ``failed``), requests it served or refused by rate limit, records
received, stored, and rejected by reason (a ``RecordRejection`` value, or ``stale`` /
``source_limit`` / ``expired`` from the record store), and penalties by ``Penalty`` value.

The peering driver (``overlay.node._peering``) feeds the dial, eviction, disconnect and ban
counters:
every dial it or the operator starts, each failure by reason (``refused``, ``timeout``,
``authentication``, a peer's refusal reason such as ``too_many_peers``...), every connection it
closes for the peer manager or the operator by reason (``evicted``, ``upgrade``, ``banned``,
``ip_banned``, ``low_score``, ``feeler``, ``operator``...), and every eviction and ban the
manager decides (automatic bans included). Handshake failures come from the node.

Cardinality is bounded: there is no per-peer label. Queue depth is exported per channel as the
sum over peers plus the deepest single peer queue. Free-form label values (``reason``,
``outcome``, ``channel``, ``kind``) are capped at :data:`MAX_LABEL_VALUES` distinct values per
metric; later new values are counted under ``other``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from overlay.connection._observer import Observer
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import ConfigError
from overlay.identity import NodeId
from overlay.operator._http import (
    HttpServerConfig,
    Request,
    Response,
    open_http_listener,
    serve_http,
)
from overlay.transport._failures import Direction, HandshakeFailureReason

__all__ = [
    "ChannelSnapshot",
    "DEFAULT_LATENCY_BUCKETS",
    "DhtSnapshot",
    "MAX_LABEL_VALUES",
    "MetricsObserver",
    "MetricsSnapshot",
    "NodeMetrics",
    "serve_metrics",
]

log = logging.getLogger("overlay.metrics")

MAX_LABEL_VALUES = 64
"""Distinct values kept per free-form label of one metric; more are folded into ``other``."""

DEFAULT_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Histogram buckets of request durations, in seconds."""

_NAMESPACE_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


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
    record_seq: int = 0
    """The seq of this node's signed capability record (0 before the first is signed)."""
    capability_peers: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Per capability: connected peers whose record advertises it, and those of them that
    confirmed it by serving a request."""
    dht: DhtSnapshot = field(default_factory=lambda: DhtSnapshot())
    """The DHT's counters (all zero when the DHT is disabled or not running)."""


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


SnapshotSource = Callable[[], MetricsSnapshot]


class _LabelCap:
    """Caps the distinct values of one label of one metric at :data:`MAX_LABEL_VALUES`."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= MAX_LABEL_VALUES:
            return "other"
        self._seen.add(value)
        return value


class _SnapshotCollector(Collector):
    """Exports a :class:`MetricsSnapshot` at scrape time."""

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
        out: list[Metric] = []

        def gauge(name: str, doc: str, value: float) -> None:
            out.append(GaugeMetricFamily(f"{ns}_{name}", doc, value=value))

        def counter(name: str, doc: str, value: float) -> None:
            out.append(CounterMetricFamily(f"{ns}_{name}", doc, value=value))

        peers = GaugeMetricFamily(
            f"{ns}_connected_peers", "Connected peers by direction.", labels=["direction"]
        )
        peers.add_metric(["inbound"], snap.peers_inbound)
        peers.add_metric(["outbound"], snap.peers_outbound)
        out.append(peers)
        gauge("known_peers", "Peers known to the peer manager.", snap.known_peers)
        gauge("dialing_peers", "Dials in progress.", snap.dialing_peers)
        gauge("banned_peers", "Node ids currently banned.", snap.banned_peers)
        gauge("banned_ips", "IP addresses currently banned.", snap.banned_ips)
        book = GaugeMetricFamily(
            f"{ns}_address_book_entries", "Address book entries by table.", labels=["table"]
        )
        book.add_metric(["new"], snap.address_book_new)
        book.add_metric(["tried"], snap.address_book_tried)
        out.append(book)
        gauge("pending_handshakes", "Inbound connections in the Noise handshake now.",
              snap.pending_handshakes)
        counter("inbound_accepted_total", "Inbound connections that completed the handshake.",
                snap.inbound_accepted)
        refused = CounterMetricFamily(
            f"{ns}_inbound_refused_total",
            "Inbound connections closed at accept before any cryptography, by reason "
            "(gate: refused by the peer manager; per_ip, per_netgroup: that IP or netgroup "
            "already has its share of pending handshakes; overload: too many pending "
            "handshakes).",
            labels=["reason"],
        )
        for reason in ("gate", "per_ip", "per_netgroup", "overload"):
            refused.add_metric([reason], snap.inbound_refused.get(reason, 0))
        out.append(refused)
        counter("pending_handshake_evictions_total",
                "Pending inbound handshakes cut to admit a newcomer from a less represented "
                "netgroup.", snap.pending_evictions)
        counter("wire_sent_bytes_total", "Bytes written to all connections.",
                snap.wire_bytes_sent)
        counter("wire_received_bytes_total", "Bytes read from all connections.",
                snap.wire_bytes_received)

        per_channel: list[
            tuple[CounterMetricFamily | GaugeMetricFamily, Callable[[ChannelSnapshot], int]]
        ] = [
            (CounterMetricFamily(f"{ns}_sent_bytes_total", "Payload bytes sent per channel.",
                                 labels=["channel"]), lambda c: c.bytes_sent),
            (CounterMetricFamily(f"{ns}_received_bytes_total",
                                 "Payload bytes received per channel.", labels=["channel"]),
             lambda c: c.bytes_received),
            (CounterMetricFamily(f"{ns}_sent_messages_total", "Messages sent per channel.",
                                 labels=["channel"]), lambda c: c.messages_sent),
            (CounterMetricFamily(f"{ns}_received_messages_total",
                                 "Messages received per channel.", labels=["channel"]),
             lambda c: c.messages_received),
            (CounterMetricFamily(f"{ns}_dropped_messages_total",
                                 "Responses dropped per channel because no request was waiting "
                                 "for them.", labels=["channel"]),
             lambda c: c.messages_dropped),
            (GaugeMetricFamily(f"{ns}_send_queue_messages",
                               "Messages queued to send per channel, summed over peers.",
                               labels=["channel"]), lambda c: c.queue_depth_sum),
            (GaugeMetricFamily(f"{ns}_send_queue_max_messages",
                               "Messages queued to send in the deepest peer queue per channel.",
                               labels=["channel"]), lambda c: c.queue_depth_max),
            (GaugeMetricFamily(f"{ns}_outbound_requests_in_flight",
                               "Requests sent that await a response, per channel.",
                               labels=["channel"]), lambda c: c.outbound_requests_in_flight),
            (GaugeMetricFamily(f"{ns}_inbound_requests_in_flight",
                               "Requests from peers being served, per channel.",
                               labels=["channel"]), lambda c: c.inbound_requests_in_flight),
        ]
        for family, getter in per_channel:
            for name in sorted(snap.channels):
                family.add_metric([name], getter(snap.channels[name]))
            out.append(family)
        gauge("record_seq", "Sequence number of this node's signed capability record.",
              snap.record_seq)
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
        out.append(caps)
        self._dht_families(snap.dht, out)
        return out

    def _dht_families(self, dht: DhtSnapshot, out: list[Metric]) -> None:
        ns = self._ns
        lookups = CounterMetricFamily(f"{ns}_dht_lookups_total",
                                      "DHT lookups by result.", labels=["result"])
        lookups.add_metric(["succeeded"], dht.lookups_succeeded)
        lookups.add_metric(["failed"], dht.lookups_failed)
        out.append(lookups)
        out.append(CounterMetricFamily(f"{ns}_dht_lookup_rounds_total",
                                       "Rounds of all DHT lookups.", value=dht.lookup_rounds))
        out.append(CounterMetricFamily(f"{ns}_dht_lookup_messages_total",
                                       "Queries sent by all DHT lookups.",
                                       value=dht.lookup_messages))
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(dht.latency_buckets, dht.latency_counts, strict=False):
            running += count
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", sum(dht.latency_counts)))
        out.append(HistogramMetricFamily(f"{ns}_dht_lookup_seconds",
                                         "Duration of DHT lookups.", buckets=buckets,
                                         sum_value=dht.latency_sum))
        out.append(GaugeMetricFamily(f"{ns}_dht_provider_records",
                                     "Provider records held for other nodes.",
                                     value=dht.provider_records))
        out.append(GaugeMetricFamily(f"{ns}_dht_routing_table_contacts",
                                     "Contacts in the DHT routing table.",
                                     value=dht.routing_table))
        out.append(CounterMetricFamily(f"{ns}_dht_requests_served_total",
                                       "DHT requests answered.", value=dht.requests_served))
        out.append(CounterMetricFamily(f"{ns}_dht_rate_limited_total",
                                       "DHT requests refused by the per-peer rate limit.",
                                       value=dht.rate_limited))
        penalties = CounterMetricFamily(f"{ns}_dht_penalties_total",
                                        "Peers penalised for bad DHT answers, by reason.",
                                        labels=["reason"])
        for reason in sorted(dht.penalties):
            penalties.add_metric([reason], dht.penalties[reason])
        out.append(penalties)
        transient = GaugeMetricFamily(f"{ns}_dht_transient_connections",
                                      "Open transient (DHT-only) connections by direction.",
                                      labels=["direction"])
        transient.add_metric(["outbound"], dht.transient_outbound)
        transient.add_metric(["inbound"], dht.transient_inbound)
        out.append(transient)
        out.append(CounterMetricFamily(f"{ns}_dht_transient_idle_closed_total",
                                       "Transient connections closed after their idle grace.",
                                       value=dht.transient_idle_closed))


class NodeMetrics:
    """A node's metrics in its own registry (see the module docstring for the names)."""

    def __init__(
        self,
        namespace: str = "overlay",
        *,
        snapshot: SnapshotSource | None = None,
        latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        if not _NAMESPACE_RE.match(namespace):
            raise ConfigError(
                "metrics.namespace", f"must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}"
            )
        self.namespace = namespace
        self.registry = CollectorRegistry()
        """The registry to scrape (``generate_latest(metrics.registry)``)."""
        reg = self.registry
        self._caps: dict[str, _LabelCap] = {}
        self._collector = _SnapshotCollector(namespace)
        self._collector.source = snapshot
        reg.register(self._collector)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=namespace, registry=reg)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ("channel",), namespace=namespace, registry=reg,
                             buckets=latency_buckets)

        self._dials = counter("dials", "Outbound dials started (peer manager or operator).")
        self._dial_failures = counter("dial_failures", "Failed dials by reason.", ("reason",))
        self._handshake_failures = counter(
            "handshake_failures",
            "Failed connection set-ups (Noise handshake or hello) by direction and reason.",
            ("direction", "reason"),
        )
        self._evictions = counter("peer_evictions", "Peers evicted to make room.")
        self._disconnects = counter(
            "peer_disconnects",
            "Connections closed by the peer manager or the operator, by reason.",
            ("reason",),
        )
        self._bans = counter("bans", "Bans imposed, by kind (peer or ip).", ("kind",))
        for kind in ("peer", "ip"):
            self._bans.labels(self._cap("bans", kind))
        self._request_duration = histogram(
            "request_duration_seconds", "Duration of outbound requests per channel."
        )
        self._requests = counter(
            "requests", "Outbound requests finished, by channel and outcome.",
            ("channel", "outcome"),
        )
        self._served_duration = histogram(
            "served_request_duration_seconds", "Duration of serving inbound requests per channel."
        )
        self._served = counter(
            "served_requests", "Inbound requests finished, by channel and outcome.",
            ("channel", "outcome"),
        )
        self._slow = counter(
            "slow_peer_events", "Sends that timed out waiting for a peer's queue.", ("channel",)
        )
        self._invalid = counter(
            "invalid_messages", "Messages from peers that did not decode or validate.",
            ("channel",),
        )
        self._records_received = counter(
            "records_received", "Peers' capability records received, by entry point.",
            ("entry",),
        )
        self._records_rejected = counter(
            "records_rejected", "Peers' capability records refused, by entry point and reason.",
            ("entry", "reason"),
        )
        self._info = Info("node", "Identity of this node.", namespace=namespace, registry=reg)
        self._pex_sent = counter(
            "pex_requests_sent", "PEX requests this node sent, by outcome.", ("outcome",)
        )
        self._pex_served = counter(
            "pex_requests_served", "PEX requests from peers, served or refused by rate limit.",
            ("verdict",),
        )
        for verdict in ("served", "rate_limited"):
            self._pex_served.labels(verdict)
        self._pex_received = counter("pex_records_received", "Records received in PEX answers.")
        self._pex_accepted = counter(
            "pex_records_accepted", "PEX records verified and stored in the record store."
        )
        self._pex_rejected = counter(
            "pex_records_rejected", "PEX records not stored, by reason.", ("reason",)
        )
        self._pex_penalties = counter(
            "pex_penalties", "Peers penalised for the records they handed over, by reason.",
            ("reason",),
        )

    def _cap(self, metric: str, value: str) -> str:
        cap = self._caps.get(metric)
        if cap is None:
            cap = self._caps[metric] = _LabelCap()
        return cap(str(value))

    # -- scrape-time source -------------------------------------------------------------------

    def set_snapshot_source(self, snapshot: SnapshotSource | None) -> None:
        """Set (or clear) the callback read at scrape time."""
        self._collector.source = snapshot

    def set_node_info(self, *, node_id: str, network: str, version: str) -> None:
        """Export ``<ns>_node_info{node_id, network, version} 1``."""
        self._info.info({"node_id": node_id, "network": network, "version": version})

    # -- event-time instruments ---------------------------------------------------------------

    def dial_attempted(self) -> None:
        """An outbound dial started."""
        self._dials.inc()

    def dial_failed(self, reason: str) -> None:
        """A dial failed; ``reason`` is a short machine code (``refused``, ``timeout``, ...)."""
        self._dial_failures.labels(self._cap("dial_failures", reason)).inc()

    def handshake_failed(self, direction: Direction, reason: HandshakeFailureReason) -> None:
        """A connection set-up failed (labels from closed enums: no cap needed)."""
        self._handshake_failures.labels(direction.value, reason.value).inc()

    def peer_evicted(self) -> None:
        """A peer was disconnected to make room for a better one."""
        self._evictions.inc()

    def peer_disconnected(self, reason: str) -> None:
        """We closed a connection on the peer manager's or the operator's decision; ``reason``
        is the manager's code (``evicted``, ``banned``, ``low_score``, ``operator``...)."""
        self._disconnects.labels(self._cap("peer_disconnects", reason)).inc()

    def peer_banned(self, kind: str) -> None:
        """A ban was imposed; ``kind`` is ``peer`` or ``ip``."""
        self._bans.labels(self._cap("bans", kind)).inc()

    def request_observed(self, channel: str, seconds: float, outcome: str) -> None:
        """An attempt of an outbound request finished after ``seconds`` with ``outcome`` (an
        :class:`~overlay.connection._outcome.AttemptOutcome` value: ``ok``, ``timeout``,
        ``refused``, ``error``, ``closed``)."""
        channel = self._cap("channel", channel)
        if math.isfinite(seconds):
            self._request_duration.labels(channel).observe(max(0.0, seconds))
        self._requests.labels(channel, self._cap("requests", outcome)).inc()

    def request_served(self, channel: str, seconds: float, outcome: str) -> None:
        """An inbound request was answered (or cancelled) after ``seconds``."""
        channel = self._cap("channel", channel)
        if math.isfinite(seconds):
            self._served_duration.labels(channel).observe(max(0.0, seconds))
        self._served.labels(channel, self._cap("served_requests", outcome)).inc()

    def slow_peer(self, channel: str) -> None:
        """A send on ``channel`` timed out waiting for a peer's queue space."""
        self._slow.labels(self._cap("channel", channel)).inc()

    def invalid_message(self, channel: str) -> None:
        """A peer sent an invalid message on ``channel``."""
        self._invalid.labels(self._cap("channel", channel)).inc()

    def record_received(self, entry: str) -> None:
        """A peer presented a new capability record at ``entry`` (``handshake``, ``update``)."""
        self._records_received.labels(self._cap("records_received", entry)).inc()

    def record_rejected(self, entry: str, reason: str) -> None:
        """A peer's record was refused at ``entry`` for ``reason`` (a ``RecordRejection``
        value: ``bad_signature``, ``expired``, ``stale_seq``...)."""
        self._records_rejected.labels(
            self._cap("records_rejected", entry), self._cap("records_rejected_reason", reason)
        ).inc()
    def pex_request_sent(self, outcome: str) -> None:
        """A PEX request this node sent ended: ``answered``, ``refused`` or ``failed``."""
        self._pex_sent.labels(self._cap("pex_requests_sent", outcome)).inc()

    def pex_request_served(self, verdict: str) -> None:
        """A peer's PEX request was ``served`` or refused (``rate_limited``)."""
        self._pex_served.labels(self._cap("pex_requests_served", verdict)).inc()

    def pex_records(self, *, received: int, accepted: int) -> None:
        """One PEX answer was taken in: ``received`` records, ``accepted`` of them stored."""
        self._pex_received.inc(received)
        self._pex_accepted.inc(accepted)

    def pex_record_rejected(self, reason: str) -> None:
        """A PEX record was not stored (a verification or record-store reason)."""
        self._pex_rejected.labels(self._cap("pex_records_rejected", reason)).inc()

    def pex_penalty(self, reason: str) -> None:
        """A peer was penalised for the records it handed over (a ``Penalty`` value)."""
        self._pex_penalties.labels(self._cap("pex_penalties", reason)).inc()

    def render(self) -> bytes:
        """The text exposition format of every metric (what ``/metrics`` returns)."""
        return generate_latest(self.registry)


class MetricsObserver(Observer):
    """An :class:`~overlay.connection._observer.Observer` that feeds :class:`NodeMetrics`."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def on_slow_peer(self, peer: NodeId, channel: str) -> None:
        self.metrics.slow_peer(channel)

    def on_invalid_message(self, peer: NodeId, channel: str, reason: str) -> None:
        self.metrics.invalid_message(channel)

    def on_request_done(
        self, peer: NodeId, channel: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        self.metrics.request_observed(channel, seconds, outcome.value)

    def on_request_served(
        self, peer: NodeId, channel: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        self.metrics.request_served(channel, seconds, outcome.value)

    def on_handshake_failed(self, direction: Direction, reason: HandshakeFailureReason) -> None:
        self.metrics.handshake_failed(direction, reason)


async def serve_metrics(
    metrics: NodeMetrics,
    *,
    listen: str,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    config: HttpServerConfig | None = None,
) -> None:
    """Serve ``GET /metrics`` on ``listen`` (``HOST:PORT``, port 0 allowed) until cancelled.

    Reports ``http://HOST:PORT`` through ``task_status``; bind failures raise
    :class:`ConfigError` (key ``metrics.listen``).
    """

    async def handler(request: Request) -> Response:
        if request.path != "/metrics":
            return Response(404, b"not found; try /metrics\n", "text/plain; charset=utf-8")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"use GET\n", "text/plain; charset=utf-8", (("Allow", "GET"),))
        return Response(200, metrics.render(), CONTENT_TYPE_LATEST)

    listener, url = await open_http_listener(listen, key="metrics.listen")
    log.info("metrics listening on %s/metrics", url)
    async with listener:
        task_status.started(url)
        await serve_http(handler, listener, config)
