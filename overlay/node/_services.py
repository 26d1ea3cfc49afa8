"""The node's services besides its connections: the peering driver (the peer manager and its
SQLite store), PEX (``overlay.node._pex``), the admin API and the Prometheus endpoint.

Theory of operation
-------------------
A :class:`NodeServices` belongs to one :class:`~overlay.Node`, which drives it:

1. :meth:`NodeServices.open`, as the node starts and before any listener is bound: opens the
   peer store (``HOME/data_dir/peers.sqlite``, the directory created with mode 0700; a node
   without a home keeps its peers in memory) and builds the :class:`Peering` driver, which
   from then on gates and admits inbound connections and observes every peer, and the
   :class:`~overlay.node._pex.Pex` driver (it opens the PEX channel, so every hello lists it).
2. :meth:`NodeServices.run`, once the listeners are bound: runs the driver, PEX, the admin API (a
   node with a home only: its token and ``admin.json`` are files there) and the metrics
   endpoint (when ``[metrics] enabled``) in its own task group, and reports ready.
3. :meth:`NodeServices.withdraw`, first thing at shutdown: removes ``admin.json`` so the CLI no
   longer finds a stopping node. The node then closes its connections (peers are told
   ``shutdown`` while the driver still observes them) and only then cancels :meth:`run`: the
   driver writes its last changes to the store and closes it; admin and metrics stop.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from overlay._version import __version__
from overlay.connection._observer import Observer
from overlay.errors import ConfigError, LocalProtocolError
from overlay.node._control import ControlledNode, NodeControl
from overlay.node._discovery import DiscoveryState
from overlay.node._peering import Dialer, Peering
from overlay.node._pex import Pex
from overlay.node._routing import NodeRouting
from overlay.node._traffic import TrafficTotals, channel_loads
from overlay.transport import Transport

if TYPE_CHECKING:
    from overlay.operator._metrics import DhtSnapshot, MetricsSnapshot, NodeMetrics

__all__ = ["NodeServices", "PEER_STORE_FILE", "ServedNode", "private_directory"]

log = logging.getLogger("overlay.service")

PEER_STORE_FILE = "peers.sqlite"
"""The peer store's file name in ``data_dir``."""


class ServedNode(ControlledNode, Protocol):
    """What the services need of the node (the :class:`~overlay.Node` provides it)."""

    @property
    def transports(self) -> tuple[Transport, ...]: ...

    @property
    def retired_traffic(self) -> TrafficTotals: ...

    @property
    def dial_outcome(self) -> Dialer: ...

    @property
    def routing(self) -> NodeRouting: ...

    @property
    def discovery(self) -> DiscoveryState: ...

    @property
    def observer(self) -> Observer: ...

    @property
    def wall_clock(self) -> Callable[[], float]: ...


def private_directory(path: Path, key: str = "data_dir") -> None:
    """Create ``path`` with mode 0700, or tighten an existing one readable by others."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("directory %s had mode %o; setting 0700", path, mode)
            path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(key, f"cannot create {path}: {exc}") from exc


class NodeServices:
    """The peering driver, admin API and metrics endpoint of one node (module docstring)."""

    def __init__(self, node: ServedNode, *, home: Path | None,
                 metrics: NodeMetrics | None) -> None:
        self._node = node
        self._home = home
        self.metrics = metrics
        self._peering: Peering | None = None
        self._control: NodeControl | None = None
        self._pex: Pex | None = None
        self._admin_serving = False
        self._extra: list[Callable[..., Coroutine[Any, Any, Any]]] = []

    def add(self, service: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        """Run ``service(task_status=...)`` with the others (before the peering driver, so it
        is ready when the first peers connect)."""
        self._extra.append(service)

    @property
    def peering(self) -> Peering:
        if self._peering is None:
            raise LocalProtocolError("the node is not running (its peer manager starts with it)")
        return self._peering

    @property
    def control(self) -> NodeControl:
        if self._control is None:
            raise LocalProtocolError("the node is not running (its control starts with it)")
        return self._control

    @property
    def pex(self) -> Pex:
        if self._pex is None:
            raise LocalProtocolError(
                "PEX is not running (it starts with the node; [discovery] pex_enabled)"
            )
        return self._pex

    @property
    def observers(self) -> tuple[Observer, ...]:
        """The services that observe the node's peers (after :meth:`open`)."""
        return tuple(o for o in (self._peering, self._pex) if o is not None)

    @property
    def started(self) -> bool:
        return self._peering is not None

    def open(self) -> Peering:
        """Open the store (if the node has a home) and build the peering driver."""
        node, config = self._node, self._node.config
        store_path: Path | None = None
        if self._home is not None:
            data_dir = self._home / config.data_dir
            private_directory(data_dir)
            store_path = data_dir / PEER_STORE_FILE
        peering = Peering(config.peers, node.node_id, router=node.router,
                          dial=node.dial_outcome, store_path=store_path, metrics=self.metrics,
                          wall_clock=node.wall_clock)
        self._peering = peering
        self._control = NodeControl(node, peering)
        if config.discovery.pex_enabled:
            self._pex = Pex(node, peering)  # opens the PEX channel before the first hello
        return peering

    def close_store(self) -> None:
        """Close the store when :meth:`run` never ran (a failed start)."""
        if self._peering is not None:
            self._peering.close_store()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run the driver, admin API and metrics endpoint until cancelled."""
        peering, control = self.peering, self.control
        async with anyio.create_task_group() as tg:
            for service in self._extra:
                await tg.start(service)
            await tg.start(peering.run)
            await tg.start(self._node.routing.run)
            if self._pex is not None:
                await tg.start(self._pex.run)
            try:
                await self._serve_operator(tg, control)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self.withdraw()  # also when a later step (the metrics endpoint) failed

    async def _serve_operator(self, tg: anyio.abc.TaskGroup, control: NodeControl) -> None:
        """Start the admin API (a node with a home) and the metrics endpoint, if enabled."""
        config, home = self._node.config, self._home
        if config.admin.enabled and home is not None:
            from overlay.operator._admin import load_or_create_token, serve_admin, write_admin_info

            token = load_or_create_token(home / config.admin.token_file)
            unix = home / config.admin.unix_socket if config.admin.unix_socket else None
            where = await tg.start(
                lambda task_status: serve_admin(
                    control, listen=config.admin.listen, unix_socket=unix, token=token,
                    task_status=task_status, observer=self._node.observer,
                )
            )
            self._admin_serving = True
            write_admin_info(home, where, token_file=home / config.admin.token_file)
            control.admin_url = where
            log.info("admin API on %s", where)
        metrics = self.metrics
        if metrics is not None:
            from overlay.operator._metrics import serve_metrics

            metrics.set_node_info(node_id=self._node.node_id, network=config.network,
                                  version=__version__)
            metrics.set_snapshot_source(self.metrics_snapshot)
            control.metrics_url = await tg.start(
                lambda task_status: serve_metrics(
                    metrics, listen=config.metrics.listen, task_status=task_status,
                    observer=self._node.observer,
                )
            )
            log.info("metrics on %s/metrics", control.metrics_url)

    def withdraw(self) -> None:
        """Remove ``admin.json`` (idempotent): the CLI no longer finds this node."""
        if self._admin_serving and self._home is not None:
            from overlay.operator._admin import remove_admin_info

            remove_admin_info(self._home)
            self._admin_serving = False

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Scrape-time values for the metrics collector (totals include closed connections)."""
        from overlay.operator._metrics import ChannelSnapshot, MetricsSnapshot, TargetSnapshot

        node = self._node
        stats = self.peering.manager.statistics()
        transports = [t.statistics() for t in node.transports]
        names = {s.id: s.name for s in node.router.channel_specs()}
        live = [conn.core.statistics() for conn in node.router.peers()]
        totals = node.retired_traffic.plus_all(live)
        loads = channel_loads(live)
        channels: dict[str, ChannelSnapshot] = {}
        for cid, traffic in totals.channels.items():
            load = loads.get(cid)
            channels[names.get(cid, str(cid))] = ChannelSnapshot(
                bytes_sent=traffic.bytes_sent,
                bytes_received=traffic.bytes_received,
                messages_sent=traffic.messages_sent,
                messages_received=traffic.messages_received,
                messages_dropped=traffic.messages_dropped,
                queue_depth_sum=load.queue_depth_sum if load else 0,
                queue_depth_max=load.queue_depth_max if load else 0,
                outbound_requests_in_flight=load.outbound_requests_in_flight if load else 0,
                inbound_requests_in_flight=load.inbound_requests_in_flight if load else 0,
            )
        refused: dict[str, Any] = {
            "gate": sum(t.rejected_by_gate for t in transports),
            "per_ip": sum(t.rejected_per_ip for t in transports),
            "per_netgroup": sum(t.rejected_per_netgroup for t in transports),
            "overload": sum(t.rejected_overload for t in transports),
        }
        return MetricsSnapshot(
            peers_inbound=stats.connected_inbound,
            peers_outbound=stats.connected_outbound,
            known_peers=stats.known_peers,
            dialing_peers=stats.dialing,
            banned_peers=stats.banned_peers,
            banned_ips=stats.banned_ips,
            address_book_new=stats.address_book_new,
            address_book_tried=stats.address_book_tried,
            wire_bytes_sent=totals.wire_bytes_sent,
            wire_bytes_received=totals.wire_bytes_received,
            channels=channels,
            pending_handshakes=sum(t.pending_handshakes for t in transports),
            inbound_accepted=sum(t.accepted for t in transports),
            inbound_refused=refused,
            pending_evictions=sum(t.evicted_handshakes for t in transports),
            targets={
                s.capability: TargetSnapshot(connected=s.connected, required=s.required,
                                             deficit=s.deficit, attainable=s.attainable)
                for s in node.routing.statuses()
            },
            record_seq=node.capabilities.record.seq if node.capabilities.record else 0,
            capability_peers=node.discovery.peers.capability_counts(),
            dht=self._dht_snapshot(),
        )

    def _dht_snapshot(self) -> DhtSnapshot:
        from discovery import LATENCY_BUCKETS
        from overlay.operator._metrics import DhtSnapshot

        dht = self._node.dht
        if dht is None or not dht.running:
            return DhtSnapshot()
        stats = dht.statistics()
        transient = dht.transient.statistics()
        return DhtSnapshot(
            lookups_succeeded=stats.lookups_succeeded,
            lookups_failed=stats.lookups - stats.lookups_succeeded,
            lookup_rounds=stats.lookup_rounds,
            lookup_messages=stats.lookup_messages,
            latency_buckets=LATENCY_BUCKETS,
            latency_counts=stats.lookup_latency,
            latency_sum=stats.lookup_latency_sum,
            provider_records=stats.provider_records,
            routing_table=stats.table_size,
            requests_served=stats.requests_served,
            rate_limited=dht.rate_limited,
            penalties={p.value: n for p, n in stats.penalties.items()},
            transient_outbound=transient.outbound,
            transient_inbound=transient.inbound,
            transient_idle_closed=transient.idle_closed,
        )
