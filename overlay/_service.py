"""Run a node as a service (``overlay start``): the node, the peering driver with its SQLite
store, the admin API and (optionally) the Prometheus endpoint — and the :class:`NodeControl`
through which operators act on all of them while it runs."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import logging
from pathlib import Path
from typing import Any

import anyio

from overlay import __version__
from overlay._control import UnknownPeerError
from overlay._observer import MultiObserver, Observer
from overlay._peering import Peering, wall_clock
from overlay.address import NodeAddress
from overlay.config import NodeConfig
from overlay.errors import InvalidAddressError
from overlay.identity import NodeId, parse_node_id
from overlay.node import Node
from overlay.peers import PeerFlag, PeerSnapshot

__all__ = ["NodeControl", "jsonable", "run_node"]

log = logging.getLogger("overlay.service")


def jsonable(value: Any) -> Any:
    """Plain JSON data from dataclasses, enums, addresses, sets and mappings."""
    if isinstance(value, NodeAddress):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


class NodeControl:
    """Implements :class:`overlay._control.Control` on a running node and its peering."""

    def __init__(self, node: Node, peering: Peering) -> None:
        self.node = node
        self.peering = peering
        self.started = wall_clock()
        self.admin_url: str | None = None
        """Where the admin API listens (``http://HOST:PORT`` / ``unix:PATH``), once serving."""
        self.metrics_url: str | None = None
        """``http://HOST:PORT`` of the Prometheus endpoint (``/metrics``), once serving."""

    def _now(self) -> float:
        return wall_clock()

    def status(self) -> dict[str, Any]:
        stats = self.peering.manager.statistics()
        conns = self.node.router.peers()
        return {
            "node_id": self.node.node_id,
            "network": self.node.config.network,
            "moniker": self.node.config.moniker,
            "version": __version__,
            "listen_addresses": [str(a) for a in self.node.listen_addresses],
            "uptime_seconds": round(self._now() - self.started, 3),
            "peers": {
                "connected": len(conns),
                "inbound": sum(1 for c in conns if not c.outbound),
                "outbound": sum(1 for c in conns if c.outbound),
                "known": stats.known_peers,
                "banned_peers": stats.banned_peers,
                "banned_ips": stats.banned_ips,
            },
            "channels": [
                {"id": s.id, "name": s.name} for s in self.node.router.channel_specs()
            ],
            "peer_manager": jsonable(stats),
            "handshake_failures": dict(self.node.handshake_failures),
        }

    def peers(self) -> list[dict[str, Any]]:
        now = self._now()
        names = {s.id: s.name for s in self.node.router.channel_specs()}
        result: dict[str, dict[str, Any]] = {}
        for snap in self.peering.manager.snapshot(now):
            result[snap.node_id] = _snapshot_dict(snap, now)
        for conn in self.node.router.peers():
            entry = result.setdefault(conn.node_id, {"id": conn.node_id})
            stats = jsonable(conn.core.statistics())
            if isinstance(stats, dict) and "channels" in stats:
                channels = stats["channels"]
                if isinstance(channels, dict):
                    stats["channels"] = {
                        names.get(int(k), str(k)): v for k, v in channels.items()
                    }
            entry.update(
                {
                    "connected": True,
                    "direction": "outbound" if conn.outbound else "inbound",
                    "remote_address": conn.remote_address,
                    "uptime_seconds": round(now - conn.connected_at, 3),
                    "moniker": conn.info.moniker,
                    "software_version": conn.info.software_version,
                    "listen_addrs": list(conn.info.listen_addrs),
                    "channels_advertised": list(conn.info.channels),
                    "capabilities": {},
                    "connection": stats,
                }
            )
        return sorted(result.values(), key=lambda p: (not p.get("connected", False), p["id"]))

    async def dial(self, address: str, *, persistent: bool) -> dict[str, Any]:
        addr = NodeAddress.parse(address)
        decision = self.peering.manager.dial_now(
            addr, persistent=persistent, now=self._now(), execute=False
        )
        if not decision.accepted:
            raise InvalidAddressError(f"cannot dial {addr}: {decision.reason}")
        if decision.reason == "connected":  # nothing to dial (persistent may have changed)
            self.peering.wake()
            return {"connected": addr.node_id, "persistent": persistent}
        # Counted, reported to the manager, and re-raised on failure by the peering driver.
        peer = await self.peering.dial(addr)
        return {"connected": peer, "persistent": persistent}

    async def disconnect(self, node_id: str) -> dict[str, Any]:
        peer = parse_node_id(node_id)
        if self.node.router.get_peer(peer) is None:
            raise UnknownPeerError(f"peer {peer} is not connected")
        self.peering.manager.disconnect_peer(peer, self._now())
        if await self.node.disconnect(peer, "disconnected by operator") and (
            self.peering.metrics is not None
        ):
            self.peering.metrics.peer_disconnected("operator")
        self.peering.wake()
        return {"disconnected": peer}

    def _target(self, target: str) -> tuple[str, NodeId | str]:
        try:
            return "peer", parse_node_id(target)
        except InvalidAddressError:
            pass
        try:
            return "ip", str(ipaddress.ip_address(target.strip()))
        except ValueError:
            raise InvalidAddressError(
                f"{target!r} is neither a node id (40 hex characters) nor an IP address"
            ) from None

    async def ban(self, target: str, *, duration: float | None) -> dict[str, Any]:
        kind, value = self._target(target)
        if duration is not None and not duration > 0:
            raise InvalidAddressError("ban duration must be positive")
        seconds = duration if duration is not None else self.node.config.peers.ban_duration
        now = self._now()
        manager = self.peering.manager
        if kind == "peer":
            manager.ban_peer(NodeId(value), now + seconds, "operator", now)
        else:
            manager.ban_ip(value, now + seconds, "operator", now)
        self.peering.sync_metrics()  # counts the ban at once
        self.peering.wake()  # disconnects the banned peers
        return {"banned": value, "kind": kind, "seconds": seconds}

    async def unban(self, target: str) -> dict[str, Any]:
        kind, value = self._target(target)
        manager = self.peering.manager
        now = self._now()
        lifted = (manager.unban_peer(NodeId(value), now) if kind == "peer"
                  else manager.unban_ip(value, now))
        if not lifted:
            raise UnknownPeerError(f"{value} is not banned")
        self.peering.wake()
        return {"unbanned": value, "kind": kind}

    async def add_seed(self, address: str) -> dict[str, Any]:
        addr = NodeAddress.parse(address)
        self.peering.manager.add_seed(addr, self._now())
        self.peering.wake()
        return {"seed": str(addr)}


def _snapshot_dict(snap: PeerSnapshot, now: float) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(snap)
    data["id"] = data.pop("node_id")
    data["connected"] = False
    data["persistent"] = PeerFlag.PERSISTENT in snap.flags
    if snap.ban_until is not None:
        data["ban_remaining_seconds"] = round(max(0.0, snap.ban_until - now), 3)
    return data


async def run_node(config: NodeConfig, home: Path, *, observers: tuple[Observer, ...] = (),
                   task_status: anyio.abc.TaskStatus[NodeControl] = anyio.TASK_STATUS_IGNORED,
                   ) -> None:
    """Run until cancelled (the CLI cancels on SIGINT/SIGTERM)."""
    from overlay._admin import (
        load_or_create_token,
        remove_admin_info,
        serve_admin,
        write_admin_info,
    )
    from overlay._metrics import NodeMetrics, serve_metrics

    data_dir = home / config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    metrics = NodeMetrics(namespace=config.metrics.namespace) if config.metrics.enabled else None
    multi = MultiObserver()
    node = Node(config, home=home, observer=multi)
    peering = Peering(node, store_path=data_dir / "peers.sqlite", metrics=metrics)
    parts: list[Observer] = [peering, *observers]
    if metrics is not None:
        from overlay._metrics import MetricsObserver

        parts.append(MetricsObserver(metrics))
    multi.set(*parts)
    async with node, anyio.create_task_group() as tg:
        await tg.start(peering.run)
        control = NodeControl(node, peering)
        if config.admin.enabled:
            token = load_or_create_token(home / config.admin.token_file)
            unix = home / config.admin.unix_socket if config.admin.unix_socket else None
            where = await tg.start(
                lambda task_status: serve_admin(
                    control, listen=config.admin.listen, unix_socket=unix, token=token,
                    task_status=task_status,
                )
            )
            write_admin_info(home, where, token_file=home / config.admin.token_file)
            control.admin_url = where
            log.info("admin API on %s", where)
        if metrics is not None:
            metrics.set_node_info(node_id=node.node_id, network=config.network,
                                  version=__version__)
            metrics.set_snapshot_source(lambda: metrics_snapshot(node, peering))
            control.metrics_url = await tg.start(
                lambda task_status: serve_metrics(
                    metrics, listen=config.metrics.listen, task_status=task_status
                )
            )
            log.info("metrics on %s/metrics", control.metrics_url)
        log.info("node %s started; listening on %s", node.node_id,
                 ", ".join(str(a) for a in node.listen_addresses))
        task_status.started(control)
        try:
            await anyio.sleep_forever()
        finally:
            if config.admin.enabled:
                remove_admin_info(home)


def metrics_snapshot(node: Node, peering: Peering) -> Any:
    """Scrape-time values for the metrics collector (totals include closed connections)."""
    from overlay._metrics import ChannelSnapshot, MetricsSnapshot

    stats = peering.manager.statistics()
    names = {s.id: s.name for s in node.router.channel_specs()}
    totals: dict[int, list[int]] = {cid: list(v) for cid, v in node.retired_totals.items()}
    depth_max: dict[int, int] = {}
    wire_out = node.retired_wire[0]
    wire_in = node.retired_wire[1]
    for conn in node.router.peers():
        cstats = conn.core.statistics()
        wire_out += cstats.bytes_out
        wire_in += cstats.bytes_in
        for ch in cstats.channels:
            t = totals.setdefault(ch.channel_id, [0] * 9)
            for i, value in enumerate(_channel_values(ch)):
                t[i] += value
            depth_max[ch.channel_id] = max(depth_max.get(ch.channel_id, 0), ch.queue_depth)
    channels = {
        names.get(cid, str(cid)): ChannelSnapshot(
            bytes_sent=t[0], bytes_received=t[1], messages_sent=t[2], messages_received=t[3],
            messages_dropped=t[4], queue_depth_sum=t[5], queue_depth_max=depth_max.get(cid, 0),
            outbound_requests_in_flight=t[6], inbound_requests_in_flight=t[7],
        )
        for cid, t in totals.items()
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
        wire_bytes_sent=wire_out,
        wire_bytes_received=wire_in,
        channels=channels,
    )


def _channel_values(ch: Any) -> tuple[int, ...]:
    return (ch.bytes_sent, ch.bytes_received, ch.messages_sent, ch.messages_received,
            ch.messages_dropped, ch.queue_depth, ch.outbound_requests_in_flight,
            ch.inbound_requests_active, 0)
