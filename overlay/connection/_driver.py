"""The thin async driver of one peer connection.

Theory of operation
-------------------
A :class:`PeerConnection` owns an authenticated :class:`~overlay.transport._secure.SecureStream`
and a pure :class:`~overlay.connection._core.ConnectionCore`. Two tasks run it:

* the **reader** (:class:`~overlay.connection._reader.Reader`, in the connection's own task)
  receives plaintext, feeds ``core.receive_data``, and hands the core's events back here
  (:meth:`PeerConnection.handle_event`, one ``match`` closed with ``assert_never``): messages
  go to the router (awaiting a full inbox: backpressure towards the peer), requests to the
  router's responder (a plain handler answers there and then, an ``async`` one goes to the
  connection's request workers, ``overlay.connection._workers``), responses wake the waiting
  requester (``overlay.connection._requests``), cancels cancel handlers; the answers queued by
  one read leave in one write at its end. On asyncio most reads are handled synchronously in
  the transport's callback instead (see the reader's module);
* the **writer** (:class:`~overlay.connection._writer.Writer`) writes ``core.data_to_send``
  when kicked (many small frames coalesced into one write; on asyncio the caller writes
  directly when the writer is idle, see its module).

Callers queue into the core synchronously; when a channel queue is full they wait for the
writer's queue space — so every queue is bounded, and ``send()`` either waits (honouring the
caller's cancel scope) or raises ``WouldBlock``.

The connection's life is the core's :class:`~overlay.connection._core.ConnectionState`; the driver
keeps no lifecycle flags of its own and stops as soon as the state is final. Closing is one-way:
``close(reason)`` makes the core CLOSING (its Disconnect queued, its timer set to the close
deadline, ``close_timeout`` later). The writer writes the Disconnect after any write already in
progress and, once written, reports ``connection_lost`` (CLOSED). If the peer does not read, that
write never completes: the node's timer task then finds the core ABORTED, cancels both tasks
(interrupting the write) and aborts the stream (:func:`~overlay.transport.abort_stream`: unsent
data dropped; a TCP reset). So ``close`` / ``aclose`` finish within ``close_timeout`` whatever
the peer does. Every waiting requester and sender then fails with :class:`ConnectionClosed` (or
the error given to ``close``, e.g. :class:`NodeClosed`).

Channels come and go while the connection is up: the router calls ``add_channel`` /
``remove_channel`` (requests on a removed channel fail with the error it gives; handlers serving
the peer's requests on it are cancelled) and the node ``send_info_update``. A node-info update
from the peer replaces :attr:`PeerConnection.info` and :attr:`PeerConnection.channels` and is
handed to the router (``Delivery.on_peer_info``).

Callers above (the router, the node) ask the connection, never its core: ``is_open``,
``is_inbound_active``, ``statistics()``, ``end_reason``, ``info``, ``channels``, ``info_seq``,
``close(reason, message, error=...)``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVarTuple, assert_never

import anyio
import anyio.abc

from overlay.connection._core import (
    CancelReceived,
    ChannelParams,
    ConnectionCore,
    ConnectionState,
    ConnectionStatistics,
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
    SharedMessage,
)
from overlay.connection._meter import RoundTripMeter
from overlay.connection._observer import Observer
from overlay.connection._reader import Reader
from overlay.connection._requests import RequestExpired, Requests
from overlay.connection._timers import TimerService
from overlay.connection._workers import Workers
from overlay.connection._writer import Writer
from overlay.errors import (
    ConnectionClosed,
    ErrorCode,
    OverlayError,
    RemoteProtocolError,
    RequestError,
    WouldBlock,
)
from overlay.identity import NodeId
from overlay.transport import abort_stream
from overlay.transport._asyncio import current_clock, event_factory
from overlay.wire._nodeinfo import DisconnectReason, NodeInfo

__all__ = [
    "Delivery",
    "PeerConnection",
    "RequestExpired",
]

log = logging.getLogger("overlay.peer")

Ts = TypeVarTuple("Ts")


class Delivery(Protocol):
    """What a connection hands inbound traffic to (the router)."""

    async def on_message(self, conn: PeerConnection, channel_id: int, payload: bytes) -> None: ...

    def on_message_nowait(self, conn: PeerConnection, channel_id: int, payload: bytes) -> bool:
        """Deliver without waiting; False (nothing done) when it would have to wait (a full
        inbox): the connection's reader task then calls :meth:`on_message`."""

    def on_request(
        self, conn: PeerConnection, channel_id: int, request_id: int, payload: bytes
    ) -> None: ...

    def on_peer_info(self, conn: PeerConnection) -> None:
        """The peer announced a new NodeInfo; ``conn.info`` already holds it."""


_RETRY_DUE_TIMER = 0.001
"""Seconds by which a deadline that is already due on rescheduling is pushed ahead."""


class PeerConnection(anyio.TypedAttributeProvider):
    """One live, authenticated connection to a peer; ``conn.extra(...)`` reads its stream's
    typed attributes (``PeerAttribute.handshake_hash``, for one)."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        info: NodeInfo,
        stream: anyio.abc.ByteStream,
        core: ConnectionCore,
        outbound: bool,
        remote_address: str,
        remote_host: str,
        delivery: Delivery,
        observer: Observer,
        timers: TimerService,
    ) -> None:
        self.node_id = node_id
        self.info = info
        """The peer's current NodeInfo: from the hello, replaced by each node-info update."""
        self.channels: frozenset[int] = frozenset(info.channels)
        """The channels the peer serves now (``info.channels``, as a set)."""
        self.outbound = outbound
        self.remote_address = remote_address
        self.remote_host = remote_host
        self.core = core
        self.clock = current_clock()
        """``anyio.current_time`` bound once (see :func:`current_clock`)."""
        self.connected_at = self.clock()
        self.close_reason: DisconnectReason | None = None
        """Why we closed the connection (None if we did not)."""
        self.remote_reason: DisconnectReason | None = None
        """Why the peer closed it (None if it did not say)."""
        self._stream = stream
        self._delivery = delivery
        self._observer = observer
        self._new_event = event_factory()
        """Makes each request's one-shot event (a bare future on asyncio)."""
        self._handlers: dict[tuple[int, int], anyio.CancelScope] = {}
        self._writer = Writer(core, stream, self.clock, on_broken=self._stop,
                              on_held_back=self._timer_maybe_earlier)
        self._kick = self._writer.kick
        self._release_space = self._writer.release_space
        self._timers = timers
        self._requests = Requests(self._new_event, timers, self._abandon)
        """Our requests' waiters (``overlay.connection._requests``)."""
        self.timer_at = math.inf
        self.meter = RoundTripMeter()
        """Round-trip EWMA (pings and answered requests) and requests in flight."""
        self._close_error: OverlayError = ConnectionClosed(f"connection to {node_id} closed")
        self._tg: anyio.abc.TaskGroup | None = None
        self._workers: Workers | None = None
        self._done = anyio.Event()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes

    # ----------------------------------------------------------------------------- lifecycle

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the reader and writer until the connection closes. The reader runs in the
        calling task (one task fewer per connection), the writer in a child task."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._workers = Workers(tg, self._new_event)
                tg.start_soon(self._writer.run)
                self._reschedule(self.clock())
                task_status.started()
                await Reader(self.core, self._stream, self._writer, self.clock, self).run()
        finally:
            self.core.connection_lost()
            self._timers.cancel(self)
            self._fail_pending()
            with anyio.CancelScope(shield=True):
                if self.core.state is ConnectionState.ABORTED:
                    log.info("peer %s did not take our Disconnect within the close timeout; "
                             "aborting the connection", self.node_id)
                    await abort_stream(self._stream)
                else:
                    await self._stream.aclose()
            self._done.set()

    @property
    def is_open(self) -> bool:
        return self.core.state is ConnectionState.OPEN

    @property
    def is_down(self) -> bool:
        """The connection is over: its tasks ended and its stream is closed (or aborted)."""
        return self._done.is_set()

    @property
    def end_reason(self) -> str | None:
        """The label of why the connection ended (ours if we closed it, else the peer's), for
        logs and metrics; None while open or when it just broke."""
        reason = self.close_reason if self.close_reason is not None else self.remote_reason
        return None if reason is None else reason.label

    def is_inbound_active(self, channel_id: int, request_id: int) -> bool:
        """Whether the peer's request still awaits our answer (not answered, not cancelled)."""
        return self.core.is_inbound_active(channel_id, request_id)

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the connection's counters (an immutable record)."""
        return self.core.statistics()

    @property
    def requests_waiting(self) -> int:
        """Our requests on this connection whose caller still waits for the answer."""
        return len(self._requests)

    @property
    def requests_serving(self) -> int:
        """The peer's requests on this connection whose handler is running now."""
        return len(self._handlers)

    @property
    def info_seq(self) -> int:
        """``info_seq`` of the peer's NodeInfo in :attr:`info` (0: from the hello)."""
        return self.core.peer_info_seq

    @property
    def _finished(self) -> bool:
        """The core's state is final (CLOSED or ABORTED): the tasks stop or have stopped."""
        return self.core.state.final

    def _stop(self) -> None:
        """Cancel the reader, the writer and the request workers (``run`` then closes the
        stream, aborting it if the core is ABORTED)."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def close(self, reason: DisconnectReason = DisconnectReason.SHUTDOWN, message: str = "",
              error: OverlayError | None = None) -> None:
        """Start closing: the core becomes CLOSING, the writer sends a Disconnect, and the
        connection is down within the core's ``close_timeout`` (aborted if the Disconnect could
        not be written by then). Idempotent; no effect once the connection is not OPEN, except
        that ``error`` (what pending and later operations fail with) still replaces the default
        until the connection is down."""
        if error is not None and not self._finished:
            self._close_error = error
        if not self.is_open:
            return
        self.close_reason = reason
        now = self.clock()
        self.core.send_disconnect(reason, message, now=now)
        self._reschedule(now)  # the close deadline
        self._kick()
        self._writer.wake_senders()  # so they see the connection is closing

    async def aclose(
        self, reason: DisconnectReason = DisconnectReason.SHUTDOWN, message: str = ""
    ) -> None:
        """Close and wait until the connection is fully down."""
        self.close(reason, message)
        await self._done.wait()

    def submit(
        self, func: Callable[[*Ts], Coroutine[Any, Any, Any]], *args: *Ts
    ) -> bool:
        """Run ``func(*args)`` on one of this connection's request workers (cancelled when it
        closes); False (not run) once the connection is down."""
        if self._workers is None or self._finished:
            return False
        self._workers.submit(func, args)
        return True

    def _abandon(self, request_id: int) -> None:
        """Our caller stopped waiting for ``request_id`` (``Requests`` took it out of its
        table): cancel it on the wire (or drop it unsent) and free its in-flight slot."""
        if not self._finished:
            self.core.cancel_request(request_id)
            self._kick()
            self._release_space()

    def _fail_pending(self) -> None:
        self._requests.fail_all(self._fresh_close_error)
        self._writer.wake_senders()
        for scope in self._handlers.values():
            scope.cancel()

    def _fresh_close_error(self) -> OverlayError:
        """A new instance of the close error: re-raising one object would chain tracebacks."""
        err = self._close_error
        try:
            return type(err)(*err.args)
        except TypeError:  # a subclass with another constructor: share the instance
            return err

    def _check_open(self) -> None:
        if not self.is_open:
            raise self._fresh_close_error()

    # ------------------------------------------------------------------- channels, node info

    def add_channel(self, params: ChannelParams) -> None:
        """Carry a channel the node opened while this connection was up."""
        if not self._finished:
            self.core.add_channel(params)

    def remove_channel(self, channel_id: int, error: Callable[[], OverlayError]) -> None:
        """Stop carrying a channel the node closed: our requests on it fail with ``error()``,
        handlers serving the peer's requests on it are cancelled (the core answered them
        ``NO_HANDLER``), senders waiting for queue space on it wake up."""
        if self._finished:
            return
        for request_id in self.core.remove_channel(channel_id):
            self._requests.fail(request_id, error())
        for (cid, _rid), scope in self._handlers.items():
            if cid == channel_id:
                scope.cancel()
        self._writer.wake_senders(renew=True)  # waiting senders retry, find the channel gone
        self._kick()

    def send_info_update(self, info_seq: int, payload: bytes) -> None:
        """Announce our NodeInfo number ``info_seq`` (paced by the core's update rate limit)."""
        if not self.is_open:
            return
        self.core.send_info_update(info_seq, payload, self.clock())
        self._kick()
        self._timer_maybe_earlier()

    # ------------------------------------------------------------------------------- sending

    async def _wait_space(self) -> None:
        await self._writer.wait_space()
        self._check_open()

    def offer_message(self, channel_id: int, entry: SharedMessage) -> bool:
        """Queue a broadcast's shared entry without waiting: False when the connection is not
        open (nothing queued); ``WouldBlock`` when the channel's queue is full. The fan-out
        path."""
        if not self.core.send_shared(channel_id, entry):
            return False
        writer = self._writer
        if writer.waiting and not writer.flush_pending:
            writer.kick_deferred()
        return True

    def send_message_nowait(self, channel_id: int, payload: bytes) -> None:
        self._check_open()
        self.core.send_message(channel_id, payload)
        self._kick()

    async def send_message(self, channel_id: int, payload: bytes) -> None:
        """Queue a message, waiting for queue space (cancel the caller to give up)."""
        while True:
            self._check_open()
            try:
                self.core.send_message(channel_id, payload)
            except WouldBlock:
                await self._wait_space()
            else:
                self._kick()
                return

    async def request(
        self, channel_id: int, payload: bytes, timeout: float | None = None,
        *, deadline: float | None = None, started: float | None = None,
    ) -> bytes:
        """Send a request and wait for the response payload.

        Cancelling the caller cancels the request on the wire, and so does the deadline
        (``timeout`` seconds from now, or ``deadline`` on ``anyio.current_time()``'s clock;
        the earlier of the two; enforced by the node's timer task, so a request costs no cancel
        scope), which raises :class:`RequestExpired`. An error response raises
        :class:`RequestError`. The request counts in :attr:`meter` while it is in flight, and
        its round trip is sampled when it is answered. ``started``: the clock's time now, when
        the caller just read it (saves a clock read).
        """
        clock = self.clock
        if started is None:
            started = clock()
        if timeout is not None:
            until = started + timeout
            deadline = until if deadline is None else min(deadline, until)
        while True:
            self._check_open()
            try:
                request_id = self.core.send_request(channel_id, payload)
            except WouldBlock:
                if deadline is None:
                    await self._wait_space()
                    continue
                with anyio.move_on_at(deadline):
                    await self._wait_space()
                    continue
                raise RequestExpired("no room for the request before its deadline") from None
            else:
                break
        requests = self._requests
        waiter = requests.add(request_id, deadline)
        self._kick()
        self.meter.started(channel_id)
        try:
            payload = await requests.wait(waiter)
        finally:
            self.meter.finished(channel_id)
        self.meter.sample(clock() - started)
        return payload

    async def respond(self, channel_id: int, request_id: int, payload: bytes) -> None:
        """Answer the peer's request, waiting for queue space (nothing once closing)."""
        await self._answer(functools.partial(
            self.core.send_response, channel_id, request_id, payload))

    async def respond_error(
        self, channel_id: int, request_id: int, code: ErrorCode, message: str
    ) -> None:
        """Answer the peer's request with an error, waiting for queue space."""
        await self._answer(functools.partial(
            self.core.send_error, channel_id, request_id, code, message))

    def respond_nowait(self, channel_id: int, request_id: int, payload: bytes) -> None:
        """Queue the answer to the peer's request without waiting (nothing once closing);
        ``WouldBlock`` when the channel's queue is full."""
        if self.is_open:
            self.core.send_response(channel_id, request_id, payload)
            self._kick()

    def respond_error_nowait(
        self, channel_id: int, request_id: int, code: ErrorCode, message: str
    ) -> None:
        """Queue an error answer without waiting (as :meth:`respond_nowait`)."""
        if self.is_open:
            self.core.send_error(channel_id, request_id, code, message)
            self._kick()

    async def _answer(self, queue: Callable[[], bool]) -> None:
        while self.is_open:
            try:
                queue()
            except WouldBlock:
                await self._wait_space()
            else:
                self._kick()
                return

    def register_handler(self, key: tuple[int, int], scope: anyio.CancelScope) -> None:
        self._handlers[key] = scope

    def unregister_handler(self, key: tuple[int, int]) -> None:
        self._handlers.pop(key, None)

    # -------------------------------------------------------------------------------- timer

    def _reschedule(self, now: float) -> None:
        """Tell the node's timer service about the core's next deadline. One already due (the
        send bucket's refill, which the writer just woken will settle) is pushed a millisecond
        ahead, so the timer never spins on it; the next firing reschedules from the core."""
        if self._finished:
            return
        deadline = self.core.get_timer()
        if deadline is not None and deadline <= now:
            deadline = now + _RETRY_DUE_TIMER
        self._timers.schedule(self, deadline)

    def _timer_maybe_earlier(self) -> None:
        deadline = self.core.get_timer()
        if deadline is not None and deadline < self.timer_at:
            self._timers.schedule(self, deadline)

    def on_timer(self, now: float) -> None:
        """The core's deadline passed (pings, idle timeout, send rate-limit refill, or the
        close deadline)."""
        core = self.core
        core.handle_timer(now)
        match core.state:
            case ConnectionState.OPEN:
                if core.idle_expired:
                    log.info("peer %s idle for too long; closing", self.node_id)
                    self.close(DisconnectReason.IDLE_TIMEOUT, "idle timeout")
                    return
                self._kick()
                self._reschedule(now)
            case ConnectionState.CLOSING:
                self._reschedule(now)  # the close deadline, not reached yet
            case ConnectionState.CLOSED | ConnectionState.ABORTED:
                self._stop()
            case unreachable:
                assert_never(unreachable)

    # ----------------------------------------------------------------- the reader's host

    def deliver_message_nowait(self, channel_id: int, payload: bytes) -> bool:
        return self._delivery.on_message_nowait(self, channel_id, payload)

    async def deliver_message(self, channel_id: int, payload: bytes) -> None:
        await self._delivery.on_message(self, channel_id, payload)

    def stream_closed(self) -> None:
        self.core.connection_lost()
        self._stop()

    def protocol_violation(self, exc: RemoteProtocolError) -> None:
        log.warning("peer %s violated the protocol: %s", self.node_id, exc)
        self._observer.on_protocol_violation(self.node_id, type(exc).__name__)
        self.close(DisconnectReason.PROTOCOL_VIOLATION, str(exc)[:200], error=ConnectionClosed(
            f"connection to {self.node_id} closed: protocol violation: {exc}"))

    def handle_event(self, event: Event) -> bool:
        """Dispatch one event other than a message, synchronously (for the reader); False
        when the connection stopped (the peer said goodbye)."""
        match event:
            case ResponseReceived(request_id=request_id, payload=payload):
                self._requests.resolve(request_id, payload)
                self._release_space()
            case RequestReceived(channel_id=channel_id, request_id=request_id,
                                 payload=payload):
                self._delivery.on_request(self, channel_id, request_id, payload)
            case ErrorReceived(request_id=request_id, code=code, message=message):
                self._requests.fail(request_id, RequestError(code, message))
                self._release_space()
            case CancelReceived(channel_id=channel_id, request_id=request_id):
                scope = self._handlers.get((channel_id, request_id))
                if scope is not None:
                    scope.cancel()
            case RequestRejected(channel_id=channel_id):
                self._observer.on_rate_limited(self.node_id, channel_id)
            case MessageDropped(channel_id=channel_id, reason=reason):
                log.debug("dropped a message from %s on channel %d: %s",
                          self.node_id, channel_id, reason)
            case LatencyMeasured(rtt=rtt):
                self.meter.sample(rtt)
                self._observer.on_latency(self.node_id, rtt)
            case DisconnectReceived(reason=reason, message=message):
                self.remote_reason = reason
                log.info("peer %s disconnected: %s %s", self.node_id, reason.label, message)
                self._close_error = ConnectionClosed(
                    f"peer {self.node_id} disconnected: {reason.label} {message}"
                )
                self._stop()  # the core is CLOSED: the peer said goodbye
                return False
            case PeerInfoReceived(info_seq=info_seq, info=info):
                self.info = info
                self.channels = frozenset(info.channels)
                log.debug("peer %s announced node info #%d: channels %s", self.node_id,
                          info_seq, sorted(self.channels))
                self._delivery.on_peer_info(self)
            case IdleTimeout():
                pass  # the timer task closes the connection when it fires
            case MessageReceived():
                raise AssertionError("the reader delivers messages itself")
            case unreachable:
                assert_never(unreachable)
        return True
