"""Node configuration: one frozen dataclass per component, loadable from ``config.toml``.

Every field has a docstring; ``overlay init`` writes them all into the generated config file, and
the operator's guide lists them. Paths are relative to the node's home directory.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from discovery import PexConfig, valid_capability_name
from overlay.address import ListenAddress, NodeAddress
from overlay.connection._types import CoreConfig
from overlay.errors import ConfigError, InvalidAddressError
from overlay.node._app import check_app_spec
from overlay.node._configio import from_mapping, render_toml
from overlay.peers import PeerManagerConfig
from overlay.transport import TransportConfig
from routing import ConnectionLimits, HedgeConfig, PolicyConfig, TargetSet

__all__ = [
    "AdminConfig",
    "ConnectionConfig",
    "DhtSettings",
    "DiscoveryConfig",
    "LogConfig",
    "MetricsConfig",
    "NodeConfig",
    "RoutingConfig",
    "load_config",
    "render_config",
]


C = TypeVar("C")


def _positive(key: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(key, f"must be a positive number, got {value!r}")


_CORE = CoreConfig()
_TRANSPORT = TransportConfig()
# ConnectionConfig is the user-facing ``[connection]`` table (flat, documented for operators);
# the settings it shares with the connection core and the transport take their defaults and
# their validation from CoreConfig and TransportConfig, and reach them through
# ``core_config()`` / ``transport_config()``: nothing is copied by hand.


def _project(cls: type[C], source: object, **extra: Any) -> C:
    """``cls`` built from the fields of ``source`` with the same names (plus ``extra``)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = {name: getattr(source, name) for name in names if hasattr(source, name)}
    values.update(extra)
    return cls(**values)


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Per-connection limits and timers (``[connection]``)."""

    max_frame_payload: int = _CORE.max_frame_payload
    """Payload bytes per frame this node sends (the chunk size of large messages), 64 to 65507.
    Smaller chunks let urgent messages overtake bulk transfers sooner. Every node accepts frames
    up to 65507 bytes whatever its own setting."""
    max_write_batch: int = _CORE.max_write_batch
    """Bytes of frames coalesced into one write (and one AEAD call when ≤ 65519)."""
    send_rate: float = _CORE.send_rate
    """Per-peer send rate limit in bytes/s (0 = unlimited)."""
    send_burst: int = _CORE.send_burst
    """Burst allowance of the send rate limit, in bytes."""
    recv_rate: float = _CORE.recv_rate
    """Per-peer receive rate limit in bytes/s (0 = unlimited); reading pauses when exceeded."""
    recv_burst: int = _CORE.recv_burst
    """Burst allowance of the receive rate limit, in bytes."""
    compression: bool = False
    """Offer zstd compression; used only when both peers offer it."""
    compression_threshold: int = _CORE.compression_threshold
    """Messages smaller than this are never compressed."""
    ping_interval: float = _CORE.ping_interval
    """Seconds between keep-alive pings (which also measure latency)."""
    idle_timeout: float = _CORE.idle_timeout
    """Close a connection when nothing was received for this many seconds."""
    close_timeout: float = _CORE.close_timeout
    """Seconds a closing connection may spend writing its final Disconnect (best effort);
    after that the connection is aborted (unsent data dropped, a TCP reset). Bounds how long
    a disconnect, a ban, an eviction, an idle or ping timeout and node shutdown take, whatever
    the peer does (also the time given to writing a refusal during the hello)."""
    max_outbound_requests: int = _CORE.max_outbound_requests
    """Requests in flight per connection before ``request()`` waits."""
    handshake_timeout: float = _TRANSPORT.handshake_timeout
    """Seconds allowed for the Noise handshake, and as much again for the NodeInfo exchange
    that follows it (each phase has its own deadline; on a dial both are also cut short by the
    dial's remaining time)."""
    dial_timeout: float = 5.0
    """With ``handshake_timeout``, the time a dial may take when its caller gives none (operator
    dials, ``overlay dial``): connecting, the Noise handshake and the NodeInfo exchange together
    must finish within ``dial_timeout + handshake_timeout``. The peer manager's own dials use
    ``[peers] dial_timeout`` instead."""
    dial_from_listen_host: bool = False
    """Dial out from the host of the first ``tcp://`` listen address that names one (not
    ``0.0.0.0`` / ``::``), so peers see connections come from the address they would dial back.
    A loopback testnet gives every node its own ``127.A.B.1`` and sets this, so per-IP and
    netgroup limits act as on a real network (off: the system picks the source address)."""
    max_pending_handshakes: int = _TRANSPORT.max_pending_handshakes
    """Inbound connections allowed to be mid-handshake at once; more are closed at once, unless
    the newcomer's netgroup is under-represented among them: then the oldest pending handshake
    of the most represented netgroup is cut to make room."""
    max_pending_handshakes_per_ip: int = _TRANSPORT.max_pending_handshakes_per_ip
    """Inbound connections from one IP (an IPv6 /64) allowed to be mid-handshake at once; more
    are closed at once. ``[peers] exempt_networks`` are exempt."""
    max_pending_handshakes_per_netgroup: int = _TRANSPORT.max_pending_handshakes_per_netgroup
    """Inbound connections from one netgroup (an IPv4 /16, an IPv6 /32) allowed to be
    mid-handshake at once; more are closed at once. ``[peers] exempt_networks`` are exempt."""

    def __post_init__(self) -> None:
        # What the core and the transport check, they check once (same key names):
        self.core_config()
        self.transport_config()
        # Stricter here than in the core, which also serves tests and embedders:
        if self.max_write_batch < 64:
            raise ConfigError("max_write_batch", "must be at least 64")
        for key in ("send_burst", "recv_burst", "compression_threshold"):
            if getattr(self, key) < 1:
                raise ConfigError(key, "must be at least 1")
        for key in ("ping_interval", "idle_timeout", "dial_timeout"):
            _positive(key, getattr(self, key))

    def core_config(self) -> CoreConfig:
        """The settings of each connection's sans-IO core (the fields of the same names)."""
        return _project(CoreConfig, self)

    def transport_config(self, exempt_networks: tuple[str, ...] = ()) -> TransportConfig:
        """The settings of the node's transports (the fields of the same names);
        ``exempt_networks`` comes from ``[peers]``."""
        return _project(TransportConfig, self, exempt_networks=tuple(exempt_networks))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The local admin API used by the ``overlay`` CLI (``[admin]``)."""

    enabled: bool = True
    """Serve the admin API (HTTP/JSON, token-protected)."""
    listen: str = "127.0.0.1:0"
    """TCP address (loopback only); port 0 picks a free port, written to ``admin.json``."""
    unix_socket: str = ""
    """Serve on this Unix socket path instead of TCP (relative to home)."""
    token_file: str = "admin_token"
    """File holding the bearer token (created with mode 0600)."""

    def __post_init__(self) -> None:
        host = self.listen.rpartition(":")[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError("listen", "the admin API may only bind a loopback address")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint (``[metrics]``)."""

    enabled: bool = False
    """Serve Prometheus metrics."""
    listen: str = "127.0.0.1:26660"
    """HOST:PORT to serve ``/metrics`` on."""
    namespace: str = "overlay"
    """Prefix of every metric name."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging (``[log]``)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    format: Literal["text", "json"] = "text"
    """``text`` for people, ``json`` for one structured record per line."""


@dataclass(frozen=True, slots=True)
class DhtSettings:
    """The node's Kademlia DHT (``[discovery.dht]``); see docs/discovery.md for the numbers."""

    enabled: bool = True
    """Serve and use the DHT (provider records for capabilities, peer lookups)."""
    k: int = 20
    """Bucket size and replication factor: provider records are stored on the k closest nodes."""
    alpha: int = 3
    """Queries in flight per lookup path."""
    disjoint_paths: int = 2
    """Disjoint lookup paths for provider lookups (S/Kademlia); 1 turns the defence off."""
    query_timeout: float = 2.0
    """Seconds one DHT query may take before the lookup moves on."""
    max_transient_connections: int = 16
    """Connections opened only for DHT queries at once; they never take peer slots."""
    transient_idle: float = 10.0
    """Seconds an unused transient connection stays open for reuse."""
    max_transient_per_ip: int = 4
    """Inbound transient connections accepted at once from one remote host."""
    density_limit: bool = False
    """Lookups count at most a few times as many ids near a key as a network of the size the
    routing table estimates holds there: defeats ids minted near a key and served at many
    addresses, at a small cost to honest lookups (docs/scale.md)."""

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 64:
            raise ConfigError("k", "must be between 1 and 64")
        if not 1 <= self.alpha <= self.k:
            raise ConfigError("alpha", "must be between 1 and k")
        if not 1 <= self.disjoint_paths <= 8:
            raise ConfigError("disjoint_paths", "must be between 1 and 8")
        _positive("query_timeout", self.query_timeout)
        _positive("transient_idle", self.transient_idle)
        if self.max_transient_connections < 1:
            raise ConfigError("max_transient_connections", "must be at least 1")
        if self.max_transient_per_ip < 1:
            raise ConfigError("max_transient_per_ip", "must be at least 1")


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """What this node advertises and how it finds peers (``[discovery]``)."""

    capabilities: tuple[str, ...] = ()
    """Capabilities this node serves, as ``NAME`` or ``NAME=VERSION`` (``blocksync=2``); they go
    into the node's signed capability record (also settable live: ``overlay capabilities``)."""
    record_ttl: float = 3600.0
    """Seconds a signed capability record is valid; the node re-signs it well before expiry."""
    seed_mode: bool = False
    """Crawl the network, answer PEX requests with records, and hang up quickly (a seed node)."""
    pex_enabled: bool = True
    """Exchange signed records with peers on the PEX channel (ask and answer). Off: the node
    neither opens the channel nor asks; it learns records from handshakes and the DHT only."""
    pex: PexConfig = field(default_factory=PexConfig)
    dht: DhtSettings = field(default_factory=DhtSettings)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, text in enumerate(self.capabilities):
            name, _, version = text.partition("=")
            if not valid_capability_name(name):
                raise ConfigError(f"capabilities[{i}]",
                                  f"{name!r} is not a capability name (a-z, 0-9, _.-; 1-32)")
            if version and not (version.isdigit() and int(version) < 2**32):
                raise ConfigError(f"capabilities[{i}]", f"version {version!r} is not a uint32")
            if name in seen:
                raise ConfigError(f"capabilities[{i}]", f"{name!r} is listed twice")
            seen.add(name)
        if not 60.0 <= self.record_ttl <= 7 * 86400.0:
            raise ConfigError("record_ttl", "must be between 60 s and 7 days")


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Capability routing (``[routing]``): peer targets per capability, the policy engine's
    heartbeat and the hedging of role requests (docs/routing.md, operator's guide)."""

    targets: TargetSet = field(default_factory=TargetSet)
    """Peer targets per capability, one ``[routing.targets.CAP]`` table each with
    ``min_peers``, ``min_fraction``, ``max_peers`` and ``priority`` (also live:
    ``overlay targets set CAP key=value``)."""
    heartbeat: float = 1.0
    """Seconds between two ticks of the policy engine (dials, protection, prunes, discovery)."""
    max_dials_per_minute: int = 20
    """Dials the policy engine may start over any 60 s (bounds the cost of unattainable
    targets)."""
    reconnect_backoff: float = 600.0
    """Seconds a peer the policy pruned is not dialed again (anti-flap)."""
    hedging: bool = True
    """Hedge slow role requests by asking the next healthiest peer (false: one at a time)."""
    hedge_quantile: float = 0.95
    """The hedge delay is this quantile of the role's recent response times."""
    hedge_floor: float = 0.05
    """Shortest hedge delay in seconds."""
    hedge_cap: float = 2.0
    """Longest hedge delay in seconds."""
    hedge_initial_delay: float = 0.25
    """Hedge delay in seconds before a role has ten recorded responses."""
    max_in_flight: int = 3
    """Attempts of one role request in flight at once (the first plus hedges)."""

    def __post_init__(self) -> None:
        _positive("heartbeat", self.heartbeat)
        self.policy_config()
        self.hedge_config()

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(max_dials_per_minute=self.max_dials_per_minute,
                            reconnect_backoff=self.reconnect_backoff)

    def hedge_config(self) -> HedgeConfig:
        return HedgeConfig(quantile=self.hedge_quantile, floor=self.hedge_floor,
                           cap=self.hedge_cap, initial_delay=self.hedge_initial_delay,
                           max_in_flight=self.max_in_flight)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs (the top level of ``config.toml``)."""

    network: str = "overlay-local"
    """Network name; peers on other networks are refused."""
    moniker: str = ""
    """Human-readable node name shown to peers."""
    listen: tuple[str, ...] = ("tcp://127.0.0.1:26656",)
    """Listen addresses: ``tcp://HOST:PORT`` (port 0 = any free port) or ``memory:``."""
    external_addresses: tuple[str, ...] = ()
    """Addresses advertised to peers instead of the listen addresses (``ID@HOST:PORT``)."""
    node_key_file: str = "node_key"
    """ed25519 node key (hex seed, mode 0600)."""
    data_dir: str = "data"
    """Directory of the peer store (SQLite) and the lock file; a node without a home directory
    (an embedded ``Node(config)``) keeps its peers in memory and writes no files."""
    app: str = ""
    """Application to load into the node at start, as ``package.module:setup``: ``setup(node)``
    (plain or ``async``) opens the application's channels and starts its tasks
    (``overlay start --app`` overrides it; empty: none)."""
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    peers: PeerManagerConfig = field(default_factory=PeerManagerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def __post_init__(self) -> None:
        if not self.network or len(self.network) > 64:
            raise ConfigError("network", "must be 1 to 64 characters")
        if not self.listen:
            raise ConfigError("listen", "needs at least one address")
        for i, text in enumerate(self.listen):
            try:
                ListenAddress.parse(text)
            except InvalidAddressError as exc:
                raise ConfigError(f"listen[{i}]", str(exc)) from None
        if self.app:
            check_app_spec(self.app)
        for i, text in enumerate(self.external_addresses):
            try:
                NodeAddress.parse(text)
            except InvalidAddressError as exc:
                raise ConfigError(f"external_addresses[{i}]", str(exc)) from None
        try:
            self.routing.targets.validate(self.connection_limits())
        except ConfigError as exc:
            raise ConfigError(f"routing.{exc.key}", str(exc).split(": ", 1)[-1]) from None

    def connection_limits(self) -> ConnectionLimits:
        """The ``[peers]`` limits routing targets must fit in."""
        return ConnectionLimits.from_peer_config(self.peers)

    def listen_addresses(self) -> list[ListenAddress]:
        return [ListenAddress.parse(text) for text in self.listen]


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a ``config.toml``; every problem raises :class:`ConfigError`."""
    target = Path(path)
    try:
        text = target.read_text()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {target}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{target} is not valid TOML: {exc}") from exc
    return from_mapping(NodeConfig, data)


def render_config(
    config: NodeConfig | None = None, overrides: Mapping[str, object] | None = None
) -> str:
    """A complete ``config.toml``: every key with its docstring, defaults commented out."""
    header = (
        "# overlay node configuration. Every key is listed with its default, commented out;\n"
        "# uncomment a line to change it. See docs/operator-guide.md.\n\n"
    )
    return header + render_toml(config or NodeConfig(), overrides=overrides or {})
