"""Test helpers for users of overlay: an in-process network and the transport conformance suite.

* :class:`MemoryNetwork` / :class:`MemoryTransport`: many nodes in one process, no sockets, with
  synthetic remote hosts, backpressure, link latency/loss and partitions; a node joins with
  ``Node(config, transports=[network.node_transport()])``.
* :func:`check_transport_conformance`: the checks every transport must pass.
"""

from overlay.testing._conformance import (
    CHECKS,
    ConformanceError,
    TransportFactory,
    check_transport_conformance,
)
from overlay.testing._memory import (
    IpMemoryTransport,
    MemoryNetwork,
    MemoryNetworkStatistics,
    MemoryTransport,
)
from overlay.testing._pipes import LinkConditions, MemoryByteStream, memory_stream_pair

__all__ = [
    "CHECKS",
    "ConformanceError",
    "IpMemoryTransport",
    "LinkConditions",
    "MemoryByteStream",
    "MemoryNetwork",
    "MemoryNetworkStatistics",
    "MemoryTransport",
    "TransportFactory",
    "check_transport_conformance",
    "memory_stream_pair",
]
