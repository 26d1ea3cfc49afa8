"""The operator's control surface of a running node: :class:`NodeControl` implements
:class:`overlay.operator._control.Control` (what the admin API calls) on a node and its
peering driver.

It sees the node through :class:`ControlledNode` (what it reads and does), so the node, which
owns it, is not imported here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any, Protocol

import anyio

from discovery import CapabilityInfo
from overlay._version import __version__
from overlay.address import NodeAddress
from overlay.errors import InvalidAddressError, LocalProtocolError
from overlay.identity import NodeId, parse_node_id
from overlay.node._dht import NodeDht
from overlay.node._discovery import DiscoveryState
from overlay.node._host import NodeBasics
from overlay.node._peering import Peering
from overlay.node._records import NodeCapabilities
from overlay.node._routing import NodeRouting
from overlay.operator._control import (
    MAX_BAN_SECONDS,
    MIN_BAN_SECONDS,
    ConflictError,
    PeerBannedError,
    UnknownCapabilityError,
    UnknownPeerError,
    UnknownTargetError,
    parse_ban_target,
    parse_capability,
)
from overlay.peers import OperatorPeer, PeerFlag, PeerSnapshot
from overlay.transport._failures import Direction, HandshakeFailureReason
from routing import parse_target_assignments

__all__ = ["ControlledNode", "NodeControl", "jsonable"]


class ControlledNode(NodeBasics, Protocol):
    """What :class:`NodeControl` needs of the node (the :class:`~overlay.Node` provides it)."""

    @property
    def listen_addresses(self) -> list[NodeAddress]: ...

    @property
    def advertised_addresses(self) -> list[NodeAddress]: ...

    @property
    def handshake_failures(self) -> Mapping[Direction, Mapping[HandshakeFailureReason, int]]: ...

    @property
    def capabilities(self) -> NodeCapabilities: ...

    @property
    def discovery(self) -> DiscoveryState: ...

    async def disconnect(self, node_id: NodeId, message: str = "") -> bool: ...

    @property
    def routing(self) -> NodeRouting: ...

    @property
    def dht(self) -> NodeDht | None: ...


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
    """Implements :class:`overlay.operator._control.Control` on a running node and its peering."""

    def __init__(self, node: ControlledNode, peering: Peering) -> None:
        self.node = node
        self.peering = peering
        self.started = peering.wall_clock()
        self.admin_url: str | None = None
        """Where the admin API listens (``http://HOST:PORT`` / ``unix:PATH``), once serving."""
        self.metrics_url: str | None = None
        """``http://HOST:PORT`` of the Prometheus endpoint (``/metrics``), once serving."""

    def _now(self) -> float:
        return self.peering.wall_clock()

    def status(self) -> dict[str, Any]:
        stats = self.peering.manager.statistics()
        conns = self.node.router.peers()
        routing = self.node.routing
        return {
            "targets": routing.status(),
            "capabilities": dict(routing.capability_counts()),
            "node_id": self.node.node_id,
            "network": self.node.config.network,
            "moniker": self.node.config.moniker,
            "version": __version__,
            "listen_addresses": [str(a) for a in self.node.listen_addresses],
            "advertised_addresses": [str(a) for a in self.node.advertised_addresses],
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
            "handshake_failures": {
                direction.value: {reason.value: n for reason, n in counts.items()}
                for direction, counts in self.node.handshake_failures.items()
            },
            "record": self._record(),
        }

    def _record(self) -> dict[str, Any]:
        """Our signed capability record, as ``status`` and ``capabilities`` show it."""
        caps = self.node.capabilities
        signed = caps.record
        return {
            "seq": signed.seq if signed is not None else None,
            "issued_at": signed.record.issued_at if signed is not None else None,
            "expires_at": signed.record.expires_at if signed is not None else None,
            "addresses": list(signed.record.addresses) if signed is not None else [],
            "origin": caps.origin.value,
            "capabilities": _capability_list(caps.current()),
        }

    def capabilities(self) -> dict[str, Any]:
        """Our record: seq, lifetime, addresses, where the set comes from, the capabilities."""
        return self._record()

    async def set_capabilities(self, items: list[str]) -> dict[str, Any]:
        """Advertise each ``NAME`` or ``NAME=VERSION`` (added or changed; persisted)."""
        parsed = [parse_capability(text) for text in items]
        caps = self.node.capabilities
        merged = dict(caps.current())
        for name, version in parsed:
            previous = merged.get(name)
            attributes = dict(previous.attributes) if previous is not None else {}
            merged[name] = CapabilityInfo(version, attributes)
        caps.replace(merged)  # one new record for the whole command
        return self._record()

    async def remove_capability(self, name: str) -> dict[str, Any]:
        """Stop advertising ``name``; :class:`UnknownCapabilityError` if it was not."""
        if not self.node.capabilities.remove(name):
            raise UnknownCapabilityError(f"capability {name!r} is not advertised")
        return self._record()

    def peers(self) -> list[dict[str, Any]]:
        """Every peer the manager knows, merged with the live connections (call it from the
        event loop: connection ages are measured on the loop's clock)."""
        now = self._now()
        loop_now = anyio.current_time()  # the clock of PeerConnection.connected_at
        names = {s.id: s.name for s in self.node.router.channel_specs()}
        result: dict[str, dict[str, Any]] = {}
        for snap in self.peering.manager.snapshot(now):
            result[snap.node_id] = _snapshot_dict(snap, now)
        for conn in self.node.router.peers():
            entry = result.setdefault(conn.node_id, {"id": conn.node_id})
            stats = jsonable(conn.core.statistics())
            for channel in stats.get("channels", ()) if isinstance(stats, dict) else ():
                if isinstance(channel, dict) and "channel_id" in channel:
                    cid = channel["channel_id"]
                    channel["name"] = names.get(cid, str(cid))
            entry.update(
                {
                    "connected": True,
                    "direction": "outbound" if conn.outbound else "inbound",
                    "remote_address": conn.remote_address,
                    "uptime_seconds": round(max(0.0, loop_now - conn.connected_at), 3),
                    "moniker": conn.info.moniker,
                    "software_version": conn.info.software_version,
                    "listen_addrs": list(conn.info.listen_addrs),
                    "channels_advertised": list(conn.info.channels),
                    "info_seq": conn.info_seq,
                    "capabilities": self._peer_capabilities(conn.node_id),
                    "connection": stats,
                }
            )
        return sorted(result.values(), key=lambda p: (not p.get("connected", False), p["id"]))

    async def providers(self, capability: str) -> dict[str, Any]:
        if self.node.dht is None:
            raise LocalProtocolError("the DHT is disabled ([discovery.dht] enabled = false)")
        return await self.node.dht.lookup_report(capability)

    def _peer_capabilities(self, peer: NodeId) -> dict[str, Any]:
        peers = self.node.discovery.peers
        signed = peers.record_of(peer)
        if signed is None:
            return {"advertised": [], "confirmed": [], "record_seq": None,
                    "record_expires_at": None}
        return {
            "advertised": _capability_list(signed.record.capabilities),
            "confirmed": sorted(peers.confirmed(peer)),
            "record_seq": signed.seq,
            "record_expires_at": signed.record.expires_at,
        }

    async def dial(self, address: str, *, persistent: bool) -> dict[str, Any]:
        addr = NodeAddress.parse(address)
        now = self._now()
        decision = self.peering.manager.dial_now(
            addr, persistent=persistent, now=now, execute=False
        )
        _refuse(decision.accepted, decision.reason, addr, self.peering, now)
        if decision.reason == "connected":  # nothing dialed, nothing stored
            self.peering.wake()
            return self._already_connected(addr.node_id, persistent)
        # Counted, reported to the manager, and re-raised on failure by the peering driver.
        peer = await self.peering.dial(addr)
        return {"connected": peer, "persistent": persistent}

    def _already_connected(self, node_id: NodeId, persistent: bool) -> dict[str, Any]:
        """The answer to a dial of a connected peer: the live connection's address. The typed
        address was neither dialed nor stored (only an address a connection authenticated is)."""
        conn = self.node.router.get_peer(node_id)
        return {
            "connected": node_id,
            "already_connected": True,
            "via": conn.remote_address if conn is not None else "",
            "direction": ("outbound" if conn.outbound else "inbound") if conn is not None else "",
            "persistent": persistent,
        }

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
        return "ip", parse_ban_target(target)

    async def ban(self, target: str, *, duration: float | None) -> dict[str, Any]:
        kind, value = self._target(target)
        if duration is not None and not (math.isfinite(duration) and duration >= MIN_BAN_SECONDS):
            raise LocalProtocolError(
                f"ban duration must be a finite number of seconds, at least {MIN_BAN_SECONDS:g}, "
                f"got {duration!r}"
            )
        seconds = duration if duration is not None else self.node.config.peers.ban_duration
        capped = seconds > MAX_BAN_SECONDS
        seconds = min(seconds, MAX_BAN_SECONDS)
        now = self._now()
        manager = self.peering.manager
        if kind == "peer":
            manager.ban_peer(NodeId(value), now + seconds, "operator", now)
        else:
            manager.ban_ip(value, now + seconds, "operator", now)
        self.peering.sync_metrics()  # counts the ban at once
        self.peering.wake()  # disconnects the banned peers
        return {"banned": value, "kind": kind, "seconds": seconds, "capped": capped}

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
        if addr.node_id == self.node.node_id:
            raise InvalidAddressError(f"cannot add {addr} as a seed: that is this node's own id")
        if not self.peering.manager.add_seed(addr, self._now()):
            # Refused by the manager for local sources only when the node or its IP is banned.
            raise ConflictError(
                f"cannot add {addr} as a seed: node {addr.node_id} or its IP is banned "
                "(`overlay unban` lifts it)"
            )
        self.peering.wake()
        return {"seed": str(addr)}

    async def remove_seed(self, address: str) -> dict[str, Any]:
        """Remove a seed added at run time (by address or node id); the address stays in the
        address book as an ordinary address."""
        try:
            node_id = parse_node_id(address)
        except InvalidAddressError:
            node_id = NodeAddress.parse(address).node_id
        snap = self.peering.manager.peer(node_id, self._now())
        if snap is None or PeerFlag.SEED not in snap.flags:
            raise UnknownPeerError(f"{address} is not a seed")
        if node_id in {a.node_id for a in self.node.config.peers.seed_addresses()}:
            raise ConflictError(
                f"{node_id} is a seed because config.toml lists it ([peers] seeds): remove it "
                "there and restart the node"
            )
        self.peering.remove_seed(node_id)
        return {"seed_removed": node_id}

    def bans(self) -> dict[str, Any]:
        """Every active ban, peers and IPs (IPv6: the /64), ending soonest first."""
        now = self._now()
        return {"bans": [
            {"kind": ban.kind.value, "target": ban.target, "until": ban.until,
             "remaining_seconds": round(max(0.0, ban.until - now), 3), "reason": ban.reason}
            for ban in self.peering.manager.bans(now)
        ]}

    def seeds(self) -> dict[str, Any]:
        """The seeds, from config.toml and ``seeds add``."""
        return {"seeds": [_operator_peer(p) for p in self.peering.manager.seeds(self._now())]}

    def persistent(self) -> dict[str, Any]:
        """The persistent peers, from config.toml and the operator."""
        peers = self.peering.manager.persistent_peers(self._now())
        return {"persistent": [_operator_peer(p) for p in peers]}

    async def add_persistent(self, address: str) -> dict[str, Any]:
        """Mark the peer at ``address`` persistent (stored) and let the driver dial it; the
        answer does not wait for the dial."""
        addr = NodeAddress.parse(address)
        now = self._now()
        decision = self.peering.manager.dial_now(addr, persistent=True, now=now, execute=True)
        _refuse(decision.accepted, decision.reason, addr, self.peering, now)
        self.peering.wake()
        if decision.reason == "connected":
            return self._already_connected(addr.node_id, True)
        return {"persistent": addr.node_id, "address": str(addr)}

    async def remove_persistent(self, node_id: str) -> dict[str, Any]:
        """Clear the persistent flag set by ``dial --persistent`` (the connection stays)."""
        peer = parse_node_id(node_id)
        now = self._now()
        snap = self.peering.manager.peer(peer, now)
        if snap is None or PeerFlag.PERSISTENT not in snap.flags:
            raise UnknownPeerError(f"peer {peer} is not persistent")
        if peer in {a.node_id for a in self.node.config.peers.persistent_addresses()}:
            raise ConflictError(
                f"{peer} is persistent because config.toml lists it ([peers] "
                "persistent_peers): remove it there and restart the node"
            )
        self.peering.manager.set_flag(peer, PeerFlag.PERSISTENT, False, now)
        self.peering.wake()
        return {"persistent_removed": peer}

    # -- routing targets ------------------------------------------------------------------

    def targets(self) -> dict[str, Any]:
        routing = self.node.routing
        return {"targets": routing.status(), "capabilities": dict(routing.capability_counts())}

    async def set_target(self, capability: str, assignments: list[str]) -> dict[str, Any]:
        routing = self.node.routing
        target = parse_target_assignments(capability, assignments, routing.targets.get(capability))
        warnings = routing.set_target(target)
        return {"capability": capability, "target": target.to_mapping(),
                "warnings": list(warnings)}

    async def remove_target(self, capability: str) -> dict[str, Any]:
        if not self.node.routing.remove_target(capability):
            raise UnknownTargetError(f"no target for {capability!r}")
        return {"removed": capability}


def _capability_list(caps: Mapping[str, CapabilityInfo]) -> list[dict[str, Any]]:
    return [{"name": name, "version": info.version, "attributes": dict(info.attributes)}
            for name, info in sorted(caps.items())]


def _refuse(accepted: bool, reason: str, addr: NodeAddress, peering: Peering, now: float) -> None:
    """Raise the operator's error for a refused ``dial_now``."""
    if reason == "self":
        raise InvalidAddressError(f"cannot dial {addr}: that is this node's own id")
    if reason == "banned":
        snap = peering.manager.peer(addr.node_id, now)
        until = _ban_end(snap.ban_until if snap is not None else None, now)
        raise PeerBannedError(
            f"cannot dial {addr}: node {addr.node_id} is banned{until} "
            f"(`overlay unban {addr.node_id}` lifts it)"
        )
    if reason == "ip_banned":
        raise PeerBannedError(
            f"cannot dial {addr}: its IP {addr.host} is banned "
            f"(`overlay unban {addr.host}` lifts it)"
        )
    if not accepted:
        raise InvalidAddressError(f"cannot dial {addr}: {reason}")


def _ban_end(until: float | None, now: float) -> str:
    if until is None:
        return ""
    return f" for another {max(0.0, until - now):.0f} s"


def _operator_peer(peer: OperatorPeer) -> dict[str, Any]:
    return {
        "id": peer.node_id,
        "addresses": [str(a) for a in peer.addresses],
        "origin": [name for name, on in (("config", peer.in_config),
                                         ("operator", peer.by_operator)) if on],
        "state": peer.state.value,
    }


def _snapshot_dict(snap: PeerSnapshot, now: float) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(snap)
    data["id"] = data.pop("node_id")
    data["connected"] = False
    data["persistent"] = PeerFlag.PERSISTENT in snap.flags
    if snap.ban_until is not None:
        data["ban_remaining_seconds"] = round(max(0.0, snap.ban_until - now), 3)
    return data


