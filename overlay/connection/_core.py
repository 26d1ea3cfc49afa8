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
    core.state                          # OPEN, CLOSING, or final: CLOSED / ABORTED (stop)

Lifecycle (:class:`~overlay.connection._types.ConnectionState`). A connection is OPEN until
``send_disconnect(reason, message, now=now)`` makes it CLOSING: the Disconnect frame is all that
is sent from then on, and the core's timer is the close deadline, ``now + close_timeout``. The
driver writes the frame (after any write already in progress) and then reports
``connection_lost()``, which makes the state CLOSED. If the deadline passes first (the peer is
not reading, so a write never completes), ``handle_timer`` makes it ABORTED and the driver must
abort the transport without waiting for its writes. The peer's own Disconnect, or
``connection_lost()`` (end of stream, reset), make an OPEN or CLOSING connection CLOSED. CLOSED
and ABORTED are final. So however the peer behaves, closing takes at most ``close_timeout``
plus the time the driver needs to notice the timer.

Outgoing side. Each channel has a FIFO of whole messages bounded by ``send_queue_size`` (requests,
messages, responses and errors alike: backpressure applies to responders too); a full queue raises
:class:`~overlay.errors.WouldBlock`. What goes out next, in which frames and how fast (priorities,
chunking, the write batch, the send token bucket) is the
:class:`~overlay.connection._send.Sender`'s business. After ``send_disconnect`` only the
disconnect frame is sent (not rate limited), then ``b""`` forever; ``send_*`` then raise
ConnectionClosed (responses return False).

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

Layout (composed, h11-style: each concept is an object that owns its state). The configuration,
event and statistics types live in ``overlay/connection/_types.py``, with the small records the
two halves share (channels, the control queue, the pings awaiting a pong). The receive path
(parsing, reassembly, decompression, the receive rate limit, the idle clock, the receive
counters) is a :class:`~overlay.connection._receive.Receiver` that the core creates and owns;
the lifecycle is :class:`ConnectionState`. The channels and their priority rings are a
:class:`~overlay.connection._channels.ChannelTable` (channels are added and removed while the
connection is up: ``add_channel`` / ``remove_channel``), and node-info updates, both directions,
an :class:`~overlay.connection._infosync.InfoSync` (paced by its own rate limit; a waiting
update is part of ``get_timer``). The send side is a :class:`~overlay.connection._send.Sender`.
This module keeps the requests, the timers, the lifecycle transitions and the statistics, and
re-exports every public type of ``overlay.connection._types``.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from typing import cast

from overlay.connection._channels import ChannelTable
from overlay.connection._infosync import InfoSync
from overlay.connection._receive import Receiver
from overlay.connection._send import Sender
from overlay.connection._types import (
    _CANCEL,
    _CONTROL,
    _ERROR,
    _MESSAGE,
    _REQUEST,
    _RESPONSE,
    DEFAULT_MAX_MESSAGE_SIZE,
    CancelReceived,
    ChannelParams,
    ChannelStatistics,
    ConnectionState,
    ConnectionStatistics,
    CoreConfig,
    DisconnectReceived,
    ErrorReceived,
    Event,
    IdleTimeout,
    LatencyMeasured,
    MessageDropped,
    MessageReceived,
    PeerInfoReceived,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    _Channel,
    _ControlQueue,
    _OutMsg,
    _Pings,
)
from overlay.errors import (
    ChannelError,
    ConnectionClosed,
    ErrorCode,
    LocalProtocolError,
    WouldBlock,
)
from overlay.wire._frames import (
    HEADER,
)
from overlay.wire._messages import (
    Disconnect,
    DisconnectReason,
    encode_control,
    encode_error,
)
from overlay.wire._nodeinfo import NodeInfo

__all__ = [
    "CancelReceived",
    "ChannelParams",
    "ChannelStatistics",
    "ConnectionCore",
    "ConnectionState",
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
    "PeerInfoReceived",
    "RequestReceived",
    "RequestRejected",
    "ResponseReceived",
    "SharedMessage",
    "next_request_id",
    "shared_message",
]


SharedMessage = _OutMsg
"""A broadcast's queue entry, shared by every connection it is queued to (see
:meth:`ConnectionCore.send_shared`)."""


def shared_message(payload: bytes) -> SharedMessage:
    """The queue entry of a broadcast of ``payload`` (encoded once for all connections)."""
    data = payload if type(payload) is bytes else bytes(payload)
    return _OutMsg(None, _MESSAGE, 0, data, 0, len(data))


_MAX_RID = 0xFFFFFFFF


def next_request_id(candidate: int, in_flight: Container[int]) -> int:
    """The request id to use from ``candidate`` on: ids run 1..2**32-1, wrap past the end
    (0 is never an id) and skip ids still in flight."""
    rid = (candidate - 1) % _MAX_RID + 1
    while rid in in_flight:
        rid = rid % _MAX_RID + 1
    return rid

_pack = HEADER.pack


class ConnectionCore:
    """Per-connection protocol state; see the module docstring for the driver contract."""

    def __init__(
        self,
        config: CoreConfig,
        channels: Sequence[ChannelParams],
        *,
        now: float,
        compression: bool = False,
        peer_info: NodeInfo | None = None,
    ) -> None:
        self._config = config
        self._max_payload = config.max_frame_payload
        self._table = ChannelTable(channels)
        self._channels = self._table.by_id  # shared with the receiver; mutated in place
        self._control = _ControlQueue(config.max_control_queue)
        self._ctrl = self._control.frames  # the hot path's alias
        self._info = InfoSync(now, peer_info)
        self._state = ConnectionState.OPEN
        self._closing = False  # not OPEN: nothing but our Disconnect is sent (hot-path flag)
        self._close_deadline = math.inf
        self._outbound: dict[int, _OutMsg] = {}
        self._next_rid = 1
        self._inbound: dict[int, _Channel] = {}
        self._events: list[Event] = []  # lists, not deques: an empty deque costs 624 B
        self._pings = _Pings()
        self._receiver = Receiver(
            config,
            channels=self._channels,
            outbound=self._outbound,
            inbound=self._inbound,
            control=self._control,
            pings=self._pings,
            info=self._info,
            events=self._events,
            on_disconnect=self.connection_lost,
            now=now,
            compression=compression,
        )
        self._compression = compression
        self._sender = Sender(config, self._table, self._control, self._pings, now=now,
                              compression=compression)
        self._next_ping = now + config.ping_interval if config.ping_interval > 0 else math.inf
        self._ping_seq = 0

    # ------------------------------------------------------------------ properties

    @property
    def compression(self) -> bool:
        """Whether zstd compression was negotiated for this connection."""
        return self._compression

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its life (see the module docstring)."""
        return self._state

    @property
    def closing(self) -> bool:
        """True once the connection left OPEN (nothing but our Disconnect is sent)."""
        return self._closing

    def connection_lost(self) -> None:
        """The driver stopped using the transport: our Disconnect was written, or the stream
        ended or failed. OPEN or CLOSING become CLOSED; final states stay."""
        if self._state is ConnectionState.OPEN or self._state is ConnectionState.CLOSING:
            self._finish(ConnectionState.CLOSED)

    def _finish(self, state: ConnectionState) -> None:
        self._state = state
        self._stop_sending()
        self._sender.disconnect_frame = None
        self._close_deadline = math.inf

    def _stop_sending(self) -> None:
        """Leave OPEN: nothing is queued or sent from now on but our Disconnect."""
        self._closing = True
        self._control.close()
        self._info.drop_pending()
        self._sender.stop()
        self._pings.sent.clear()

    @property
    def idle_expired(self) -> bool:
        """True from the moment ``handle_timer`` emitted IdleTimeout until data arrives."""
        return self._receiver.idle_fired

    @property
    def peer_disconnected(self) -> bool:
        """True once the peer's disconnect arrived (later received frames are ignored)."""
        return self._receiver.peer_disconnected

    # ------------------------------------------------------------------ channels

    def channel_ids(self) -> list[int]:
        """The channels this connection carries now, sorted."""
        return sorted(self._channels)

    def add_channel(self, params: ChannelParams) -> None:
        """Start carrying a channel (the node opened it while this connection was up).

        If the channel was removed while one of its messages was partly sent, that message is
        finished first (frames of one channel never interleave), then the new channel's.
        ChannelError if the connection already carries it."""
        ch = self._table.add(params)
        self._receiver.channel_added(ch)

    def remove_channel(self, channel_id: int) -> list[int]:
        """Stop carrying a channel (the node closed it); returns the ids of our requests on it
        that were in flight: they are forgotten (a CANCEL goes out for any already started) and
        their callers must be failed. The peer's requests on it that still await our answer
        get ERROR ``NO_HANDLER``, and so do those whose answer was queued but not started; a
        message already partly sent is finished; other queued messages are dropped. Frames the
        peer sends on the channel from now on are handled as on any unknown channel.
        ChannelError if the connection does not carry it."""
        ch = self._channels.get(channel_id)
        if ch is None:
            raise ChannelError(f"channel {channel_id} is not part of this connection")
        failed = [rid for rid, msg in self._outbound.items() if msg.channel is ch]
        for rid in failed:
            self.cancel_request(rid)  # before the queue is emptied: unsent ones need no CANCEL
        receiver = self._receiver
        budget = ch.max_size - 6
        for rid in [rid for rid, owner in self._inbound.items() if owner is ch]:
            del self._inbound[rid]
            ch.inbound_active -= 1
            receiver.auto_error(channel_id, rid, ErrorCode.NO_HANDLER, "channel closed", budget)
        _, dropped = self._table.remove(channel_id)
        for msg in dropped:
            if msg.kind == _RESPONSE or msg.kind == _ERROR:  # the peer still waits: tell it
                receiver.auto_error(
                    channel_id, msg.request_id, ErrorCode.NO_HANDLER, "channel closed", budget
                )
        return failed

    # ------------------------------------------------------------------ node-info updates

    @property
    def peer_info(self) -> NodeInfo | None:
        """The peer's current NodeInfo: its hello's, then each update it sent (``None`` only
        for a core built without ``peer_info``, until the first update)."""
        return self._info.peer_info

    @property
    def peer_info_seq(self) -> int:
        """``info_seq`` of the peer's last applied node-info update (0: the hello)."""
        return self._info.peer_seq

    @property
    def info_updates_ignored(self) -> int:
        """Node-info updates from the peer ignored as replays (``info_seq`` not above the
        last applied one)."""
        return self._info.ignored

    def send_info_update(self, info_seq: int, payload: bytes, now: float) -> None:
        """Announce our NodeInfo number ``info_seq`` (``payload`` from
        ``overlay.wire._nodeinfo.encode_info_update``). It goes out with the control frames,
        paced by the update rate limit (the core's timer covers the wait); a newer
        announcement replaces one still waiting. No effect once the connection is closing."""
        if self._closing:
            return
        self._info.queue(info_seq, _pack(len(payload) + 8, _CONTROL, 0, 0, 0) + payload)
        self._flush_info(now)

    def _flush_info(self, now: float) -> None:
        frame = self._info.take(now)
        if frame is not None:
            self._ctrl.append(frame)

    # ------------------------------------------------------------------ outgoing

    @property
    def wants_write(self) -> bool:
        """Whether ``data_to_send`` has something to hand out now (rate limits aside)."""
        return self._sender.wants_write

    def _channel(self, channel_id: int) -> _Channel:
        ch = self._channels.get(channel_id)
        if ch is None:
            raise ChannelError(
                f"channel {channel_id} is not part of this connection (not open on this node)"
            )
        return ch

    def has_space(self, channel_id: int) -> bool:
        """Whether one more message fits in the channel's send queue (True once closing, so
        waiters wake up and see ``ConnectionClosed``)."""
        ch = self._channel(channel_id)
        return self._closing or len(ch.queue) < ch.queue_size

    def _check_open(self) -> None:
        if self._closing:
            raise ConnectionClosed("the connection is closing")

    def send_message(self, channel_id: int, payload: bytes) -> None:
        """Queue a fire-and-forget message (WouldBlock / MessageTooLarge / ChannelError)."""
        ch = self._channel(channel_id)
        self._check_open()
        self._sender.enqueue(ch, _MESSAGE, 0, payload)

    def send_shared(self, channel_id: int, entry: SharedMessage) -> bool:
        """Queue a broadcast message: the same queue entry (one frame, encoded once) goes into
        every connection's channel queue. False (nothing queued) once the connection is not
        OPEN; otherwise raises as :meth:`send_message`. An entry this connection would split or
        compress is queued as its own message instead."""
        if self._closing:
            return False
        ch = self._channels.get(channel_id)
        if ch is None or not self._sender.queue_shared(ch, entry):
            self.send_message(channel_id, cast(bytes, entry.data))
        return True

    def send_request(self, channel_id: int, payload: bytes) -> int:
        """Queue a request; return its id. WouldBlock also at ``max_outbound_requests``."""
        ch = self._channel(channel_id)
        self._check_open()
        if len(self._outbound) >= self._config.max_outbound_requests:
            raise WouldBlock("too many outbound requests in flight")
        rid = next_request_id(self._next_rid, self._outbound)
        msg = self._sender.enqueue(ch, _REQUEST, rid, payload)
        self._next_rid = rid % _MAX_RID + 1
        self._outbound[rid] = msg
        ch.outbound_in_flight += 1
        return rid

    def _answer(self, channel_id: int, request_id: int, kind: int, payload: bytes) -> bool:
        ch = self._channel(channel_id)
        if self._closing or self._inbound.get(request_id) is not ch:
            return False
        self._sender.enqueue(ch, kind, request_id, payload)
        del self._inbound[request_id]
        ch.inbound_active -= 1
        return True

    def is_inbound_active(self, channel_id: int, request_id: int) -> bool:
        """Whether an inbound request still awaits our answer (False once answered, cancelled
        by the peer, or never received)."""
        ch = self._inbound.get(request_id)
        return ch is not None and ch.id == channel_id

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
        assert ch is not None  # a request's entry is its connection's own
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
            del ch.queue[0]
        self._ctrl.append(_pack(8, _CANCEL, 0, ch.id, request_id))

    def send_disconnect(self, reason: DisconnectReason, message: str, *, now: float) -> None:
        """Start closing: OPEN becomes CLOSING, a CONTROL disconnect is sent next and nothing
        after it, and the close deadline is ``now + close_timeout`` (idempotent: the first call
        wins; no effect once the connection is no longer OPEN)."""
        try:
            reason = DisconnectReason(reason)
        except ValueError:
            raise LocalProtocolError(f"not a disconnect reason: {reason!r}") from None
        if self._state is not ConnectionState.OPEN:
            return
        payload = encode_control(
            Disconnect(reason, message), max_message_bytes=self._max_payload - 16
        )
        self._sender.disconnect_frame = _pack(len(payload) + 8, _CONTROL, 0, 0, 0) + payload
        self._state = ConnectionState.CLOSING
        self._stop_sending()
        self._close_deadline = now + self._config.close_timeout
        self._table.clear_queues()

    def data_to_send(self, now: float) -> bytes:
        """The next write batch (whole frames, ≤ max_write_batch unless one frame is larger);
        ``b""`` when nothing is ready or the send rate limit forbids the next frame."""
        return self._sender.data_to_send(now)

    # ------------------------------------------------------------------ incoming

    def receive_data(self, data: bytes, now: float) -> None:
        """Parse received plaintext; queue events. Raises FrameError (or another
        RemoteProtocolError) on a violation; the core then stays failed (the receive path is
        the :class:`~overlay.connection._receive.Receiver` this core owns)."""
        self._receiver.receive_data(data, now)

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        return self._events.pop(0) if self._events else None

    def events(self) -> list[Event]:
        """All pending events, oldest first (drains the queue)."""
        out = self._events[:]
        self._events.clear()
        return out

    def receive_paused_until(self, now: float) -> float | None:
        """When reading may resume (receive rate limit), or None if it may now."""
        bucket = self._receiver.bucket
        if bucket.can_consume(1, now):
            return None
        return bucket.ready_at(1)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """Earliest deadline: next ping, idle timeout, a node-info update waiting for the update
        rate limit, or send-bucket refill when the last
        ``data_to_send`` was held back by the send rate limit; while CLOSING, the close
        deadline. None when nothing is pending (always in CLOSED and ABORTED)."""
        if self._closing:
            return None if self._close_deadline == math.inf else self._close_deadline
        deadline = self._next_ping
        receiver = self._receiver
        if self._config.idle_timeout > 0 and not receiver.idle_fired:
            deadline = min(deadline, receiver.last_recv + self._config.idle_timeout)
        refill_at = self._sender.refill_at()
        if refill_at is not None:
            deadline = min(deadline, refill_at)
        info_at = self._info.ready_at()
        if info_at is not None:
            deadline = min(deadline, info_at)
        return None if deadline == math.inf else deadline

    def handle_timer(self, now: float) -> None:
        """Queue a ping if due (nothing received for ``ping_interval``); emit IdleTimeout if
        nothing was received for idle_timeout.
        While CLOSING, move to ABORTED once the close deadline passed."""
        if self._closing:
            if self._state is ConnectionState.CLOSING and now >= self._close_deadline:
                self._finish(ConnectionState.ABORTED)
            return
        config = self._config
        self._flush_info(now)
        receiver = self._receiver
        if now >= self._next_ping:
            # Keep-alive only on a quiet link: the deadline is checked here, lazily, against the
            # time of the last receipt (nothing re-arms it per frame). A link that carried
            # traffic within the interval moves the ping to one interval after that traffic.
            quiet_at = receiver.last_recv + config.ping_interval
            if now >= quiet_at:
                self._next_ping = now + config.ping_interval
                self._ping_seq += 1
                self._sender.ping_due = self._ping_seq  # replaces a due ping not sent yet
            else:
                self._next_ping = quiet_at
        if (
            config.idle_timeout > 0
            and not receiver.idle_fired
            and now >= receiver.last_recv + config.idle_timeout
        ):
            receiver.idle_fired = True
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
        receiver = self._receiver
        return ConnectionStatistics(
            channels=channels,
            bytes_in=receiver.bytes_in,
            bytes_out=self._sender.bytes_out,
            frames_in=receiver.frames_in,
            frames_out=self._sender.frames_out,
            rtt_last=self._pings.rtt_last,
            rtt_ewma=self._pings.rtt_ewma,
            control_queue_depth=len(self._ctrl),
            unknown_channel_dropped=receiver.unknown_dropped,
            control_dropped=self._control.dropped,
            outbound_requests_in_flight=len(self._outbound),
            inbound_requests_active=len(self._inbound),
        )
