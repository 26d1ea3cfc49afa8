"""The assembly: :class:`Node` wires transports, connections, the router and the peer manager.

The config sections (``NodeConfig`` and one class per ``config.toml`` table) are public here.

Layer: node (the top of the library; only ``overlay.cli`` sits above it).
"""

from overlay.node._config import (
    AdminConfig,
    ConnectionConfig,
    DhtSettings,
    DiscoveryConfig,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    RoutingConfig,
    load_config,
)
from overlay.node._node import PING, Admission, Node, PeerSummary
from overlay.peers import PeerManagerConfig

__all__ = [
    "AdminConfig",
    "Admission",
    "ConnectionConfig",
    "DhtSettings",
    "DiscoveryConfig",
    "LogConfig",
    "MetricsConfig",
    "Node",
    "NodeConfig",
    "PING",
    "PeerManagerConfig",
    "PeerSummary",
    "RoutingConfig",
    "load_config",
]
