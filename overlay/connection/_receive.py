"""The receiving half of the sans-IO connection core: parse, reassemble, deliver.

Theory of operation
-------------------
:class:`ReceiveSide` is the base class of :class:`~overlay.connection._core.ConnectionCore` that
holds
the receive path; it has no constructor and no state of its own. It declares, as class-level
annotations, the attributes of the core it reads and writes; ``ConnectionCore.__init__`` creates
all of them. The two halves are one object with one set of state, split across two files only:
a call into the receive path costs exactly what it did when both halves shared a module (no
extra call or attribute lookup per frame). The driver contract and the invariants (reassembly
rules, discard mode, the decompression limit, the failed state) are stated in the docstring of
``overlay/connection/_core.py``; in short:

* ``receive_data`` charges the bytes to the receive token bucket, resets the idle timer, then
  drains the :class:`~overlay.wire._frames.FrameDecoder`. A whole uncompressed MESSAGE on a known
  channel with no reassembly in progress is delivered inline (the fast path); every other frame
  goes to ``_on_control`` (ping: pong queued; pong: RTT sample; node-info update: checked by
  :class:`~overlay.connection._infosync.InfoSync`; disconnect: stop parsing, and
  the connection is CLOSED through ``connection_lost``),
  ``_on_cancel``, or ``_on_data`` (the :class:`~overlay.wire._frames.MessageAssembler`, then
  ``_deliver``).
* The first :class:`~overlay.errors.RemoteProtocolError` is kept; every later ``receive_data``
  raises it again. Events of the frames before the violation stay queued.
* Replies the core makes by itself (pongs; NO_HANDLER and OVERLOADED errors) go to the control
  queue shared with the send side, bounded by ``max_control_queue`` (beyond it they are dropped
  and counted); none is queued once ``send_disconnect`` was called.

Log records go to the ``overlay.connection._core`` logger, like the rest of the core's.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import cast

import zstandard

from overlay.connection._infosync import InfoSync
from overlay.connection._ratelimit import TokenBucket
from overlay.connection._types import (
    _CANCEL,
    _CONTROL,
    _ERROR,
    _MESSAGE,
    _REQUEST,
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
    _OutMsg,
)
from overlay.errors import ErrorCode, FrameError, RemoteProtocolError
from overlay.wire._frames import FLAG_COMPRESSED, HEADER, Discarded, FrameDecoder, MessageAssembler
from overlay.wire._messages import (
    InfoUpdate,
    Ping,
    Pong,
    decode_control,
    decode_error,
    encode_control,
    encode_error,
)

__all__ = ["ReceiveSide"]

logger = logging.getLogger("overlay.connection._core")  # one logger for the whole connection core

_RTT_ALPHA = 0.125  # EWMA weight of a new RTT sample (as TCP's SRTT)
_pack = HEADER.pack


class ReceiveSide:
    """The receive methods of :class:`~overlay.connection._core.ConnectionCore` (no state of its
    own)."""

    # State shared with the send side (created by ConnectionCore.__init__).
    _config: CoreConfig
    _channels: dict[int, _Channel]
    _outbound: dict[int, _OutMsg]
    _inbound: dict[int, _Channel]
    _ctrl: deque[bytes]
    _events: deque[Event]
    _closing: bool
    _pings: dict[int, float]
    _control_dropped: int
    _info: InfoSync
    # Receive-side state (also created by ConnectionCore.__init__).
    _decoder: FrameDecoder
    _assembler: MessageAssembler
    _dctx: zstandard.ZstdDecompressor | None
    _unknown_limit: int
    _error: RemoteProtocolError | None
    _peer_disconnected: bool
    _recv_bucket: TokenBucket
    _last_recv: float
    _idle_fired: bool
    _rtt_last: float | None
    _rtt_ewma: float | None
    _bytes_in: int
    _frames_in: int
    _unknown_dropped: int

    def connection_lost(self) -> None:
        """Defined by ConnectionCore, where the connection's lifecycle lives."""
        raise NotImplementedError

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
                            # No MORE flag: drain_raw gave bytes, not a view.
                            append(MessageReceived(channel_id, cast(bytes, payload)))
                            continue
                    if kind == _CONTROL:
                        self._on_control(cast(bytes, payload), now)  # flags 0: bytes
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
        elif isinstance(msg, InfoUpdate):
            event = self._info.receive(msg, now)  # RemoteProtocolError: flood, bad NodeInfo
            if event is not None and not self._closing:
                self._events.append(event)
        else:
            self._peer_disconnected = True
            self.connection_lost()  # nothing more to say to a peer that said goodbye
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
