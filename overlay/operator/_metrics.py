"""Prometheus metrics of a node, and the ``/metrics`` endpoint.

Theory of operation
-------------------
:class:`NodeMetrics` owns a private :class:`prometheus_client.CollectorRegistry` (never the
global one, so several nodes can live in one process). It has two kinds of instruments:

* **event-time** counters and histograms, declared in :data:`_INSTRUMENTS` and updated by the
  node as things happen through the methods :meth:`~NodeMetrics.dial_attempted`,
  :meth:`~NodeMetrics.dial_failed`, ... (or through :class:`MetricsObserver`, an
  :class:`~overlay.connection._observer.Observer` that forwards to them);
* **scrape-time** values read from a callback ``snapshot() -> MetricsSnapshot`` when Prometheus
  scrapes (peer counts, per-channel traffic totals, queue depths, in-flight requests, address
  book and ban sizes): see :mod:`overlay.operator._snapshot`. The callback must be cheap and
  must not block; it runs on the event loop.

Names follow the Prometheus conventions: ``<namespace>_`` prefix, base units (``_seconds``,
``_bytes``), ``_total`` on counters, labels rather than name variants. docs/operator-guide.md
("Metrics") lists every family with its type and labels; a test compares it with a scrape.

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
manager decides (automatic bans included). Handshake failures come from the node; task failures
(a bug caught at a task root, :class:`~overlay.connection._observer.TaskRoot`) from every task
root through the observer.

Cardinality is bounded: there is no per-peer label. Queue depth is exported per channel as the
sum over peers plus the deepest single peer queue. Label values are capped at
:data:`MAX_LABEL_VALUES` distinct values per label of a metric (``channel`` and ``capability``
share one cap across metrics); later new values are counted under ``other``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from overlay.connection._observer import Observer, TaskRoot
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
from overlay.operator._snapshot import (
    MAX_LABEL_VALUES,
    ChannelSnapshot,
    DhtSnapshot,
    MetricsSnapshot,
    SnapshotCollector,
    SnapshotSource,
    TargetSnapshot,
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
    "TargetSnapshot",
    "serve_metrics",
]

log = logging.getLogger("overlay.metrics")

DEFAULT_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Histogram buckets of request durations, in seconds."""

_NAMESPACE_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

_SHARED_CAPS = frozenset({"channel", "capability"})
"""Labels whose values share one cap across metrics (one set of channels, of capabilities)."""


@dataclass(frozen=True, slots=True)
class _Instrument:
    """One event-time metric family."""

    name: str
    """Without the namespace, nor ``_total`` for a counter (prometheus_client adds it)."""
    doc: str
    labels: tuple[str, ...] = ()
    histogram: bool = False
    buckets: tuple[float, ...] = ()
    """A histogram's buckets; empty: the node's latency buckets."""
    preset: tuple[tuple[str, ...], ...] = ()
    """Label values exported (at zero) before anything is counted."""


_INSTRUMENTS: tuple[_Instrument, ...] = (
    _Instrument("dials", "Outbound dials started (peer manager or operator)."),
    _Instrument("dial_failures", "Failed dials by reason.", ("reason",)),
    _Instrument("handshake_failures", "Failed connection set-ups (Noise handshake or hello) "
                "by direction and reason.", ("direction", "reason")),
    _Instrument("peer_evictions", "Peers evicted to make room."),
    _Instrument("peer_disconnects", "Connections closed by the peer manager or the operator, "
                "by reason.", ("reason",)),
    _Instrument("bans", "Bans imposed, by kind (peer or ip).", ("kind",),
                preset=(("peer",), ("ip",))),
    _Instrument("request_duration_seconds", "Duration of outbound requests per channel.",
                ("channel",), histogram=True),
    _Instrument("requests", "Outbound requests finished, by channel and outcome.",
                ("channel", "outcome")),
    _Instrument("served_request_duration_seconds", "Duration of serving inbound requests per "
                "channel.", ("channel",), histogram=True),
    _Instrument("served_requests", "Inbound requests finished, by channel and outcome.",
                ("channel", "outcome")),
    _Instrument("slow_peer_events", "Sends that timed out waiting for a peer's queue.",
                ("channel",)),
    _Instrument("invalid_messages", "Messages from peers that did not decode or validate.",
                ("channel",)),
    _Instrument("role_request_duration_seconds", "Duration of role requests (all attempts, "
                "hedges included) per capability.", ("capability",), histogram=True),
    _Instrument("role_requests", "Role requests by capability and outcome (ok, or the failure "
                "reason: none_known, none_reachable, all_failed, deadline).",
                ("capability", "outcome")),
    _Instrument("role_hedges", "Hedged attempts started by role requests (the extra load).",
                ("capability",)),
    _Instrument("role_winner_attempt", "Attempt number of the peer that answered a role "
                "request (1: the first asked).", ("capability",), histogram=True,
                buckets=(1, 2, 3, 4, 5)),
    _Instrument("records_received", "Peers' capability records received, by entry point.",
                ("entry",)),
    _Instrument("records_rejected", "Peers' capability records refused, by entry point and "
                "reason.", ("entry", "reason")),
    _Instrument("pex_requests_sent", "PEX requests this node sent, by outcome.", ("outcome",)),
    _Instrument("pex_requests_served", "PEX requests from peers, served or refused by rate "
                "limit.", ("verdict",), preset=(("served",), ("rate_limited",))),
    _Instrument("pex_records_received", "Records received in PEX answers."),
    _Instrument("pex_records_accepted", "PEX records verified and stored in the record store."),
    _Instrument("pex_records_rejected", "PEX records not stored, by reason.", ("reason",)),
    _Instrument("pex_penalties", "Peers penalised for the records they handed over, by "
                "reason.", ("reason",)),
    _Instrument("task_failures", "Bugs caught at a task root (logged with a traceback; the "
                "node went on), by task.", ("task",),
                preset=tuple((task.value,) for task in TaskRoot)),
)
"""Every event-time family, declared once; the methods of :class:`NodeMetrics` name them."""


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


class NodeMetrics:
    """A node's metrics in its own registry (docs/operator-guide.md lists the names)."""

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
        self._collector = SnapshotCollector(namespace)
        self._collector.source = snapshot
        reg.register(self._collector)
        shared = {label: _LabelCap() for label in _SHARED_CAPS}
        self._caps: dict[str, tuple[_LabelCap, ...]] = {}
        """Per metric, the cap of each of its labels."""
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        for spec in _INSTRUMENTS:
            self._caps[spec.name] = tuple(shared.get(label) or _LabelCap()
                                          for label in spec.labels)
            if spec.histogram:
                self._histograms[spec.name] = Histogram(
                    spec.name, spec.doc, spec.labels, namespace=namespace, registry=reg,
                    buckets=spec.buckets or latency_buckets,
                )
            else:
                counter = self._counters[spec.name] = Counter(
                    spec.name, spec.doc, spec.labels, namespace=namespace, registry=reg
                )
                for values in spec.preset:
                    counter.labels(*self._capped(spec.name, values))
        self._info = Info("node", "Identity of this node.", namespace=namespace, registry=reg)

    def _capped(self, metric: str, values: tuple[str, ...]) -> list[str]:
        return [cap(str(value)) for cap, value in zip(self._caps[metric], values, strict=True)]

    def _inc(self, metric: str, *values: str, amount: float = 1.0) -> None:
        counter = self._counters[metric]
        (counter.labels(*self._capped(metric, values)) if values else counter).inc(amount)

    def _observe(self, metric: str, seconds: float, *values: str) -> None:
        """Observe a duration (a NaN or infinite one is dropped, a negative one is 0)."""
        if math.isfinite(seconds):
            self._histograms[metric].labels(*self._capped(metric, values)).observe(
                max(0.0, seconds)
            )

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
        self._inc("dials")

    def dial_failed(self, reason: str) -> None:
        """A dial failed; ``reason`` is a short machine code (``refused``, ``timeout``, ...)."""
        self._inc("dial_failures", reason)

    def handshake_failed(self, direction: Direction, reason: HandshakeFailureReason) -> None:
        """A connection set-up failed."""
        self._inc("handshake_failures", direction.value, reason.value)

    def peer_evicted(self) -> None:
        """A peer was disconnected to make room for a better one."""
        self._inc("peer_evictions")

    def peer_disconnected(self, reason: str) -> None:
        """We closed a connection on the peer manager's or the operator's decision; ``reason``
        is the manager's code (``evicted``, ``banned``, ``low_score``, ``operator``...)."""
        self._inc("peer_disconnects", reason)

    def peer_banned(self, kind: str) -> None:
        """A ban was imposed; ``kind`` is ``peer`` or ``ip``."""
        self._inc("bans", kind)

    def request_observed(self, channel: str, seconds: float, outcome: str) -> None:
        """An attempt of an outbound request finished after ``seconds`` with ``outcome`` (an
        :class:`~overlay.connection._outcome.AttemptOutcome` value: ``ok``, ``timeout``,
        ``refused``, ``error``, ``closed``)."""
        self._observe("request_duration_seconds", seconds, channel)
        self._inc("requests", channel, outcome)

    def request_served(self, channel: str, seconds: float, outcome: str) -> None:
        """An inbound request was answered (or cancelled) after ``seconds``."""
        self._observe("served_request_duration_seconds", seconds, channel)
        self._inc("served_requests", channel, outcome)

    def slow_peer(self, channel: str) -> None:
        """A send on ``channel`` timed out waiting for a peer's queue space."""
        self._inc("slow_peer_events", channel)

    def invalid_message(self, channel: str) -> None:
        """A peer sent an invalid message on ``channel``."""
        self._inc("invalid_messages", channel)

    def role_request_done(self, capability: str, seconds: float, *,
                          winner_attempt: int | None, failure: str | None,
                          hedges: int) -> None:
        """A role request ended: answered by attempt ``winner_attempt``, or failed with
        ``failure`` (a ``RoleFailure`` value); ``hedges`` attempts were started by the hedge
        delay."""
        self._observe("role_request_duration_seconds", seconds, capability)
        self._inc("role_requests", capability, "ok" if failure is None else failure)
        if hedges:
            self._inc("role_hedges", capability, amount=hedges)
        if winner_attempt is not None:
            self._observe("role_winner_attempt", winner_attempt, capability)

    def record_received(self, entry: str) -> None:
        """A peer presented a new capability record at ``entry`` (``handshake``, ``update``)."""
        self._inc("records_received", entry)

    def record_rejected(self, entry: str, reason: str) -> None:
        """A peer's record was refused at ``entry`` for ``reason`` (a ``RecordRejection``
        value: ``bad_signature``, ``expired``, ``stale_seq``...)."""
        self._inc("records_rejected", entry, reason)

    def pex_request_sent(self, outcome: str) -> None:
        """A PEX request this node sent ended: ``answered``, ``refused`` or ``failed``."""
        self._inc("pex_requests_sent", outcome)

    def pex_request_served(self, verdict: str) -> None:
        """A peer's PEX request was ``served`` or refused (``rate_limited``)."""
        self._inc("pex_requests_served", verdict)

    def pex_records(self, *, received: int, accepted: int) -> None:
        """One PEX answer was taken in: ``received`` records, ``accepted`` of them stored."""
        self._inc("pex_records_received", amount=received)
        self._inc("pex_records_accepted", amount=accepted)

    def pex_record_rejected(self, reason: str) -> None:
        """A PEX record was not stored (a verification or record-store reason)."""
        self._inc("pex_records_rejected", reason)

    def pex_penalty(self, reason: str) -> None:
        """A peer was penalised for the records it handed over (a ``Penalty`` value)."""
        self._inc("pex_penalties", reason)

    def task_failed(self, task: TaskRoot) -> None:
        """A bug was caught (and logged) at the task root ``task``."""
        self._inc("task_failures", task.value)

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

    def on_task_failed(self, task: TaskRoot) -> None:
        self.metrics.task_failed(task)


async def serve_metrics(
    metrics: NodeMetrics,
    *,
    listen: str,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    config: HttpServerConfig | None = None,
    observer: Observer | None = None,
) -> None:
    """Serve ``GET /metrics`` on ``listen`` (``HOST:PORT``, port 0 allowed) until cancelled
    (``observer``: see :func:`~overlay.operator._http.serve_http`).

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
        await serve_http(handler, listener, config, observer=observer)
