"""The router: channels on one side, peer connections on the other.

Theory of operation
-------------------
* Each channel has one bounded **inbox** (an anyio memory object stream of ``recv_queue_size``
  envelopes). Remote messages are decoded by the channel codec and pushed into it; a full inbox
  makes the peer's reader wait, which stops reading the socket: backpressure reaches the sender.
  ``LOCAL`` messages are pushed as the very same object (never serialised).
* Sending resolves the destination to node ids (the local id meaning LOCAL), encodes the message
  at most once, and queues it in each peer connection's bounded per-channel queue. A single
  destination waits (up to the send timeout) for space; a fan-out destination queues without
  waiting where it can and gives each full peer its own timeout in parallel, so one slow peer
  never delays the others; slow peers are reported to the observer and in the result.
* A destination that selects nobody raises :class:`~overlay.errors.NoRoute` from ``send``,
  ``send_nowait`` and ``request`` alike (``BROADCAST`` with no peer connected included).
* Requests go through the destination's ``run_request`` (so new destination kinds control retries
  and hedging) and end in :meth:`Router._attempt`: LOCAL calls the handler directly with the
  same objects, a peer goes over the wire with a request id. The request's deadline is fixed
  once, when ``request`` is called (``timeout``, else the caller's cancel scope, else the spec's
  ``request_timeout``), and every attempt, whatever the destination, hands it to the node's timer
  heap and reports its :class:`~overlay.connection._outcome.AttemptOutcome` for that peer to the
  observer. A destination's ``run_request`` also runs under a cancel scope expiring a millisecond
  later (a backstop for anything it awaits besides attempts, which end by their timer first).
  When the deadline is the caller's cancel scope, that scope cancels the attempts itself; an
  attempt cut short at the deadline that way counts as a ``TIMEOUT`` of its peer.
* Destinations select from the router's :class:`~overlay.router._peertable.PeerTable` (its
  connections; views built only on demand, nothing per message), never from the router itself.
  A higher layer may install a *binder* (:meth:`Router.set_destination_binder`): every
  destination object passes through it before use, so a value such as ``Role("blocksync")``
  can be bound to node state (peer health, hedging) the router knows nothing about.
* Inbound requests (``overlay.router._serving.Responder``) run their handler on one of the
  connection's request workers; the peer's CANCEL
  cancels it, closing the connection cancels all of them.
* Channels open and close at any time. Opening one adds it to every live connection; closing one
  removes it from them (our requests on it fail with :class:`~overlay.errors.ChannelClosed`, the
  peer's get ``NO_HANDLER``) and ends its inbox. Either way ``on_channels_changed`` (set by the
  node) is called so the node can announce its new NodeInfo. What each peer serves is
  ``conn.channels``, kept current by the peer's node-info updates: a request to a peer that does
  not serve the channel fails at once with ``RequestError(NO_HANDLER)``, the error the peer
  itself would answer, without a round trip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import anyio
import anyio.lowlevel

from overlay.connection._core import SharedMessage, shared_message
from overlay.connection._driver import PeerConnection, RequestExpired
from overlay.connection._observer import Observer, TaskRoot
from overlay.connection._outcome import AttemptOutcome, outcome_of_error_code
from overlay.errors import (
    ChannelError,
    ConnectionClosed,
    DecodeError,
    ErrorCode,
    MessageTooLarge,
    NodeClosed,
    PeerNotConnected,
    RequestError,
    RequestTimeout,
    SendTimeout,
    WouldBlock,
)
from overlay.identity import NodeId
from overlay.router._channel import (
    Channel,
    ChannelSpec,
    ChannelStatistics,
    DeliveryReport,
    Envelope,
    RequestHandler,
)
from overlay.router._destination import LOCAL, Destination, To, no_route
from overlay.router._inbox import Inboxes
from overlay.router._peertable import PeerTable
from overlay.router._serving import Responder, plain_handler
from overlay.router._state import (
    ChannelState,
    channel_params,
    check_timeout,
    closed_error,
    put_nowait,
)
from overlay.transport._asyncio import current_clock
from overlay.wire._nodeinfo import NodeInfo

__all__ = ["PeerInfoListener", "Router", "channel_params"]

PeerInfoListener = Callable[[NodeId, NodeInfo], None]
"""Called with a connected peer's id and its new NodeInfo after it announced a change."""

log = logging.getLogger("overlay.router")

_NO_FAILURES: Mapping[NodeId, AttemptOutcome] = MappingProxyType({})

_DEADLINE_SLACK = 0.001
"""Seconds around a request's deadline: an attempt cancelled from this long before it counts as
timed out (a cancel scope's deadline may be delivered a hair early on asyncio), and the backstop
scope of a destination's ``run_request`` expires this long after it."""

@dataclass(frozen=True, slots=True)
class _Deadline:
    """A request's deadline, fixed when ``request`` is called."""

    at: float
    """On ``anyio.current_time()``'s clock."""
    seconds: float
    """The budget it was computed from (for messages)."""
    own: bool
    """True when the router enforces it (``timeout`` or the spec's default); False when it is
    the caller's cancel scope, which then cancels the request itself."""


class Router:
    """Routes channel traffic between local reactors and peer connections."""

    def __init__(self, local_id: NodeId, observer: Observer) -> None:
        self._local_id = local_id
        self._observer = observer
        self._clock: Callable[[], float] | None = None
        """``anyio.current_time`` bound on first use (see ``current_clock``)."""
        self._channels: dict[int, ChannelState] = {}
        self._responder = Responder(local_id, self._channels, observer)
        self._inboxes = Inboxes(self._channels, observer)
        self._table = PeerTable(local_id)
        self._peers = self._table.connections
        self._closed = False
        self._local_report = DeliveryReport(delivered=(local_id,), failed=_NO_FAILURES)
        self._binder: Callable[[Destination], Destination] | None = None
        self.on_channels_changed: Callable[[], None] | None = None
        """Called after a channel was opened or closed (the node announces its NodeInfo)."""
        self._info_listeners: list[PeerInfoListener] = []

    # --------------------------------------------------------------------------- peer table

    @property
    def local_id(self) -> NodeId:
        return self._local_id

    @property
    def peer_table(self) -> PeerTable:
        """The connected peers as destinations see them (views, scores, capabilities)."""
        return self._table

    def connected_peers(self) -> Sequence[NodeId]:
        return tuple(self._peers)

    def set_destination_binder(
        self, binder: Callable[[Destination], Destination] | None
    ) -> None:
        """Pass every destination object through ``binder`` before selecting or requesting
        (the node's routing layer binds roles to its health and hedging state)."""
        self._binder = binder

    def _bind(self, to: Destination) -> Destination:
        return to if self._binder is None else self._binder(to)

    # ----------------------------------------------------------------------------- channels

    def open_channel(self, spec: ChannelSpec[Any, Any]) -> ChannelState:
        if self._closed:
            raise NodeClosed("the node is closed")
        existing = self._channels.get(spec.id)
        if existing is not None:
            if existing.spec is spec or existing.spec == spec:
                return existing
            raise ChannelError(
                f"channel id {spec.id} is already open as {existing.spec.name!r}"
            )
        send, recv = anyio.create_memory_object_stream[Envelope[Any]](spec.recv_queue_size)
        state = ChannelState(spec, send, recv)
        self._channels[spec.id] = state
        if self._peers:
            params = channel_params(spec)
            for conn in self._peers.values():
                conn.add_channel(params)
        if self.on_channels_changed is not None:
            self.on_channels_changed()
        return state

    def close_channel(self, channel: ChannelSpec[Any, Any] | int) -> None:
        """Close a channel: live connections stop carrying it, our pending requests on it and
        its waiting senders and receivers fail with ChannelClosed, messages still in its inbox
        are dropped. ChannelError if it is not open (or is another channel with that id)."""
        if self._closed:
            raise NodeClosed("the node is closed")
        cid = channel if isinstance(channel, int) else channel.id
        state = self._channels.get(cid)
        if state is None or not (
            isinstance(channel, int) or state.spec is channel or state.spec == channel
        ):
            raise ChannelError(f"channel {channel!r} is not open on this node")
        del self._channels[cid]
        state.closed = True
        error = closed_error(state.spec)
        for conn in list(self._peers.values()):
            conn.remove_channel(cid, error)
        state.inbox_send.close()
        state.inbox_recv.close()
        if self.on_channels_changed is not None:
            self.on_channels_changed()

    def channel(self, spec: ChannelSpec[Any, Any]) -> Channel[Any, Any]:
        self.open_channel(spec)
        return Channel(spec, self)

    def channel_specs(self) -> list[ChannelSpec[Any, Any]]:
        return [state.spec for state in self._channels.values()]

    def _state(self, spec: ChannelSpec[Any, Any]) -> ChannelState:
        if self._closed:
            raise NodeClosed("the node is closed")
        state = self._channels.get(spec.id)
        if state is None or state.spec is not spec and state.spec != spec:
            raise ChannelError(f"channel {spec.name!r} ({spec.id}) is not open on this node")
        return state

    def set_handler(
        self, spec: ChannelSpec[Any, Any], handler: RequestHandler[Any, Any] | None
    ) -> None:
        state = self._state(spec)
        state.handler = handler
        state.inline = handler is not None and plain_handler(handler)

    def channel_statistics(self, spec: ChannelSpec[Any, Any]) -> ChannelStatistics:
        state = self._state(spec)
        stats = state.inbox_send.statistics()
        return ChannelStatistics(
            name=spec.name,
            channel_id=spec.id,
            inbox_depth=stats.current_buffer_used,
            inbox_capacity=spec.recv_queue_size,
            messages_delivered=state.delivered,
            messages_dropped=state.dropped,
            requests_served=state.served,
            requests_failed=state.failed,
            slow_peer_events=state.slow,
        )

    # -------------------------------------------------------------------------------- peers

    def get_peer(self, node_id: NodeId) -> PeerConnection | None:
        return self._peers.get(node_id)

    def peer_channels(self, node_id: NodeId) -> frozenset[int]:
        """The channel ids a connected peer serves now (empty when it is not connected)."""
        conn = self._peers.get(node_id)
        return frozenset() if conn is None else conn.channels

    def add_peer_info_listener(self, listener: PeerInfoListener) -> Callable[[], None]:
        """Call ``listener(peer, info)`` whenever a connected peer announces a new NodeInfo
        (synchronously, from the peer's reader: it must not block). Returns a function that
        removes it."""
        self._info_listeners.append(listener)

        def remove() -> None:
            if listener in self._info_listeners:
                self._info_listeners.remove(listener)

        return remove

    def on_peer_info(self, conn: PeerConnection) -> None:
        self._observer.on_peer_info_updated(conn.node_id, conn.info)
        for listener in list(self._info_listeners):
            try:
                listener(conn.node_id, conn.info)
            except Exception:  # a listener bug must not take the connection down
                log.exception("peer-info listener %r failed", listener)
                self._observer.on_task_failed(TaskRoot.PEER_INFO_LISTENER)

    def peers(self) -> list[PeerConnection]:
        return list(self._peers.values())

    def add_peer(self, conn: PeerConnection) -> None:
        self._table.add(conn)

    def remove_peer(self, conn: PeerConnection) -> None:
        self._table.remove(conn)

    def close(self) -> None:
        """Stop accepting work: inboxes end (receivers see NodeClosed)."""
        self._closed = True
        for state in self._channels.values():
            state.inbox_send.close()
            state.inbox_recv.close()  # else anyio warns (ResourceWarning) when it is collected

    # ------------------------------------------------------------------------------ receive

    async def receive(self, spec: ChannelSpec[Any, Any]) -> Envelope[Any]:
        state = self._state(spec)
        try:
            return await state.inbox_recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if state.closed:
                raise closed_error(spec)() from None
            raise NodeClosed("the node is closed") from None

    def receive_nowait(self, spec: ChannelSpec[Any, Any]) -> Envelope[Any]:
        state = self._state(spec)
        try:
            return state.inbox_recv.receive_nowait()
        except anyio.WouldBlock:
            raise WouldBlock(f"no message waiting on channel {spec.name!r}") from None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if state.closed:
                raise closed_error(spec)() from None
            raise NodeClosed("the node is closed") from None

    def on_message_nowait(self, conn: PeerConnection, channel_id: int, payload: bytes) -> bool:
        return self._inboxes.deliver_nowait(conn, channel_id, payload)

    async def on_message(self, conn: PeerConnection, channel_id: int, payload: bytes) -> None:
        await self._inboxes.deliver(conn, channel_id, payload)

    # --------------------------------------------------------------------------------- send

    def _targets(self, to: To) -> tuple[Sequence[NodeId], bool]:
        if isinstance(to, str):
            return (to,), False
        if not isinstance(to, Destination):
            raise ChannelError(f"not a destination: {to!r}")
        to = self._bind(to)
        targets = to.select(self._table)
        if not targets:
            raise no_route(self._table, to)
        return targets, to.fanout or len(targets) > 1

    def _encode(self, spec: ChannelSpec[Any, Any], message: Any) -> bytes:
        payload = spec.codec.encode(message)
        if len(payload) > spec.max_message_size:
            raise MessageTooLarge(
                f"{len(payload)}-byte message exceeds {spec.name!r} limit "
                f"{spec.max_message_size}"
            )
        return payload

    async def send(
        self, spec: ChannelSpec[Any, Any], to: To, message: Any, timeout: float | None
    ) -> DeliveryReport:
        state = self._state(spec)
        check_timeout(timeout)
        wait = spec.send_timeout if timeout is None else timeout
        if to is LOCAL:
            await self._send_local(state, message, wait)
            return self._local_report
        targets, fanout = self._targets(to)
        if not fanout:
            target = targets[0]
            if target == self._local_id:
                await self._send_local(state, message, wait)
                return self._local_report
            await self._send_one(state, target, self._encode(spec, message), wait)
            return DeliveryReport(delivered=(target,), failed=_NO_FAILURES)
        # Encoded once; each connection gets the same payload object, queued without waiting
        # (its writer is flushed by the one deferred callback all of them share on asyncio).
        payload: bytes | None = None
        entry: SharedMessage | None = None
        delivered: list[NodeId] = []
        failed: dict[NodeId, AttemptOutcome] = {}
        slow: list[tuple[NodeId, PeerConnection]] = []
        local_id = self._local_id
        peers = self._peers
        channel_id = spec.id
        for target in targets:
            if target == local_id:
                try:
                    state.inbox_send.send_nowait(Envelope(local_id, message, channel_id))
                    delivered.append(target)
                except anyio.WouldBlock:
                    failed[target] = AttemptOutcome.WOULD_BLOCK
                continue
            conn = peers.get(target)
            if conn is None:
                failed[target] = AttemptOutcome.NOT_CONNECTED
                continue
            if entry is None:
                payload = self._encode(spec, message)
                entry = shared_message(payload)
            try:
                if conn.offer_message(channel_id, entry):
                    delivered.append(target)
                else:
                    failed[target] = AttemptOutcome.NOT_CONNECTED
            except WouldBlock:
                slow.append((target, conn))
        if slow:
            assert payload is not None
            data = payload

            async def send_slow(target: NodeId, conn: PeerConnection) -> None:
                try:
                    await self._send_one(state, target, data, wait, conn)
                    delivered.append(target)
                except SendTimeout:
                    failed[target] = AttemptOutcome.TIMEOUT
                except (ConnectionClosed, PeerNotConnected):
                    failed[target] = AttemptOutcome.CLOSED

            async with anyio.create_task_group() as tg:
                for target, conn in slow:
                    tg.start_soon(send_slow, target, conn)
        return DeliveryReport(delivered=tuple(delivered), failed=failed)

    def send_nowait(self, spec: ChannelSpec[Any, Any], to: To, message: Any) -> DeliveryReport:
        state = self._state(spec)
        targets, fanout = self._targets(to)
        delivered: list[NodeId] = []
        failed: dict[NodeId, AttemptOutcome] = {}
        payload: bytes | None = None
        for target in targets:
            try:
                if target == self._local_id:
                    try:
                        state.inbox_send.send_nowait(Envelope(self._local_id, message, spec.id))
                    except anyio.WouldBlock:
                        raise WouldBlock(f"LOCAL inbox of {spec.name!r} is full") from None
                else:
                    conn = self._peers.get(target)
                    if conn is None:
                        raise PeerNotConnected(f"peer {target} is not connected")
                    if payload is None:
                        payload = self._encode(spec, message)
                    conn.send_message_nowait(spec.id, payload)
                delivered.append(target)
            except WouldBlock:
                if not fanout:
                    raise
                failed[target] = AttemptOutcome.WOULD_BLOCK
            except PeerNotConnected:
                if not fanout:
                    raise
                failed[target] = AttemptOutcome.NOT_CONNECTED
            except ConnectionClosed:
                if not fanout:
                    raise
                failed[target] = AttemptOutcome.CLOSED
        return DeliveryReport(delivered=tuple(delivered), failed=failed)

    async def _send_local(self, state: ChannelState, message: Any, wait: float) -> None:
        env = Envelope(self._local_id, message, state.spec.id)
        if put_nowait(state, env):
            return
        # Full: let the consumer run once before paying for a timeout scope (a producer
        # outrunning its consumer by one item is the common case, not a stall).
        await anyio.lowlevel.checkpoint()
        if put_nowait(state, env):
            return
        with anyio.move_on_after(wait):
            await state.inbox_send.send(env)
            return
        raise SendTimeout(f"LOCAL inbox of {state.spec.name!r} stayed full for {wait:g} s")

    async def _send_one(
        self,
        state: ChannelState,
        target: NodeId,
        payload: bytes,
        wait: float,
        conn: PeerConnection | None = None,
    ) -> None:
        conn = conn or self._peers.get(target)
        if conn is None:
            raise PeerNotConnected(f"peer {target} is not connected")
        try:
            conn.send_message_nowait(state.spec.id, payload)
            return
        except WouldBlock:
            pass
        with anyio.move_on_after(wait):
            try:
                await conn.send_message(state.spec.id, payload)
            except ChannelError:
                if state.closed:  # closed while we waited for queue space
                    raise closed_error(state.spec)() from None
                raise
            return
        state.slow += 1
        self._observer.on_slow_peer(target, state.spec.name)
        log.info("peer %s is slow: %s send queue stayed full for %g s",
                 target, state.spec.name, wait)
        raise SendTimeout(f"peer {target} queue on {state.spec.name!r} full for {wait:g} s")

    # ----------------------------------------------------------------------------- requests

    async def request(
        self, spec: ChannelSpec[Any, Any], to: To, message: Any, timeout: float | None
    ) -> Any:
        state = self._state(spec)
        check_timeout(timeout)
        clock = self._clock
        if clock is None:
            clock = self._clock = current_clock()
        now = clock()
        if timeout is not None:
            deadline = _Deadline(now + timeout, timeout, own=True)
        elif (scope_at := anyio.current_effective_deadline()) != math.inf:
            deadline = _Deadline(scope_at, scope_at - now, own=False)
        else:
            deadline = _Deadline(now + spec.request_timeout, spec.request_timeout, own=True)
        if isinstance(to, str):
            return await self._attempt(state, to, message, deadline, now)
        if to is LOCAL:
            return await self._attempt(state, self._local_id, message, deadline)
        if not isinstance(to, Destination):
            raise ChannelError(f"not a destination: {to!r}")
        to = self._bind(to)

        async def attempt(target: NodeId) -> Any:
            return await self._attempt(state, target, message, deadline)

        if not deadline.own:
            return await to.run_request(self._table, attempt)
        # The backstop fires just after the attempts' own deadline, so an attempt in flight
        # always ends by its timer (RequestTimeout, reported for its peer) and never by this.
        with anyio.CancelScope(deadline=deadline.at + _DEADLINE_SLACK):
            return await to.run_request(self._table, attempt)
        raise RequestTimeout(
            f"no response on {spec.name!r} from {to!r} within {deadline.seconds:g} s"
        )

    async def _attempt(
        self, state: ChannelState, target: NodeId, message: Any, deadline: _Deadline,
        started: float | None = None,
    ) -> Any:
        """One attempt at one target, under the request's deadline; reports its outcome.
        ``started``: the clock's time now, when the caller just read it."""
        spec = state.spec
        if target == self._local_id:
            if not deadline.own:
                return await self._responder.serve_local(state, message)
            with anyio.CancelScope(deadline=deadline.at):
                return await self._responder.serve_local(state, message)
            raise RequestTimeout(
                f"LOCAL handler of {spec.name!r} did not answer within {deadline.seconds:g} s"
            )
        conn = self._peers.get(target)
        if conn is None:
            raise PeerNotConnected(f"peer {target} is not connected")
        payload = self._encode(spec, message)
        clock = conn.clock
        if started is None:
            started = clock()
        outcome = AttemptOutcome.CANCELLED
        try:
            try:
                if spec.id not in conn.channels:
                    # What the peer would answer (and counted as its refusal), without the
                    # round trip: its NodeInfo (hello or latest update) does not list the channel.
                    raise RequestError(
                        ErrorCode.NO_HANDLER, f"peer {target} does not serve channel {spec.name!r}"
                    )
                data = await conn.request(
                    spec.id, payload, deadline=deadline.at if deadline.own else None,
                    started=started,
                )
            except RequestExpired:
                outcome = AttemptOutcome.TIMEOUT
                raise RequestTimeout(
                    f"no response on {spec.name!r} from {target} within {deadline.seconds:g} s"
                ) from None
            except RequestError as exc:
                outcome = outcome_of_error_code(exc.code)
                raise
            except ConnectionClosed:
                outcome = AttemptOutcome.CLOSED
                raise
            try:
                result = spec.response_codec.decode(data)
            except DecodeError as exc:
                self._observer.on_invalid_message(target, spec.name, str(exc))
                outcome = AttemptOutcome.ERROR
                raise
            outcome = AttemptOutcome.OK
            return result
        finally:
            ended = clock()
            if outcome is AttemptOutcome.CANCELLED and ended >= deadline.at - _DEADLINE_SLACK:
                outcome = AttemptOutcome.TIMEOUT  # cut short by a scope at the deadline
            if outcome is not AttemptOutcome.CANCELLED:
                self._observer.on_request_done(target, spec.name, ended - started, outcome)

    def on_request(
        self, conn: PeerConnection, channel_id: int, request_id: int, payload: bytes
    ) -> None:
        self._responder.on_request(conn, channel_id, request_id, payload)
