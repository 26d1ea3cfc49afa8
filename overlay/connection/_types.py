"""Data of the sans-IO connection core: configuration, events, statistics, per-channel state.

Theory of operation
-------------------
A :class:`~overlay.connection._core.ConnectionCore` (see that module for the driver contract and the
protocol invariants) is configured with one :class:`CoreConfig` per connection and one
:class:`ChannelParams` per channel. Both are frozen, slotted dataclasses validated in
``__post_init__``: a bad value raises :class:`~overlay.errors.ConfigError` naming the field, so
a core is never built from an inconsistent configuration.

Everything the core reports is a frozen, slotted event dataclass (the :data:`Event` union),
queued in arrival order and pulled by the driver with ``next_event()`` or ``events()``.
``ConnectionCore.statistics()`` returns an immutable :class:`ConnectionStatistics` snapshot with
one :class:`ChannelStatistics` per channel, sorted by channel id.

The private ``_Channel``, ``_OutMsg``, ``_ControlQueue`` and ``_Pings`` records are the mutable
state shared by the two halves of the core: the send side (``ConnectionCore`` in
``overlay/connection/_core.py``) and the receive side (the ``Receiver`` it owns, in
``overlay/connection/_receive.py``), each handed the same objects at construction. They and the
frame-kind constants are not exported. This module is data only: no I/O, no clock, no zstd.
Every public name here is also importable from ``overlay.connection._core``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from overlay.connection._infosync import PeerInfoReceived
from overlay.errors import ChannelError, ConfigError, ErrorCode
from overlay.wire._frames import HEADER_SIZE
from overlay.wire._messages import DisconnectReason

__all__ = [
    "CancelReceived",
    "ChannelParams",
    "ChannelStatistics",
    "ConnectionState",
    "ConnectionStatistics",
    "CoreConfig",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DisconnectReceived",
    "ErrorReceived",
    "Event",
    "IdleTimeout",
    "LatencyMeasured",
    "MAX_WIRE_FRAME_PAYLOAD",
    "MessageDropped",
    "MessageReceived",
    "PeerInfoReceived",  # defined in overlay.connection._infosync
    "RequestReceived",
    "RequestRejected",
    "ResponseReceived",
]

# Frame kinds (the values of ``FrameKind``), for the core's hot paths.
_MESSAGE, _REQUEST, _RESPONSE, _ERROR, _CANCEL, _CONTROL = 1, 2, 3, 4, 5, 6


DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""Default per-channel message size limit (4 MiB)."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class ConnectionState(enum.Enum):
    """Where a connection is in its life; transitions (``ConnectionCore.state``)::

        OPEN ──send_disconnect(now)──▶ CLOSING ──handle_timer(now ≥ deadline)──▶ ABORTED
          │                              │
          └──peer's Disconnect, connection_lost()──┴──▶ CLOSED

    CLOSING lasts at most ``CoreConfig.close_timeout``: its deadline is the core's timer.
    CLOSED and ABORTED are final; in both the driver stops and closes the transport, and in
    ABORTED it must not wait for any write (the peer is not taking our bytes): it aborts.
    """

    OPEN = "open"
    """Frames flow both ways."""
    CLOSING = "closing"
    """Our Disconnect is queued or being written; nothing else is sent, and the deadline
    (``get_timer()``) bounds how long the driver may spend on it."""
    CLOSED = "closed"
    """Done: our Disconnect was written, or the peer's arrived, or the transport ended."""
    ABORTED = "aborted"
    """The close deadline passed with a write still pending: abort the transport."""

    @property
    def final(self) -> bool:
        """CLOSED or ABORTED: the driver's tasks stop (or have stopped)."""
        return self is ConnectionState.CLOSED or self is ConnectionState.ABORTED


@dataclass(frozen=True, slots=True)
class ChannelParams:
    """Per-channel settings of a connection (both peers should use the same values)."""

    channel_id: int
    """1..65535 (0 is the control channel)."""
    priority: int = 0
    """Higher is sent first; equal priorities share bandwidth round-robin, frame by frame."""
    send_queue_size: int = 16
    """Max queued outgoing messages (of every kind) on this channel before WouldBlock."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """Max payload bytes of one message, both directions."""
    max_concurrent_inbound: int = 32
    """Max active inbound requests from the peer on this channel; more get OVERLOADED."""

    def __post_init__(self) -> None:
        _check(1 <= self.channel_id <= 0xFFFF, "channel_id", "must be in 1..65535")
        _check(self.send_queue_size >= 1, "send_queue_size", "must be >= 1")
        _check(1 <= self.max_message_size < 1 << 31, "max_message_size", "must be in 1..2**31-1")
        _check(self.max_concurrent_inbound >= 1, "max_concurrent_inbound", "must be >= 1")


MAX_WIRE_FRAME_PAYLOAD = 65_519 - HEADER_SIZE
"""The largest frame payload on the wire (65507): a whole frame fits one Noise transport
message. Receivers accept up to this; senders never exceed it."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Connection-level settings of the core."""

    max_frame_payload: int = MAX_WIRE_FRAME_PAYLOAD
    """Payload bytes per frame this side sends (the chunk size), 64..65507. Smaller chunks let a
    high-priority message overtake a bulk transfer sooner. Whatever it is set to, every node
    accepts frames up to :data:`MAX_WIRE_FRAME_PAYLOAD` (a protocol constant, not a setting),
    so nodes with different values interoperate."""
    max_write_batch: int = 65_519
    """Max bytes returned by one ``data_to_send`` call (one frame larger than this is still
    returned alone)."""
    send_rate: float = 0.0
    """Outgoing bytes per second (frame bytes, headers included); 0 = unlimited."""
    send_burst: int = 1 << 20
    """Send bucket capacity (bytes), >= 1. A frame larger than the burst is sent when the
    bucket is full, leaving a debt that is repaid before anything else is sent."""
    recv_rate: float = 0.0
    """Incoming bytes per second before reads are paused; 0 = unlimited."""
    recv_burst: int = 1 << 20
    """Receive bucket capacity (bytes), >= 1."""
    compression_threshold: int = 1024
    """Messages at least this long are zstd-compressed (if negotiated and it helps)."""
    compression_level: int = 3
    """zstd level, 1..22."""
    ping_interval: float = 10.0
    """Seconds of quiet (nothing received) after which we ping (RTT measurement, keeps a quiet
    link alive); a link that carries traffic is not pinged; 0 = never."""
    idle_timeout: float = 30.0
    """Seconds without receiving anything before ``IdleTimeout``; 0 = never. Must exceed
    ``ping_interval`` when both are set (pongs are what keeps a quiet connection alive)."""
    max_outbound_requests: int = 1024
    """Max requests in flight on this connection (send_request raises WouldBlock beyond)."""
    close_timeout: float = 1.0
    """Seconds a closing connection may spend writing its final Disconnect, a write already
    in progress included; then the core moves to ABORTED and the driver aborts the transport.
    > 0."""
    max_control_queue: int = 4096
    """Max queued pongs and automatic error replies; beyond it they are dropped and counted (a
    peer flooding requests or pings while not reading)."""

    def __post_init__(self) -> None:
        _check(64 <= self.max_frame_payload <= MAX_WIRE_FRAME_PAYLOAD, "max_frame_payload",
               f"must be 64..{MAX_WIRE_FRAME_PAYLOAD}")
        _check(self.max_write_batch >= 1, "max_write_batch", "must be >= 1")
        for key in ("send_rate", "recv_rate", "ping_interval", "idle_timeout"):
            value = getattr(self, key)
            _check(_finite(value) and value >= 0, key, "must be a finite number >= 0")
        _check(_finite(self.close_timeout) and self.close_timeout > 0, "close_timeout",
               "must be a finite number > 0")
        _check(self.send_rate == 0 or self.send_burst >= 1, "send_burst", "must be >= 1")
        _check(self.recv_rate == 0 or self.recv_burst >= 1, "recv_burst", "must be >= 1")
        _check(self.compression_threshold >= 0, "compression_threshold", "must be >= 0")
        _check(1 <= self.compression_level <= 22, "compression_level", "must be 1..22")
        _check(
            not (self.ping_interval and self.idle_timeout)
            or self.ping_interval < self.idle_timeout,
            "idle_timeout",
            "must be greater than ping_interval",
        )
        _check(1 <= self.max_outbound_requests <= 1 << 30, "max_outbound_requests", "must be >= 1")
        _check(self.max_control_queue >= 1, "max_control_queue", "must be >= 1")


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete fire-and-forget message."""

    channel_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request is now active: answer it with ``send_response`` or ``send_error``."""

    channel_id: int
    request_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The successful answer to our request ``request_id`` (now no longer in flight)."""

    channel_id: int
    request_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """The error answer to our request ``request_id`` (now no longer in flight)."""

    channel_id: int
    request_id: int
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """The peer cancelled its request; ``send_response`` for it now returns False."""

    channel_id: int
    request_id: int


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """The core answered OVERLOADED itself (``max_concurrent_inbound`` reached)."""

    channel_id: int
    request_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A message nobody can take: unknown channel (requests got NO_HANDLER) or a response to an
    unknown/cancelled request id. Counted, not a protocol violation."""

    channel_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class LatencyMeasured:
    """A pong matched one of our pings: round-trip time in seconds."""

    rtt: float


@dataclass(frozen=True, slots=True)
class DisconnectReceived:
    """The peer is closing the connection (later frames from it are ignored)."""

    reason: DisconnectReason
    """Why (a value this version does not know arrives as ``UNSPECIFIED``)."""
    message: str


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    """Nothing was received for ``idle_timeout`` seconds (reported once per quiet period)."""


Event = (
    MessageReceived
    | RequestReceived
    | ResponseReceived
    | ErrorReceived
    | CancelReceived
    | RequestRejected
    | MessageDropped
    | LatencyMeasured
    | DisconnectReceived
    | IdleTimeout
    | PeerInfoReceived
)


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """Counters of one channel (bytes are uncompressed payload bytes)."""

    channel_id: int
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    queue_depth: int
    """Outgoing messages queued (including one partially sent)."""
    inbound_requests_active: int
    outbound_requests_in_flight: int
    messages_dropped: int
    """Responses to unknown or cancelled requests."""
    requests_rejected: int
    """Inbound requests auto-answered OVERLOADED."""


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """Counters of one connection (bytes are frame bytes on the plaintext stream)."""

    channels: tuple[ChannelStatistics, ...]
    """Sorted by channel id."""
    bytes_in: int
    bytes_out: int
    frames_in: int
    frames_out: int
    rtt_last: float | None
    rtt_ewma: float | None
    control_queue_depth: int
    unknown_channel_dropped: int
    """Messages and requests received on channels we don't have."""
    control_dropped: int
    """Pongs / automatic replies dropped because the control queue was full."""
    outbound_requests_in_flight: int
    inbound_requests_active: int

    def channel(self, channel_id: int) -> ChannelStatistics:
        """The statistics of one channel (ChannelError if there is no such channel)."""
        for stats in self.channels:
            if stats.channel_id == channel_id:
                return stats
        raise ChannelError(f"unknown channel {channel_id}")




# -- state shared by the send side and the receive side of the core -------------------------


class _ControlQueue:
    """CONTROL, CANCEL and automatic ERROR frames waiting to go out ahead of channel data.

    The send side appends CANCEL frames and drains ``frames``; the receive side
    appends the replies the core makes by itself (pongs, NO_HANDLER / OVERLOADED errors), at
    most ``limit`` queued (beyond it they are dropped and counted in ``dropped``) and none once
    ``closed`` (set when the connection leaves OPEN; the queue is then emptied)."""

    __slots__ = ("closed", "dropped", "frames", "limit")

    def __init__(self, limit: int) -> None:
        self.frames: list[bytes] = []
        self.limit = limit
        self.dropped = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.frames.clear()


class _Pings:
    """Our pings awaiting their pong (nonce → time sent) and the round-trip times measured:
    the send side records a ping when it leaves, the receive side matches the pong."""

    __slots__ = ("rtt_ewma", "rtt_last", "sent")

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.rtt_last: float | None = None
        self.rtt_ewma: float | None = None




class _OutMsg:
    """A queued outgoing message (whole; ``offset`` bytes of ``data`` already sent).

    A broadcast queues *one* entry in every connection (``channel`` None, one frame, never
    compressed): ``data_to_send`` then only reads it; ``offset`` moves only while a message
    goes out in several frames, and ``queued`` matters only for requests (which are never
    shared)."""

    __slots__ = ("channel", "data", "flags", "kind", "offset", "queued", "request_id", "size")

    def __init__(
        self, channel: _Channel | None, kind: int, request_id: int, data: bytes, flags: int,
        size: int,
    ) -> None:
        self.channel = channel
        self.kind = kind
        self.request_id = request_id
        self.data: bytes | memoryview = data
        self.flags = flags
        self.size = size  # uncompressed payload size, for statistics
        self.offset = 0
        self.queued = True  # still in channel.queue (not fully sent, not dropped)


class _Channel:
    __slots__ = (
        "active",
        "bytes_received",
        "bytes_sent",
        "dropped",
        "id",
        "inbound_active",
        "level",
        "max_inbound",
        "max_size",
        "messages_received",
        "messages_sent",
        "outbound_in_flight",
        "params",
        "queue",
        "queue_size",
        "rejected",
    )

    def __init__(self, params: ChannelParams, level: list[_Channel]) -> None:
        self.params = params
        self.id = params.channel_id
        self.queue: list[_OutMsg] = []
        self.queue_size = params.send_queue_size
        self.max_size = params.max_message_size
        self.max_inbound = params.max_concurrent_inbound
        self.level = level  # round-robin ring of this priority; holds us while ``active``
        self.active = False
        self.messages_sent = self.bytes_sent = 0
        self.messages_received = self.bytes_received = 0
        self.inbound_active = self.outbound_in_flight = 0
        self.dropped = self.rejected = 0
