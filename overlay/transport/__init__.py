"""Transports: dial and accept authenticated byte streams (TCP here, memory in ``overlay.testing``).

Layer: transport (above ``overlay.wire``, below ``overlay.connection``). A transport hands back a
:class:`~overlay.transport._secure.SecureStream` whose Noise handshake has authenticated the peer's
node id; everything above works on those streams.
"""

from overlay.transport._base import (
    AcceptGate,
    InboundHandler,
    RawConnection,
    RawListener,
    StreamAbortAttribute,
    Transport,
    TransportStatistics,
    abort_stream,
    half_close,
)
from overlay.transport._config import TransportConfig
from overlay.transport._setup import TransportBuilder, TransportSetup

__all__ = [
    "AcceptGate",
    "InboundHandler",
    "RawConnection",
    "RawListener",
    "StreamAbortAttribute",
    "Transport",
    "TransportBuilder",
    "TransportConfig",
    "TransportSetup",
    "TransportStatistics",
    "abort_stream",
    "half_close",
]
