"""overlay: peer-to-peer networking with capabilities, typed channels and request/response.

The public surface: :class:`Node` and its config, typed channels (:class:`ChannelSpec`,
:class:`Channel`, codecs), destinations (a peer id, :data:`LOCAL`, :data:`BROADCAST`), node
identity and addresses, and the exception tree (``overlay.errors``). Test doubles live in
``overlay.testing``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from overlay._channel import (
    Channel,
    ChannelSpec,
    ChannelStatistics,
    DeliveryReport,
    Envelope,
    RequestHandler,
)
from overlay._codec import BytesCodec, Codec, ProtobufCodec
from overlay._destination import BROADCAST, LOCAL, Destination, PeerView, To
from overlay._failures import Direction, HandshakeFailureReason
from overlay._observer import Observer
from overlay.address import ListenAddress, NodeAddress
from overlay.config import NodeConfig, load_config
from overlay.errors import ErrorCode, OverlayError, RequestError
from overlay.identity import NodeId, NodeKey
from overlay.node import Node

__all__ = [
    "BROADCAST",
    "LOCAL",
    "BytesCodec",
    "Channel",
    "ChannelSpec",
    "ChannelStatistics",
    "Codec",
    "DeliveryReport",
    "Destination",
    "Direction",
    "Envelope",
    "ErrorCode",
    "HandshakeFailureReason",
    "ListenAddress",
    "load_config",
    "Node",
    "NodeAddress",
    "NodeConfig",
    "NodeId",
    "NodeKey",
    "Observer",
    "OverlayError",
    "PeerView",
    "ProtobufCodec",
    "RequestError",
    "RequestHandler",
    "To",
    "__version__",
]
