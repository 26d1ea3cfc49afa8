"""NodeInfo: what a peer tells us about itself right after the secure handshake.

Theory of operation
-------------------
The *hello* exchange runs once per connection, over the already authenticated stream:

1. the initiator sends its ``NodeInfo``;
2. the responder checks it (``check_compatible`` plus admission by the peer manager) and answers
   with a ``HelloReply``: its own ``NodeInfo`` (accepted) or a ``Disconnect`` (refused, with a
   reason both sides log);
3. the initiator checks the responder's ``NodeInfo`` the same way; if *it* refuses, it sends a
   CONTROL disconnect frame as the first frame of the connection.

Each message is a 4-byte big-endian length followed by the protobuf bytes; the length is checked
against :data:`MAX_HELLO_SIZE` before the body is read. Compatibility is symmetric, so both sides
reach the same verdict: same network, same protocol major version, and at least one common
channel.

After the hello, a node whose NodeInfo changes (a channel opened or closed, a new capability
record) sends it again in a CONTROL ``NodeInfoUpdate`` with a strictly increasing ``info_seq``
(the hello counts as 0; see ``overlay.connection._infosync`` and docs/protocol.md).
:func:`check_info_update` is the update's counterpart of :func:`check_compatible`: the network and
the protocol version are fixed for the life of a connection, so a change is a protocol violation;
the channels may change freely (no common channel left is not a violation: either side may
open one again).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError as _PbDecodeError

from overlay.errors import FrameError, HandshakeTimeout, IncompatiblePeerError
from overlay.wire._messages import DisconnectReason, InfoUpdate, encode_control
from proto import overlay_pb2 as pb

__all__ = [
    "DisconnectReason",  # defined in overlay.wire._messages; re-exported for the hello exchange
    "MAX_HELLO_SIZE",
    "NodeInfo",
    "PROTOCOL_VERSION",
    "check_compatible",
    "check_info_update",
    "decode_hello_reply",
    "decode_node_info",
    "encode_hello_reply",
    "encode_info_update",
    "encode_node_info",
    "hello_frame",
    "hello_length",
    "hello_timeout_error",
]

PROTOCOL_VERSION = 1000
"""Major version = value // 1000; peers must share the major version."""

MAX_HELLO_SIZE = 65536
"""Largest NodeInfo / HelloReply accepted (room for a signed capability record)."""

_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A peer's self-description (authenticated: ``node_id`` comes from the Noise handshake)."""

    network: str
    protocol_version: int = PROTOCOL_VERSION
    channels: tuple[int, ...] = ()
    listen_addrs: tuple[str, ...] = ()
    software_version: str = ""
    capability_record: bytes = b""
    compression: tuple[str, ...] = ()
    moniker: str = ""


def encode_node_info(info: NodeInfo) -> bytes:
    return _to_pb(info).SerializeToString()


def _to_pb(info: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        protocol_version=info.protocol_version,
        network=info.network,
        channels=list(info.channels),
        listen_addrs=list(info.listen_addrs),
        software_version=info.software_version,
        capability_record=info.capability_record,
        compression=list(info.compression),
        moniker=info.moniker,
    )


def _from_pb(msg: pb.NodeInfo) -> NodeInfo:
    channels = tuple(msg.channels)
    if any(not 0 < c <= 0xFFFF for c in channels):
        raise FrameError("NodeInfo lists a channel id outside 1..65535")
    return NodeInfo(
        network=msg.network,
        protocol_version=msg.protocol_version,
        channels=channels,
        listen_addrs=tuple(msg.listen_addrs),
        software_version=msg.software_version,
        capability_record=msg.capability_record,
        compression=tuple(msg.compression),
        moniker=msg.moniker,
    )


def decode_node_info(data: bytes) -> NodeInfo:
    """Decode a NodeInfo; malformed input raises :class:`FrameError`."""
    msg = pb.NodeInfo()
    try:
        msg.ParseFromString(data)
    except _PbDecodeError as exc:
        raise FrameError(f"malformed NodeInfo: {exc}") from exc
    return _from_pb(msg)


def encode_hello_reply(reply: NodeInfo | tuple[DisconnectReason, str]) -> bytes:
    """Encode an acceptance (our NodeInfo) or a refusal ``(reason, message)``."""
    if isinstance(reply, NodeInfo):
        return pb.HelloReply(node_info=_to_pb(reply)).SerializeToString()
    reason, message = reply
    refused = pb.Disconnect(reason=int(reason), message=message)  # type: ignore[arg-type]
    return pb.HelloReply(refused=refused).SerializeToString()


def decode_hello_reply(data: bytes) -> NodeInfo:
    """Decode a HelloReply: the NodeInfo, or :class:`IncompatiblePeerError` if refused."""
    msg = pb.HelloReply()
    try:
        msg.ParseFromString(data)
    except _PbDecodeError as exc:
        raise FrameError(f"malformed HelloReply: {exc}") from exc
    which = msg.WhichOneof("result")
    if which == "node_info":
        return _from_pb(msg.node_info)
    if which == "refused":
        reason = DisconnectReason.from_wire(msg.refused.reason)
        raise IncompatiblePeerError(reason.label, f"peer refused us: {msg.refused.message}")
    raise FrameError("HelloReply carries neither node_info nor refused")


def check_compatible(local: NodeInfo, remote: NodeInfo) -> tuple[DisconnectReason, str] | None:
    """``None`` when compatible, else ``(DisconnectReason, human message)``."""
    if remote.network != local.network:
        return (
            DisconnectReason.WRONG_NETWORK,
            f"network {remote.network!r} differs from ours ({local.network!r})",
        )
    if remote.protocol_version // 1000 != local.protocol_version // 1000:
        return (
            DisconnectReason.INCOMPATIBLE_VERSION,
            f"protocol version {remote.protocol_version} is incompatible with "
            f"{local.protocol_version}",
        )
    if not set(remote.channels) & set(local.channels):
        return (DisconnectReason.NO_COMMON_CHANNEL, "no channel in common")
    return None


def check_info_update(current: NodeInfo, update: NodeInfo) -> str | None:
    """``None`` when ``update`` may replace ``current`` (the peer's NodeInfo from its hello or
    its last applied update), else why it is a protocol violation."""
    if update.network != current.network:
        return (
            f"node-info update changes the network from {current.network!r} "
            f"to {update.network!r}"
        )
    if update.protocol_version != current.protocol_version:
        return (
            f"node-info update changes the protocol version from {current.protocol_version} "
            f"to {update.protocol_version}"
        )
    return None


def encode_info_update(info_seq: int, info: NodeInfo) -> bytes:
    """The CONTROL payload announcing ``info`` as this node's NodeInfo number ``info_seq``
    (LocalProtocolError when it exceeds ``MAX_INFO_UPDATE_BYTES``)."""
    return encode_control(InfoUpdate(info_seq, encode_node_info(info)))


def hello_frame(payload: bytes) -> bytes:
    """One length-prefixed hello message."""
    return _LEN.pack(len(payload)) + payload


def hello_length(buffer: bytes | bytearray) -> int:
    """The body length announced by the 4-byte prefix at the start of ``buffer``."""
    (size,) = _LEN.unpack_from(buffer)
    return int(size)


def hello_timeout_error(timeout: float) -> HandshakeTimeout:
    return HandshakeTimeout(f"hello exchange did not finish within {timeout:g} s")
