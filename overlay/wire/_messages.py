"""Codecs for the protobuf payloads of ERROR and CONTROL frames.

Theory of operation
-------------------
The generated ``proto.overlay_pb2`` classes never leave this module: callers get frozen
dataclasses (:class:`ErrorPayload`, :class:`Ping`, :class:`Pong`, :class:`Disconnect`,
:class:`InfoUpdate`) and ``IntEnum`` codes. Every decoder turns *any* malformed input into
:class:`~overlay.errors.FrameError` (the bytes came from the peer). Encoders are total on valid
dataclasses: text is truncated at a UTF-8 character boundary to a fixed byte budget so that an
error or disconnect payload always fits in one small frame.

Forward compatibility: an error code this version does not know decodes as
``ErrorCode.UNKNOWN``, a disconnect reason as ``DisconnectReason.UNSPECIFIED``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.message import DecodeError as _PbDecodeError

from overlay.errors import ErrorCode, FrameError, LocalProtocolError
from proto import overlay_pb2 as _pb

__all__ = [
    "ControlMessage",
    "Disconnect",
    "DisconnectReason",
    "ErrorPayload",
    "InfoUpdate",
    "MAX_DISCONNECT_MESSAGE_BYTES",
    "MAX_ERROR_MESSAGE_BYTES",
    "MAX_INFO_UPDATE_BYTES",
    "Ping",
    "Pong",
    "decode_control",
    "decode_error",
    "encode_control",
    "encode_error",
    "truncate_utf8",
]

MAX_ERROR_MESSAGE_BYTES = 1024
"""ERROR messages are truncated to this many UTF-8 bytes when encoded."""
MAX_DISCONNECT_MESSAGE_BYTES = 256
"""Disconnect messages are truncated to this many UTF-8 bytes when encoded."""

MAX_INFO_UPDATE_BYTES = 32768
"""Largest CONTROL payload carrying a node-info update; a larger one is a protocol violation
(and :func:`encode_control` refuses to make one)."""

_U64 = (1 << 64) - 1
_I32_MAX = (1 << 31) - 1


class DisconnectReason(enum.IntEnum):
    """Why a connection is closed: the values of the ``DisconnectReason`` enum of
    proto/overlay.proto (wire values, stable; a test checks they match).

    This is the only definition (``overlay.wire._nodeinfo`` re-exports it). A value this version
    does not know decodes as ``UNSPECIFIED`` (:meth:`from_wire`), as an unknown error code
    decodes as ``ErrorCode.UNKNOWN``. :attr:`label` is the short name used in logs and metrics.
    """

    UNSPECIFIED = 0
    SHUTDOWN = 1
    WRONG_NETWORK = 2
    INCOMPATIBLE_VERSION = 3
    NO_COMMON_CHANNEL = 4
    PROTOCOL_VIOLATION = 5
    TOO_MANY_PEERS = 6
    BANNED = 7
    DUPLICATE = 8
    EVICTED = 9
    OPERATOR = 10
    IDLE_TIMEOUT = 11
    SELF = 12

    @classmethod
    def from_wire(cls, value: int) -> DisconnectReason:
        """The member for a received value; ``UNSPECIFIED`` for one this version does not know."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED

    @property
    def label(self) -> str:
        """Short lowercase name for logs and metrics, e.g. ``wrong_network``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class ErrorPayload:
    """The payload of an ERROR frame."""

    code: ErrorCode
    """What kind of failure (unknown wire values decode as ``ErrorCode.UNKNOWN``)."""
    message: str
    """Human-readable detail (may be empty)."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Control: please answer with a Pong carrying the same nonce."""

    nonce: int
    """u64 chosen by the pinger."""


@dataclass(frozen=True, slots=True)
class Pong:
    """Control: the answer to a Ping."""

    nonce: int
    """The nonce of the Ping being answered."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Control: the sender is closing the connection; nothing follows it."""

    reason: DisconnectReason
    """Why (an unknown received value decodes as ``UNSPECIFIED``)."""
    message: str
    """Human-readable detail (may be empty)."""


@dataclass(frozen=True, slots=True)
class InfoUpdate:
    """Control: the sender's NodeInfo changed; ``node_info`` replaces the one it sent before.

    ``node_info`` is the encoded ``NodeInfo`` protobuf, kept opaque at this level (decode it
    with ``overlay.wire._nodeinfo.decode_node_info``)."""

    info_seq: int
    """u64, strictly increasing per sender; the hello counts as 0."""
    node_info: bytes
    """The encoded NodeInfo."""


ControlMessage = Ping | Pong | Disconnect | InfoUpdate


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``max_bytes`` bytes at a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data
    return data[:max_bytes].decode("utf-8", "ignore").encode("utf-8")


def _text(text: str, max_bytes: int) -> str:
    data = truncate_utf8(text, max_bytes)
    return data.decode("utf-8")


def encode_error(
    code: ErrorCode, message: str, *, max_message_bytes: int = MAX_ERROR_MESSAGE_BYTES
) -> bytes:
    """Encode an ERROR payload; ``message`` is truncated to ``max_message_bytes`` UTF-8 bytes
    (at most :data:`MAX_ERROR_MESSAGE_BYTES`). The encoding is at most 5 bytes longer than the
    truncated text; with an empty text it is 2 bytes (the code's field), or 0 bytes for code
    ``UNKNOWN`` (proto3 omits default values)."""
    budget = max(0, min(max_message_bytes, MAX_ERROR_MESSAGE_BYTES))
    pb = _pb.ErrorResponse(code=int(code), message=_text(message, budget))  # type: ignore[arg-type]
    return pb.SerializeToString()


def decode_error(data: bytes) -> ErrorPayload:
    """Decode an ERROR payload; FrameError if it is not a valid ``ErrorResponse``."""
    pb = _pb.ErrorResponse()
    try:
        pb.ParseFromString(data)
    except (_PbDecodeError, ValueError) as exc:
        raise FrameError(f"malformed ERROR payload: {exc}") from None
    raw = int(pb.code)
    try:
        code = ErrorCode(raw)
    except ValueError:
        code = ErrorCode.UNKNOWN
    return ErrorPayload(code, pb.message)


def encode_control(
    message: ControlMessage, *, max_message_bytes: int = MAX_DISCONNECT_MESSAGE_BYTES
) -> bytes:
    """Encode a CONTROL payload (a disconnect message is truncated to ``max_message_bytes``,
    at most :data:`MAX_DISCONNECT_MESSAGE_BYTES`; the rest of the payload takes ≤ 16 bytes).
    An :class:`InfoUpdate` larger than :data:`MAX_INFO_UPDATE_BYTES` raises
    :class:`~overlay.errors.LocalProtocolError`."""
    pb = _pb.Control()
    if isinstance(message, Ping):
        pb.ping.nonce = message.nonce & _U64
    elif isinstance(message, Pong):
        pb.pong.nonce = message.nonce & _U64
    elif isinstance(message, InfoUpdate):
        if not 0 < message.info_seq <= _U64:
            raise LocalProtocolError(f"info_seq must be in 1..2**64-1, not {message.info_seq}")
        pb.node_info_update.info_seq = message.info_seq
        try:
            pb.node_info_update.node_info.MergeFromString(message.node_info)
        except (_PbDecodeError, ValueError) as exc:
            raise LocalProtocolError(f"not an encoded NodeInfo: {exc}") from None
        data = pb.SerializeToString()
        if len(data) > MAX_INFO_UPDATE_BYTES:
            raise LocalProtocolError(
                f"node-info update of {len(data)} bytes exceeds {MAX_INFO_UPDATE_BYTES}"
            )
        return data
    else:
        reason = int(message.reason)
        pb.disconnect.reason = reason if -_I32_MAX - 1 <= reason <= _I32_MAX else 0  # type: ignore[assignment]
        budget = max(0, min(max_message_bytes, MAX_DISCONNECT_MESSAGE_BYTES))
        pb.disconnect.message = _text(message.message, budget)
    return pb.SerializeToString()


def decode_control(data: bytes) -> ControlMessage:
    """Decode a CONTROL payload; FrameError if malformed or if it carries no known message."""
    pb = _pb.Control()
    try:
        pb.ParseFromString(data)
    except (_PbDecodeError, ValueError) as exc:
        raise FrameError(f"malformed CONTROL payload: {exc}") from None
    which = pb.WhichOneof("kind")
    if which == "ping":
        return Ping(pb.ping.nonce)
    if which == "pong":
        return Pong(pb.pong.nonce)
    if which == "disconnect":
        return Disconnect(DisconnectReason.from_wire(pb.disconnect.reason), pb.disconnect.message)
    if which == "node_info_update":
        if len(data) > MAX_INFO_UPDATE_BYTES:
            raise FrameError(
                f"node-info update of {len(data)} bytes exceeds {MAX_INFO_UPDATE_BYTES}"
            )
        update = pb.node_info_update
        if update.info_seq == 0:
            raise FrameError("node-info update with info_seq 0 (the hello is 0)")
        if not update.HasField("node_info"):
            raise FrameError("node-info update without a NodeInfo")
        return InfoUpdate(int(update.info_seq), update.node_info.SerializeToString())
    raise FrameError("CONTROL payload carries no known message")
