"""The receiving half of the sans-IO connection core: parse, reassemble, deliver.

Theory of operation
-------------------
A :class:`Receiver` is owned by a :class:`~overlay.connection._core.ConnectionCore` and owns the
receive path's state: the frame decoder, the reassembly buffers, the decompressor, the receive
token bucket, the idle clock (time of the last receipt) and the receive counters. What the two
halves share they are handed at construction as the same objects: the channels, the outbound
requests in flight (to match responses), the active inbound requests, the control queue
(:class:`~overlay.connection._types._ControlQueue`, for the replies the core makes by itself),
the pings awaiting a pong, the node-info sync (:class:`~overlay.connection._infosync.InfoSync`)
and the event queue. The driver contract and the invariants (reassembly rules, discard mode, the
decompression limit, the failed state) are stated in the docstring of
``overlay/connection/_core.py``; in short:

* ``receive_data`` charges the bytes to the receive token bucket, resets the idle clock, then
  drains the :class:`~overlay.wire._frames.FrameDecoder`. A whole uncompressed MESSAGE on a known
  channel with no reassembly in progress is delivered inline (the fast path); every other frame
  goes to ``_on_control`` (ping: pong queued; pong: RTT sample; node-info update: checked by
  the :class:`~overlay.connection._infosync.InfoSync` shared with the core; disconnect: stop
  parsing and call ``on_disconnect``, which makes the connection CLOSED), ``_on_cancel``, or
  ``_on_data`` (the :class:`~overlay.wire._frames.MessageAssembler`, then ``_deliver``).
* Channels come and go while the connection is up (the shared channel dict is updated in
  place); ``channel_added`` raises the reassembly limit for unknown channels (never lowered)
  when a new channel allows larger messages.
* The first :class:`~overlay.errors.RemoteProtocolError` is kept; every later ``receive_data``
  raises it again. Events of the frames before the violation stay queued.
* Replies the core makes by itself (pongs; NO_HANDLER and OVERLOADED errors) go to the control
  queue, bounded by ``max_control_queue`` (beyond it they are dropped and counted); none is
  queued once the connection left OPEN (the queue is then ``closed``).

Log records go to the ``overlay.connection._core`` logger, like the rest of the core's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import assert_never, cast

import zstandard

from overlay.connection._infosync import InfoSync
from overlay.connection._ratelimit import TokenBucket
from overlay.connection._types import (
    _CANCEL,
    _CONTROL,
    _ERROR,
    _MESSAGE,
    _REQUEST,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_WIRE_FRAME_PAYLOAD,
    CancelReceived,
    CoreConfig,
    DisconnectReceived,
    ErrorReceived,
    Event,
    LatencyMeasured,
    MessageDropped,
    MessageReceived,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    _Channel,
    _ControlQueue,
    _OutMsg,
    _Pings,
)
from overlay.errors import ErrorCode, FrameError, RemoteProtocolError
from overlay.wire._frames import FLAG_COMPRESSED, HEADER, Discarded, FrameDecoder, MessageAssembler
from overlay.wire._messages import (
    Disconnect,
    InfoUpdate,
    Ping,
    Pong,
    decode_control,
    decode_error,
    encode_control,
    encode_error,
)

__all__ = ["Receiver"]

logger = logging.getLogger("overlay.connection._core")  # one logger for the whole connection core

_RTT_ALPHA = 0.125  # EWMA weight of a new RTT sample (as TCP's SRTT)
_pack = HEADER.pack


class Receiver:
    """The receive path of one connection (see the module docstring)."""

    __slots__ = (
        "_assembler",
        "_channels",
        "_control",
        "_dctx",
        "_decoder",
        "_error",
        "_events",
        "_inbound",
        "_info",
        "_on_disconnect",
        "_outbound",
        "_pings",
        "_unknown_limit",
        "bucket",
        "bytes_in",
        "frames_in",
        "idle_fired",
        "last_recv",
        "peer_disconnected",
        "unknown_dropped",
    )

    def __init__(
        self,
        config: CoreConfig,
        *,
        channels: dict[int, _Channel],
        outbound: dict[int, _OutMsg],
        inbound: dict[int, _Channel],
        control: _ControlQueue,
        pings: _Pings,
        info: InfoSync,
        events: list[Event],
        on_disconnect: Callable[[], None],
        now: float,
        compression: bool,
    ) -> None:
        self._channels = channels
        self._outbound = outbound
        self._inbound = inbound
        self._control = control
        self._pings = pings
        self._info = info
        self._events = events
        self._on_disconnect = on_disconnect
        self._unknown_limit = max(
            [ch.max_size for ch in channels.values()] + [DEFAULT_MAX_MESSAGE_SIZE]
        )
        """Reassembly limit of messages on channels we do not have (discarded, not kept)."""
        self._decoder = FrameDecoder(MAX_WIRE_FRAME_PAYLOAD, compression=compression)
        self._assembler = MessageAssembler()
        self._dctx: zstandard.ZstdDecompressor | None = None
        if compression:
            window_log = max(10, min(31, math.ceil(math.log2(self._unknown_limit))))
            self._dctx = zstandard.ZstdDecompressor(max_window_size=1 << window_log)
        self._error: RemoteProtocolError | None = None
        self.peer_disconnected = False
        """True once the peer's Disconnect arrived (later received bytes are ignored)."""
        self.bucket = TokenBucket(config.recv_rate, config.recv_burst, now)
        """The receive rate limit (advisory: see ``ConnectionCore.receive_paused_until``)."""
        self.last_recv = now
        """When bytes last arrived (the idle clock)."""
        self.idle_fired = False
        """IdleTimeout was reported for the current quiet period (reset by any receipt)."""
        self.bytes_in = 0
        self.frames_in = 0
        self.unknown_dropped = 0
        """Messages and requests received on channels we do not have."""

    def channel_added(self, ch: _Channel) -> None:
        """The core started carrying ``ch`` (already in the shared channel dict): frames on
        channels we do not have may now be as large as its messages."""
        if ch.max_size <= self._unknown_limit:
            return
        self._unknown_limit = ch.max_size
        if self._dctx is not None:  # the decompressor's window must cover the new limit
            window_log = max(10, min(31, math.ceil(math.log2(self._unknown_limit))))
            self._dctx = zstandard.ZstdDecompressor(max_window_size=1 << window_log)

    def receive_data(self, data: bytes, now: float) -> None:
        """Parse received plaintext; queue events. Raises FrameError (or another
        RemoteProtocolError) on a violation; the core then stays failed."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        n = len(data)
        self.bytes_in += n
        self.last_recv = now
        self.idle_fired = False
        self.bucket.consume(n, now)
        if self.peer_disconnected:
            return
        decoder = self._decoder
        channels = self._channels
        partial = self._assembler.partial
        append = self._events.append
        try:
            decoder.feed(data)
            while frames := decoder.drain_raw():
                self.frames_in += len(frames)
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
                            # No MORE flag: drain_raw gave bytes, not a view.
                            append(MessageReceived(channel_id, cast(bytes, payload)))
                            continue
                    if kind == _CONTROL:
                        self._on_control(cast(bytes, payload), now)  # flags 0: bytes
                        if self.peer_disconnected:
                            return
                    elif kind == _CANCEL:
                        self._on_cancel(channel_id, request_id)
                    else:
                        self._on_data(kind, flags, channel_id, request_id, payload)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _on_control(self, payload: bytes, now: float) -> None:
        match decode_control(payload):
            case Ping(nonce=nonce):
                if self._room_for_reply("a pong"):
                    pong = encode_control(Pong(nonce))
                    self._control.frames.append(_pack(len(pong) + 8, _CONTROL, 0, 0, 0) + pong)
            case Pong(nonce=nonce):
                pings = self._pings
                sent = pings.sent.pop(nonce, None)
                if sent is None:
                    return
                rtt = max(0.0, now - sent)
                pings.rtt_last = rtt
                ewma = pings.rtt_ewma
                pings.rtt_ewma = rtt if ewma is None else ewma + _RTT_ALPHA * (rtt - ewma)
                self._events.append(LatencyMeasured(rtt))
            case InfoUpdate() as update:
                event = self._info.receive(update, now)  # RemoteProtocolError: flood, bad info
                if event is not None and not self._control.closed:
                    self._events.append(event)
            case Disconnect(reason=reason, message=message):
                self.peer_disconnected = True
                self._on_disconnect()  # nothing more to say to a peer that said goodbye
                self._events.append(DisconnectReceived(reason, message))
            case unreachable:
                assert_never(unreachable)

    def _room_for_reply(self, what: str) -> bool:
        """Whether the control queue takes one more automatic reply (counted if it is full)."""
        control = self._control
        if control.closed:
            return False
        if len(control.frames) >= control.limit:
            control.dropped += 1
            logger.debug("control queue full: not sending %s", what)
            return False
        return True

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
        self, kind: int, flags: int, channel_id: int, request_id: int,
        payload: bytes | memoryview,
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
            self.unknown_dropped += 1
            if kind == _REQUEST:  # (no text: the peer's size limit for this channel is unknown)
                self.auto_error(channel_id, request_id, ErrorCode.NO_HANDLER, "", 0)
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
                self.auto_error(
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
                f"sent on channel {msg.channel.id if msg.channel else '?'}"
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

    def auto_error(
        self, channel_id: int, request_id: int, code: ErrorCode, text: str, budget: int
    ) -> None:
        """Queue an ERROR reply the core makes by itself (``text`` cut to ``budget`` bytes);
        also used by the core for the peer's requests on a channel it stops carrying."""
        if not self._room_for_reply(f"{code.name} for request {request_id}"):
            return
        payload = encode_error(code, text, max_message_bytes=budget)
        frame = _pack(len(payload) + 8, _ERROR, 0, channel_id, request_id) + payload
        self._control.frames.append(frame)
