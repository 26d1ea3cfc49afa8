"""overlay: peer-to-peer networking with capabilities, typed channels and request/response.

The public surface: :class:`Node` and its config, typed channels (:class:`ChannelSpec`,
:class:`Channel`, codecs), destinations (a peer id, :data:`LOCAL`, :data:`BROADCAST`, your own
:class:`Destination` selecting from :class:`PeerView` snapshots, roles and groups of peers
with a capability: :class:`Role`, :class:`Group`) and :class:`AttemptOutcome`, node
identity and addresses, and the exception tree (``overlay.errors``). Test doubles live in
``overlay.testing``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from overlay._version import __version__
from overlay.address import ListenAddress, NodeAddress
from overlay.connection._observer import Observer, TaskRoot
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import ErrorCode, OverlayError, RequestError
from overlay.identity import NodeId, NodeKey
from overlay.router._channel import (
    Channel,
    ChannelSpec,
    ChannelStatistics,
    DeliveryReport,
    Envelope,
    RequestHandler,
)
from overlay.router._codec import BytesCodec, Codec, ProtobufCodec
from overlay.router._destination import BROADCAST, LOCAL, Destination, PeerSet, PeerView, To
from overlay.transport._failures import Direction, HandshakeFailureReason

if TYPE_CHECKING:
    from overlay.node import Node
    from overlay.node._config import NodeConfig, load_config
    from routing._destinations import Group, Role
    from routing._role_results import GroupResponse, RoleResponse, RoleResult

# The assembly (``Node`` and its config) and routing's destinations sit above ``discovery``
# and ``routing``, which import this package's lower layers (``overlay.errors``...): importing
# them lazily keeps ``import discovery`` (or ``routing``) first in a program free of a cycle.
_ASSEMBLY = {"Node": "overlay.node", "NodeConfig": "overlay.node._config",
             "load_config": "overlay.node._config", "Group": "routing._destinations",
             "GroupResponse": "routing._role_results", "Role": "routing._destinations",
             "RoleResponse": "routing._role_results", "RoleResult": "routing._role_results"}


def __getattr__(name: str) -> Any:
    module = _ASSEMBLY.get(name)
    if module is None:
        raise AttributeError(f"module 'overlay' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "AttemptOutcome",
    "BROADCAST",
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
    "Group",
    "GroupResponse",
    "HandshakeFailureReason",
    "LOCAL",
    "ListenAddress",
    "Node",
    "NodeAddress",
    "NodeConfig",
    "NodeId",
    "NodeKey",
    "Observer",
    "OverlayError",
    "PeerSet",
    "PeerView",
    "ProtobufCodec",
    "RequestError",
    "RequestHandler",
    "Role",
    "RoleResponse",
    "RoleResult",
    "TaskRoot",
    "To",
    "__version__",
    "load_config",
]
