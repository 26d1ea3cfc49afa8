"""Run a node as a service (``overlay start``): the node, the peering driver with its SQLite
store, the admin API and (optionally) the Prometheus endpoint — and the :class:`NodeControl`
through which operators act on all of them while it runs.

Theory of operation
-------------------
:func:`run_node` loads the node key (it never creates one: ``overlay init`` does), creates the
data directory (mode 0700), takes the home's lock
(:class:`HomeLock`: one running node per home), opens the peer store, starts the node, the
peering driver, the admin API and the metrics endpoint, then waits to be cancelled.

Shutdown is orderly although it starts with a cancellation: once started, the service runs in a
shielded cancel scope, and cancelling :func:`run_node` only sets a stop event. The service then
removes ``admin.json``, closes every connection with a ``shutdown`` Disconnect (so peers log
``shutdown``, not ``connection_closed``), and only then cancels the peering driver (which writes
the last changes to the store and closes it), the admin API and the metrics endpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import logging
import math
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from overlay._version import __version__
from overlay.address import NodeAddress
from overlay.connection._observer import MultiObserver, Observer
from overlay.errors import (
    ConfigError,
    InvalidAddressError,
    LocalProtocolError,
    NetworkError,
    OverlayError,
)
from overlay.identity import NodeId, NodeKey, parse_node_id
from overlay.node._advertise import check_external_addresses
from overlay.node._config import NodeConfig
from overlay.node._node import Node
from overlay.node._peering import Peering, wall_clock
from overlay.operator._control import (
    MAX_BAN_SECONDS,
    MIN_BAN_SECONDS,
    ConflictError,
    PeerBannedError,
    UnknownPeerError,
    parse_ban_target,
)
from overlay.peers import OperatorPeer, PeerFlag, PeerSnapshot

__all__ = [
    "HomeLock",
    "HomeLockedError",
    "LOCK_FILE",
    "NodeControl",
    "jsonable",
    "load_node_key",
    "run_node",
]

log = logging.getLogger("overlay.service")

LOCK_FILE = "node.lock"
"""Lock file in the data directory, held (``flock``) by the running node; holds its pid."""


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
        }

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
                    "capabilities": {},
                    "connection": stats,
                }
            )
        return sorted(result.values(), key=lambda p: (not p.get("connected", False), p["id"]))

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


class HomeLockedError(OverlayError):
    """Another node runs on this home (it holds the home's lock)."""


class HomeLock:
    """An exclusive ``flock`` on ``DATA_DIR/node.lock``, held while the node runs.

    The file holds the pid of the holder (for the error message of a second start); it is
    never removed, so two starts cannot both lock different files. The kernel drops the lock
    when the process dies, even after ``kill -9``.
    """

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`HomeLockedError` (naming the holder's pid)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError("data_dir", f"cannot create {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise HomeLockedError(
                f"another node is already running on home {self.home} ({who} holds "
                f"{self.path}); stop it first, or use another --home"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError("data_dir", f"cannot lock {self.path}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _private_directory(path: Path, key: str = "data_dir") -> None:
    """Create ``path`` with mode 0700, or tighten an existing one readable by others."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("directory %s had mode %o; setting 0700", path, mode)
            path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(key, f"cannot create {path}: {exc}") from exc


async def run_node(config: NodeConfig, home: Path, *, observers: tuple[Observer, ...] = (),
                   task_status: anyio.abc.TaskStatus[NodeControl] = anyio.TASK_STATUS_IGNORED,
                   ) -> None:
    """Run until cancelled (the CLI cancels on SIGINT/SIGTERM), then shut down in order (see
    the module docstring).

    Start-up failures: :class:`ConfigError` (no node key: run ``overlay init``; a bad store,
    admin or metrics address...),
    :class:`HomeLockedError` (another node runs on ``home``), :class:`NetworkError` (a listen
    address cannot be bound, e.g. the port is in use).
    """
    key = load_node_key(config, home)  # before creating anything
    check_external_addresses(config.external_addresses, key.node_id)
    data_dir = home / config.data_dir
    _private_directory(data_dir)
    with HomeLock(data_dir / LOCK_FILE, home):
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            control: NodeControl = await tg.start(_serve, config, home, key, observers, stop)
            task_status.started(control)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()  # the service, shielded, shuts down in order


def load_node_key(config: NodeConfig, home: Path) -> NodeKey:
    """The node's key (``HOME/node_key_file``). A service never creates one: a missing key is
    a :class:`ConfigError` that says to run ``overlay init`` (a mistyped ``node_key_file``
    must not silently give the node a new identity, nor create directories)."""
    path = home / config.node_key_file
    if not path.exists():
        raise ConfigError(
            "node_key_file",
            f"no node key at {path}; run `overlay init --home {home}` to create one (or fix "
            "node_key_file in config.toml: `start` never creates a key, since a new key is a "
            "new identity)",
        )
    return NodeKey.load(path)


async def _serve(config: NodeConfig, home: Path, key: NodeKey, observers: tuple[Observer, ...],
                 stop: anyio.Event, *, task_status: anyio.abc.TaskStatus[NodeControl]) -> None:
    from overlay.operator._admin import (
        load_or_create_token,
        remove_admin_info,
        serve_admin,
        write_admin_info,
    )
    from overlay.operator._metrics import NodeMetrics, serve_metrics

    metrics = NodeMetrics(namespace=config.metrics.namespace) if config.metrics.enabled else None
    multi = MultiObserver()
    node = Node(config, key=key, home=home, observer=multi)
    peering = Peering(node, store_path=home / config.data_dir / "peers.sqlite",
                      metrics=metrics)
    parts: list[Observer] = [peering, *observers]
    if metrics is not None:
        from overlay.operator._metrics import MetricsObserver

        parts.append(MetricsObserver(metrics))
    multi.set(*parts)
    with anyio.CancelScope() as service_scope:
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(node)
            except OSError as exc:
                peering.close_store()
                raise NetworkError(
                    f"cannot listen on {', '.join(config.listen)}: {exc.strerror or exc}"
                ) from exc
            except BaseException:
                peering.close_store()
                raise
            tg = await stack.enter_async_context(anyio.create_task_group())
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
                stack.callback(remove_admin_info, home)  # also when a later step fails
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
            service_scope.shield = True  # from now on a cancellation arrives as ``stop``
            task_status.started(control)
            await stop.wait()
            if config.admin.enabled:
                remove_admin_info(home)  # first: the CLI no longer finds a stopping node
            peers = len(node.router.peers())
            log.info("shutting down: closing %d connection%s", peers, "" if peers == 1 else "s")
            await node.aclose()  # every peer is told `shutdown` while the driver still runs
            tg.cancel_scope.cancel()  # the driver flushes the store; admin and metrics stop
    log.info("node %s stopped", node.node_id)


def metrics_snapshot(node: Node, peering: Peering) -> Any:
    """Scrape-time values for the metrics collector (totals include closed connections)."""
    from overlay.operator._metrics import ChannelSnapshot, MetricsSnapshot

    stats = peering.manager.statistics()
    transports = [t.statistics() for t in node.transports]
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
        pending_handshakes=sum(t.pending_handshakes for t in transports),
        inbound_accepted=sum(t.accepted for t in transports),
        inbound_refused={
            "gate": sum(t.rejected_by_gate for t in transports),
            "per_ip": sum(t.rejected_per_ip for t in transports),
            "per_netgroup": sum(t.rejected_per_netgroup for t in transports),
            "overload": sum(t.rejected_overload for t in transports),
        },
        pending_evictions=sum(t.evicted_handshakes for t in transports),
    )


def _channel_values(ch: Any) -> tuple[int, ...]:
    return (ch.bytes_sent, ch.bytes_received, ch.messages_sent, ch.messages_received,
            ch.messages_dropped, ch.queue_depth, ch.outbound_requests_in_flight,
            ch.inbound_requests_active, 0)
