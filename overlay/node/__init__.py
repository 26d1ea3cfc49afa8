"""The assembly: :class:`Node` wires transports, connections, the router and the peer manager.

Layer: node (the top of the library; only ``overlay.cli`` sits above it).
"""

from overlay.node._node import PING, Admission, Node, PeerSummary

__all__ = [
    "Admission",
    "Node",
    "PING",
    "PeerSummary",
]
