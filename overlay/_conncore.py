"""The sans-IO connection core: channels, priorities, chunking, requests, rate limits, pings.

Theory of operation
-------------------
A :class:`ConnectionCore` is the whole per-connection protocol state machine, above an already
authenticated and encrypted byte stream (it sees plaintext) and below the node's async driver.
It never does I/O, never reads a clock and never awaits: the driver feeds it received bytes and
the current time, pulls bytes to write and events to dispatch, and sleeps until ``get_timer()``.

Driver loop (contract)::

    core.receive_data(data, now)        # may raise RemoteProtocolError: send_disconnect + close
    for event in core.events(): ...     # or next_event() until None
    wire = core.data_to_send(now)       # repeat until b"" (each call: one write batch)
    core.receive_paused_until(now)      # don't read again before this time (receive rate limit)
    core.get_timer() / core.handle_timer(now)
    # after any send_*/cancel_* call or handle_timer: call data_to_send again.

Outgoing side. Each channel has a FIFO of whole messages bounded by ``send_queue_size`` (requests,
messages, responses and errors alike: backpressure applies to responders too); a full queue raises
:class:`~overlay.errors.WouldBlock`. ``data_to_send`` emits *one frame at a time*: first the
control queue (pings, pongs, cancels, automatic error replies), then the highest-priority channel
with queued data, rotating round-robin among channels of equal priority after every frame. A
message longer than ``max_frame_payload`` goes out as consecutive chunks (MORE on all but the
last); since a channel's queue is FIFO and only its head is ever in progress, chunks of two
messages of one channel never interleave. So a new high-priority message waits at most for one
chunk of a bulk low-priority message. Frames are concatenated into a batch of at most
``max_write_batch`` bytes (always at least one frame) and only while the send token bucket holds
enough tokens for the whole next frame; a frame larger than ``send_burst`` waits for a full
bucket and leaves a debt. When the bucket holds ``data_to_send`` back, ``get_timer`` includes the
exact refill time. After ``send_disconnect`` only the disconnect frame is sent (not rate
limited), then ``b""`` forever; ``send_*`` then raise ConnectionClosed (responses return False).

Requests. Outbound request ids come from a wrapping u32 counter skipping ids in flight, so an id
is not reused until ~4e9 requests later: a late response to a cancelled request can never be
mistaken for the answer to a newer one; it is dropped and reported as ``MessageDropped``. At most
``max_outbound_requests`` are in flight. ``cancel_request`` drops a request that has not started
to go out; a partially or fully sent one gets a CANCEL frame (and its unsent chunks are dropped:
the receiver discards the partial reassembly when the CANCEL arrives). Inbound requests are
*active* from their last chunk until answered (``send_response``/``send_error``) or cancelled by
the peer; at most ``max_concurrent_inbound`` per channel, beyond which the core answers ERROR
OVERLOADED itself and reports ``RequestRejected``. A response that already started going out is
always completed (the peer discards it if it had cancelled).

Incoming side. Frames are reassembled per channel; while a reassembly is in progress the next
frame on that channel must have the same kind, request id and COMPRESSED flag, and the total is
checked against the channel's ``max_message_size`` before appending. Frames on channels we don't
have, and responses to unknown request ids, are reassembled in *discard* mode (counted, not
buffered). Decompression is refused unless the zstd header states a content size within the
channel limit (no zip bombs). Every violation raises :class:`~overlay.errors.FrameError` and the
core stays failed (later ``receive_data`` calls raise the same error); events of the frames
before the violation are still queued. Pings are answered with pongs automatically; after the
peer's disconnect, received bytes are ignored.

Events are produced in arrival order and pulled with ``next_event()`` or ``events()``. The
receive rate limit is advisory: ``receive_data`` always processes what it is given and charges
it to the bucket; ``receive_paused_until`` tells the driver when to read again.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard

from overlay._frames import (
    FLAG_COMPRESSED,
    FLAG_MORE,
    HEADER,
    HEADER_SIZE,
    Discarded,
    FrameDecoder,
    MessageAssembler,
)
from overlay._ratelimit import TokenBucket
from overlay._wire import (
    Disconnect,
    Ping,
    Pong,
    decode_control,
    decode_error,
    encode_control,
    encode_error,
)
from overlay.errors import (
    ChannelError,
    ConfigError,
    ConnectionClosed,
    ErrorCode,
    FrameError,
    LocalProtocolError,
    MessageTooLarge,
    RemoteProtocolError,
    WouldBlock,
)

__all__ = [
    "CancelReceived",
    "ChannelParams",
    "ChannelStatistics",
    "ConnectionCore",
    "ConnectionStatistics",
    "CoreConfig",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DisconnectReceived",
    "ErrorReceived",
    "Event",
    "IdleTimeout",
    "LatencyMeasured",
    "MessageDropped",
    "MessageReceived",
    "RequestReceived",
    "RequestRejected",
    "ResponseReceived",
]

logger = logging.getLogger(__name__)

_MESSAGE, _REQUEST, _RESPONSE, _ERROR, _CANCEL, _CONTROL = 1, 2, 3, 4, 5, 6
_MAX_RID = 0xFFFFFFFF
_MAX_PINGS = 16  # outstanding pings remembered for RTT matching
_RTT_ALPHA = 0.125  # EWMA weight of a new RTT sample (as TCP's SRTT)
_pack = HEADER.pack


DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""Default per-channel message size limit (4 MiB)."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


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


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Connection-level settings of the core."""

    max_frame_payload: int = 65_519 - HEADER_SIZE
    """Max payload bytes per frame (chunk size), 64..16 MiB; larger frames from the peer are a
    protocol violation (peers must agree on it). The default makes one frame fit one Noise
    transport message."""
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
    """Seconds between pings (RTT measurement, keeps the peer's idle timer fed); 0 = never."""
    idle_timeout: float = 30.0
    """Seconds without receiving anything before ``IdleTimeout``; 0 = never. Must exceed
    ``ping_interval`` when both are set (pongs are what keeps a quiet connection alive)."""
    max_outbound_requests: int = 1024
    """Max requests in flight on this connection (send_request raises WouldBlock beyond)."""
    max_control_queue: int = 4096
    """Max queued pongs and automatic error replies; beyond it they are dropped and counted (a
    peer flooding requests or pings while not reading)."""

    def __post_init__(self) -> None:
        _check(64 <= self.max_frame_payload <= 1 << 24, "max_frame_payload", "must be 64..16 MiB")
        _check(self.max_write_batch >= 1, "max_write_batch", "must be >= 1")
        for key in ("send_rate", "recv_rate", "ping_interval", "idle_timeout"):
            value = getattr(self, key)
            _check(_finite(value) and value >= 0, key, "must be a finite number >= 0")
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

    reason: int
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


class _OutMsg:
    """A queued outgoing message (whole; ``offset`` bytes of ``data`` already sent)."""

    __slots__ = ("channel", "data", "flags", "kind", "offset", "queued", "request_id", "size")

    def __init__(
        self, channel: _Channel, kind: int, request_id: int, data: bytes, flags: int, size: int
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

    def __init__(self, params: ChannelParams, level: deque[_Channel]) -> None:
        self.params = params
        self.id = params.channel_id
        self.queue: deque[_OutMsg] = deque()
        self.queue_size = params.send_queue_size
        self.max_size = params.max_message_size
        self.max_inbound = params.max_concurrent_inbound
        self.level = level  # round-robin ring of this priority; holds us while ``active``
        self.active = False
        self.messages_sent = self.bytes_sent = 0
        self.messages_received = self.bytes_received = 0
        self.inbound_active = self.outbound_in_flight = 0
        self.dropped = self.rejected = 0


class ConnectionCore:
    """Per-connection protocol state; see the module docstring for the driver contract."""

    def __init__(
        self,
        config: CoreConfig,
        channels: Sequence[ChannelParams],
        *,
        now: float,
        compression: bool = False,
    ) -> None:
        self._config = config
        self._max_payload = config.max_frame_payload
        self._max_batch = config.max_write_batch
        by_priority: dict[int, deque[_Channel]] = {}
        self._channels: dict[int, _Channel] = {}
        for params in channels:
            if params.channel_id in self._channels:
                raise ChannelError(f"duplicate channel id {params.channel_id}")
            level = by_priority.setdefault(params.priority, deque())
            self._channels[params.channel_id] = _Channel(params, level)
        self._levels = [by_priority[p] for p in sorted(by_priority, reverse=True)]
        self._unknown_limit = max(
            [ch.max_size for ch in self._channels.values()] + [DEFAULT_MAX_MESSAGE_SIZE]
        )
        self._ctrl: deque[bytes] = deque()
        self._disconnect_frame: bytes | None = None
        self._closing = False  # send_disconnect was called
        self._outbound: dict[int, _OutMsg] = {}
        self._next_rid = 1
        self._inbound: dict[int, _Channel] = {}
        self._assembler = MessageAssembler()
        self._events: deque[Event] = deque()
        self._decoder = FrameDecoder(config.max_frame_payload, compression=compression)
        self._error: RemoteProtocolError | None = None
        self._peer_disconnected = False
        self._send_bucket = TokenBucket(config.send_rate, config.send_burst, now)
        self._recv_bucket = TokenBucket(config.recv_rate, config.recv_burst, now)
        self._send_blocked = 0  # size of the frame the send bucket could not pay for
        self._compression = compression
        self._cctx: zstandard.ZstdCompressor | None = None
        self._dctx: zstandard.ZstdDecompressor | None = None
        if compression:
            self._cctx = zstandard.ZstdCompressor(
                level=config.compression_level, write_content_size=True
            )
            window_log = max(10, min(31, math.ceil(math.log2(self._unknown_limit))))
            self._dctx = zstandard.ZstdDecompressor(max_window_size=1 << window_log)
        self._last_recv = now
        self._idle_fired = False
        self._next_ping = now + config.ping_interval if config.ping_interval > 0 else math.inf
        self._ping_seq = 0
        self._ping_due = 0  # nonce of a ping to send next (stamped when it is actually sent)
        self._pings: dict[int, float] = {}  # nonce -> time the ping was handed to the driver
        self._rtt_last: float | None = None
        self._rtt_ewma: float | None = None
        self._bytes_in = self._bytes_out = 0
        self._frames_in = self._frames_out = 0
        self._unknown_dropped = 0
        self._control_dropped = 0

    # ------------------------------------------------------------------ properties

    @property
    def compression(self) -> bool:
        """Whether zstd compression was negotiated for this connection."""
        return self._compression

    @property
    def closing(self) -> bool:
        """True once ``send_disconnect`` was called (nothing but the disconnect is sent)."""
        return self._closing

    @property
    def idle_expired(self) -> bool:
        """True from the moment ``handle_timer`` emitted IdleTimeout until data arrives."""
        return self._idle_fired

    @property
    def peer_disconnected(self) -> bool:
        """True once the peer's disconnect arrived (later received frames are ignored)."""
        return self._peer_disconnected

    # ------------------------------------------------------------------ outgoing

    @property
    def wants_write(self) -> bool:
        """Whether ``data_to_send`` has something to hand out now (rate limits aside)."""
        if self._closing:
            return self._disconnect_frame is not None
        return bool(self._ctrl) or bool(self._ping_due) or any(self._levels)

    def _channel(self, channel_id: int) -> _Channel:
        ch = self._channels.get(channel_id)
        if ch is None:
            raise ChannelError(f"unknown channel {channel_id}")
        return ch

    def has_space(self, channel_id: int) -> bool:
        """Whether one more message fits in the channel's send queue (True once closing, so
        waiters wake up and see ``ConnectionClosed``)."""
        ch = self._channel(channel_id)
        return self._closing or len(ch.queue) < ch.queue_size

    def _check_open(self) -> None:
        if self._closing:
            raise ConnectionClosed("the connection is closing")

    def _enqueue(self, ch: _Channel, kind: int, request_id: int, payload: bytes) -> _OutMsg:
        size = len(payload)
        if size > ch.max_size:
            raise MessageTooLarge(
                f"{size}-byte message exceeds channel {ch.id}'s maximum of {ch.max_size}"
            )
        if len(ch.queue) >= ch.queue_size:
            raise WouldBlock(f"send queue of channel {ch.id} is full")
        if type(payload) is not bytes:
            payload = bytes(payload)
        flags = 0
        data = payload
        if self._cctx is not None and size >= self._config.compression_threshold:
            packed = self._cctx.compress(payload)
            if len(packed) < size:
                data, flags = packed, FLAG_COMPRESSED
        msg = _OutMsg(ch, kind, request_id, data, flags, size)
        if len(data) > self._max_payload:
            msg.data = memoryview(data)  # chunks are sliced without copying
        ch.queue.append(msg)
        if not ch.active:
            ch.active = True
            ch.level.append(ch)
        return msg

    def send_message(self, channel_id: int, payload: bytes) -> None:
        """Queue a fire-and-forget message (WouldBlock / MessageTooLarge / ChannelError)."""
        ch = self._channel(channel_id)
        self._check_open()
        self._enqueue(ch, _MESSAGE, 0, payload)

    def send_request(self, channel_id: int, payload: bytes) -> int:
        """Queue a request; return its id. WouldBlock also at ``max_outbound_requests``."""
        ch = self._channel(channel_id)
        self._check_open()
        if len(self._outbound) >= self._config.max_outbound_requests:
            raise WouldBlock("too many outbound requests in flight")
        rid = self._next_rid
        while rid in self._outbound:
            rid = rid % _MAX_RID + 1
        msg = self._enqueue(ch, _REQUEST, rid, payload)
        self._next_rid = rid % _MAX_RID + 1
        self._outbound[rid] = msg
        ch.outbound_in_flight += 1
        return rid

    def _answer(self, channel_id: int, request_id: int, kind: int, payload: bytes) -> bool:
        ch = self._channel(channel_id)
        if self._closing or self._inbound.get(request_id) is not ch:
            return False
        self._enqueue(ch, kind, request_id, payload)
        del self._inbound[request_id]
        ch.inbound_active -= 1
        return True

    def send_response(self, channel_id: int, request_id: int, payload: bytes) -> bool:
        """Answer an active inbound request; False (nothing sent) if unknown or cancelled."""
        return self._answer(channel_id, request_id, _RESPONSE, payload)

    def send_error(self, channel_id: int, request_id: int, code: ErrorCode, message: str) -> bool:
        """Answer an active inbound request with an error (``message`` is truncated to fit)."""
        ch = self._channel(channel_id)
        payload = encode_error(code, message, max_message_bytes=ch.max_size - 6)
        return self._answer(channel_id, request_id, _ERROR, payload)

    def cancel_request(self, request_id: int) -> None:
        """Forget an outbound request; tell the peer unless none of it was sent yet."""
        msg = self._outbound.pop(request_id, None)
        if msg is None:
            return
        ch = msg.channel
        ch.outbound_in_flight -= 1
        if self._closing:
            return
        if msg.queued:
            msg.queued = False
            if msg.offset == 0:  # no frame of it went out yet: just forget it
                ch.queue.remove(msg)
                return
            # Partially sent, hence at the head: drop the rest; the CANCEL makes the receiver
            # discard its partial reassembly.
            ch.queue.popleft()
        self._ctrl.append(_pack(8, _CANCEL, 0, ch.id, request_id))

    def send_disconnect(self, reason: int, message: str) -> None:
        """Send a CONTROL disconnect next and nothing after it (idempotent: first one wins)."""
        if self._closing:
            return
        if not -(1 << 31) <= reason < (1 << 31):
            raise LocalProtocolError(f"disconnect reason out of range: {reason}")
        payload = encode_control(
            Disconnect(reason, message), max_message_bytes=self._max_payload - 16
        )
        self._disconnect_frame = _pack(len(payload) + 8, _CONTROL, 0, 0, 0) + payload
        self._closing = True
        self._ctrl.clear()
        self._ping_due = 0
        self._pings.clear()
        for level in self._levels:
            for ch in level:
                ch.active = False
            level.clear()
        for ch in self._channels.values():
            for msg in ch.queue:
                msg.queued = False
            ch.queue.clear()

    def _pick(self) -> _Channel | None:
        for level in self._levels:
            while level:
                ch = level[0]
                if ch.queue:
                    return ch
                level.popleft()
                ch.active = False
        return None

    def data_to_send(self, now: float) -> bytes:
        """The next write batch (whole frames, ≤ max_write_batch unless one frame is larger);
        ``b""`` when nothing is ready or the send rate limit forbids the next frame."""
        self._send_blocked = 0
        if self._closing:
            frame, self._disconnect_frame = self._disconnect_frame, None
            if frame is None:
                return b""
            self._bytes_out += len(frame)
            self._frames_out += 1
            return frame
        out: list[bytes | memoryview] = []
        used = 0
        cap = self._max_batch
        bucket = self._send_bucket
        tokens = bucket.available(now) + 1e-6
        burst = bucket.burst  # a frame above the burst goes out alone, from a full bucket
        ctrl = self._ctrl
        max_payload = self._max_payload
        frames = 0
        if self._ping_due:
            nonce = self._ping_due
            ping = encode_control(Ping(nonce))
            size = len(ping) + HEADER_SIZE
            if size > tokens and tokens < burst:
                self._send_blocked = min(size, burst)
                return b""
            self._ping_due = 0
            out.append(_pack(size - 4, _CONTROL, 0, 0, 0) + ping)
            used = size
            frames = 1
            if len(self._pings) >= _MAX_PINGS:
                del self._pings[next(iter(self._pings))]
            self._pings[nonce] = now  # RTT counts from when the ping leaves, not when it is due
        while True:
            if ctrl:
                frame = ctrl[0]
                size = len(frame)
                if used + size > tokens and (used or tokens < burst):
                    self._send_blocked = min(size, burst)
                    break
                if used and used + size > cap:
                    break
                ctrl.popleft()
                out.append(frame)
                used += size
                frames += 1
                continue
            ch = self._pick()
            if ch is None:
                break
            msg = ch.queue[0]
            data = msg.data
            offset = msg.offset
            n = len(data) - offset
            more = 0
            if n > max_payload:
                n = max_payload
                more = FLAG_MORE
            size = n + HEADER_SIZE
            if used + size > tokens and (used or tokens < burst):
                self._send_blocked = min(size, burst)
                break
            if used and used + size > cap:
                break
            out.append(_pack(n + 8, msg.kind, msg.flags | more, ch.id, msg.request_id))
            out.append(data if (n == len(data)) else data[offset : offset + n])
            used += size
            frames += 1
            level = ch.level
            level.popleft()
            if more:
                msg.offset = offset + n
            else:
                msg.offset = len(data)
                msg.queued = False
                ch.queue.popleft()
                ch.messages_sent += 1
                ch.bytes_sent += msg.size
                if not ch.queue:
                    ch.active = False
                    continue
            level.append(ch)
        if not out:
            return b""
        bucket.consume(used, now)
        self._bytes_out += used
        self._frames_out += frames
        return b"".join(out)

    # ------------------------------------------------------------------ incoming

    def receive_data(self, data: bytes, now: float) -> None:
        """Parse received plaintext; queue events. Raises FrameError (or another
        RemoteProtocolError) on a violation; the core then stays failed."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        n = len(data)
        self._bytes_in += n
        self._last_recv = now
        self._idle_fired = False
        self._recv_bucket.consume(n, now)
        if self._peer_disconnected:
            return
        decoder = self._decoder
        channels = self._channels
        partial = self._assembler.partial
        append = self._events.append
        try:
            decoder.feed(data)
            while frames := decoder.drain_raw():
                self._frames_in += len(frames)
                for kind, flags, channel_id, request_id, payload in frames:
                    if kind == _MESSAGE and not flags:  # fast path: a whole plain message
                        ch = channels.get(channel_id)
                        if ch is not None and channel_id not in partial:
                            size = len(payload)
                            if size > ch.max_size:
                                raise FrameError(
                                    f"message on channel {channel_id} exceeds {ch.max_size} bytes"
                                )
                            ch.messages_received += 1
                            ch.bytes_received += size
                            append(MessageReceived(channel_id, payload))
                            continue
                    if kind == _CONTROL:
                        self._on_control(payload, now)
                        if self._peer_disconnected:
                            return
                    elif kind == _CANCEL:
                        self._on_cancel(channel_id, request_id)
                    else:
                        self._on_data(kind, flags, channel_id, request_id, payload)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _on_control(self, payload: bytes, now: float) -> None:
        msg = decode_control(payload)
        if isinstance(msg, Ping):
            if len(self._ctrl) >= self._config.max_control_queue:
                self._control_dropped += 1
                logger.debug("control queue full: not answering a ping")
                return
            if not self._closing:
                pong = encode_control(Pong(msg.nonce))
                self._ctrl.append(_pack(len(pong) + 8, _CONTROL, 0, 0, 0) + pong)
        elif isinstance(msg, Pong):
            sent = self._pings.pop(msg.nonce, None)
            if sent is None:
                return
            rtt = max(0.0, now - sent)
            self._rtt_last = rtt
            ewma = self._rtt_ewma
            self._rtt_ewma = rtt if ewma is None else ewma + _RTT_ALPHA * (rtt - ewma)
            self._events.append(LatencyMeasured(rtt))
        else:
            self._peer_disconnected = True
            self._events.append(DisconnectReceived(msg.reason, msg.message))

    def _on_cancel(self, channel_id: int, request_id: int) -> None:
        ch = self._inbound.get(request_id)
        if ch is not None:
            if ch.id != channel_id:
                raise FrameError(
                    f"CANCEL of request {request_id} on channel {channel_id}, "
                    f"but it arrived on channel {ch.id}"
                )
            del self._inbound[request_id]
            ch.inbound_active -= 1
            self._events.append(CancelReceived(channel_id, request_id))
            return
        # The requester may have aborted a partially sent request: drop our partial copy.
        self._assembler.abort(channel_id, _REQUEST, request_id)
        # otherwise: already answered (or never seen); a harmless race, ignored

    def _on_data(
        self, kind: int, flags: int, channel_id: int, request_id: int, payload: bytes
    ) -> None:
        ch = self._channels.get(channel_id)
        if ch is None:
            whole = self._assembler.add(
                kind, flags, channel_id, request_id, payload, limit=self._unknown_limit, keep=False
            )
        else:
            keep = kind <= _REQUEST or request_id in self._outbound
            whole = self._assembler.add(
                kind, flags, channel_id, request_id, payload, limit=ch.max_size, keep=keep
            )
        if whole is not None:
            self._deliver(ch, kind, channel_id, request_id, whole, bool(flags & FLAG_COMPRESSED))

    def _decompress(self, data: bytes, limit: int) -> bytes:
        assert self._dctx is not None  # the decoder refuses COMPRESSED frames otherwise
        try:
            size = zstandard.get_frame_parameters(data).content_size
            if size > limit:  # includes CONTENTSIZE_UNKNOWN (2**64 - 1)
                raise FrameError(f"compressed message declares {size} bytes (limit {limit})")
            out = self._dctx.decompress(data, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise FrameError(f"bad compressed message: {exc}") from None
        if len(out) != size:
            raise FrameError("compressed message size mismatch")
        return out

    def _deliver(
        self,
        ch: _Channel | None,
        kind: int,
        channel_id: int,
        request_id: int,
        payload: bytes | Discarded,
        compressed: bool,
    ) -> None:
        events = self._events
        if ch is None:
            self._unknown_dropped += 1
            if kind == _REQUEST:  # (no text: the peer's size limit for this channel is unknown)
                self._auto_error(channel_id, request_id, ErrorCode.NO_HANDLER, "", 0)
            events.append(MessageDropped(channel_id, "unknown channel"))
            return
        if kind == _MESSAGE or kind == _REQUEST:
            assert isinstance(payload, bytes)
            if compressed:
                payload = self._decompress(payload, ch.max_size)
            ch.messages_received += 1
            ch.bytes_received += len(payload)
            if kind == _MESSAGE:
                events.append(MessageReceived(channel_id, payload))
                return
            if request_id in self._inbound:
                raise FrameError(f"duplicate request id {request_id} still active")
            if ch.inbound_active >= ch.max_inbound:
                ch.rejected += 1
                self._auto_error(
                    channel_id,
                    request_id,
                    ErrorCode.OVERLOADED,
                    "too many concurrent requests",
                    ch.max_size - 6,
                )
                events.append(
                    RequestRejected(channel_id, request_id, "max_concurrent_inbound reached")
                )
                return
            self._inbound[request_id] = ch
            ch.inbound_active += 1
            events.append(RequestReceived(channel_id, request_id, payload))
            return
        # RESPONSE or ERROR
        msg = self._outbound.get(request_id)
        if msg is None or isinstance(payload, Discarded):
            ch.dropped += 1
            events.append(MessageDropped(channel_id, "response to an unknown request id"))
            return
        if msg.channel is not ch:
            raise FrameError(
                f"response to request {request_id} on channel {channel_id}, "
                f"sent on channel {msg.channel.id}"
            )
        if compressed:
            payload = self._decompress(payload, ch.max_size)
        error = decode_error(payload) if kind == _ERROR else None
        del self._outbound[request_id]
        ch.outbound_in_flight -= 1
        ch.messages_received += 1
        ch.bytes_received += len(payload)
        if error is None:
            events.append(ResponseReceived(channel_id, request_id, payload))
        else:
            events.append(ErrorReceived(channel_id, request_id, error.code, error.message))

    def _auto_error(
        self, channel_id: int, request_id: int, code: ErrorCode, text: str, budget: int
    ) -> None:
        if self._closing:
            return
        if len(self._ctrl) >= self._config.max_control_queue:
            self._control_dropped += 1
            logger.debug("control queue full: not sending %s for request %d", code.name, request_id)
            return
        payload = encode_error(code, text, max_message_bytes=budget)
        self._ctrl.append(_pack(len(payload) + 8, _ERROR, 0, channel_id, request_id) + payload)

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """All pending events, oldest first (drains the queue)."""
        out = list(self._events)
        self._events.clear()
        return out

    def receive_paused_until(self, now: float) -> float | None:
        """When reading may resume (receive rate limit), or None if it may now."""
        bucket = self._recv_bucket
        if bucket.can_consume(1, now):
            return None
        return bucket.ready_at(1)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """Earliest deadline: next ping, idle timeout, or send-bucket refill when the last
        ``data_to_send`` was held back by the send rate limit. None when nothing is pending."""
        if self._closing:
            return None
        deadline = self._next_ping
        if self._config.idle_timeout > 0 and not self._idle_fired:
            deadline = min(deadline, self._last_recv + self._config.idle_timeout)
        if self._send_blocked:
            deadline = min(deadline, self._send_bucket.ready_at(self._send_blocked))
        return None if deadline == math.inf else deadline

    def handle_timer(self, now: float) -> None:
        """Queue a ping if due; emit IdleTimeout if nothing was received for idle_timeout."""
        if self._closing:
            return
        config = self._config
        if now >= self._next_ping:
            self._next_ping = now + config.ping_interval
            self._ping_seq += 1
            self._ping_due = self._ping_seq  # replaces a due ping that could not be sent yet
        if (
            config.idle_timeout > 0
            and not self._idle_fired
            and now >= self._last_recv + config.idle_timeout
        ):
            self._idle_fired = True
            self._events.append(IdleTimeout())

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of counters."""
        channels = tuple(
            ChannelStatistics(
                channel_id=ch.id,
                messages_sent=ch.messages_sent,
                bytes_sent=ch.bytes_sent,
                messages_received=ch.messages_received,
                bytes_received=ch.bytes_received,
                queue_depth=len(ch.queue),
                inbound_requests_active=ch.inbound_active,
                outbound_requests_in_flight=ch.outbound_in_flight,
                messages_dropped=ch.dropped,
                requests_rejected=ch.rejected,
            )
            for ch in sorted(self._channels.values(), key=lambda c: c.id)
        )
        return ConnectionStatistics(
            channels=channels,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            rtt_last=self._rtt_last,
            rtt_ewma=self._rtt_ewma,
            control_queue_depth=len(self._ctrl),
            unknown_channel_dropped=self._unknown_dropped,
            control_dropped=self._control_dropped,
            outbound_requests_in_flight=len(self._outbound),
            inbound_requests_active=len(self._inbound),
        )
