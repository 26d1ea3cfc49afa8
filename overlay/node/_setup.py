"""Connection set-up of a node: the hello exchange, admission, and the life of each connection.

After the transport's Noise handshake (the peer's node id is authenticated), both ends
exchange their NodeInfo (``overlay.wire._nodeinfo``); the dialer's hello rides with the
handshake's last message. The listener checks compatibility and admission and answers with its
own NodeInfo or a refusal; the dialer checks the answer the same way and, on a refusal of its
own, sends a Disconnect. Every failure is counted by direction and reason
(``handshake_failures``, ``Observer.on_handshake_failed``); a peer that hangs up during the
set-up is an ordinary failure (reason ``connection``, logged at debug).

Duplicate connections (both nodes dialing each other at once) are resolved the same way on both
sides: the connection initiated by the node with the smaller id survives.

:class:`ConnectionSetup` is composed into the :class:`~overlay.node.Node`; it reads the node's
router, config, peering and NodeInfo, and owns the failure counts and the traffic totals of
closed connections.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from overlay.address import NodeAddress
from overlay.connection._core import ConnectionCore
from overlay.connection._driver import PeerConnection
from overlay.connection._observer import Observer, TaskRoot
from overlay.connection._timers import TimerService
from overlay.connection._types import ChannelParams
from overlay.errors import (
    ConnectFailure,
    DialError,
    HandshakeError,
    HandshakeTimeout,
    IncompatiblePeerError,
    OverlayError,
    RemoteProtocolError,
)
from overlay.identity import NodeId
from overlay.node._config import NodeConfig
from overlay.node._peering import DialOutcome
from overlay.node._traffic import TrafficTotals
from overlay.node._transient import TransientConnections, is_transient_hello
from overlay.router._channel import ChannelSpec
from overlay.router._router import Router, channel_params
from overlay.transport import Transport
from overlay.transport._failures import Direction, HandshakeFailureReason, handshake_failure_reason
from overlay.transport._hello import receive_hello, send_hello
from overlay.transport._secure import PeerAttribute, SecureStream
from overlay.wire._nodeinfo import (
    DisconnectReason,
    NodeInfo,
    check_compatible,
    decode_hello_reply,
    decode_node_info,
    encode_hello_reply,
    encode_info_update,
    encode_node_info,
    hello_frame,
)

if TYPE_CHECKING:
    from overlay.node._peering import Peering


class SetupHost(Protocol):
    """What the set-up reads from its node (the :class:`~overlay.node.Node`)."""

    node_id: NodeId
    config: NodeConfig
    router: Router
    observer: Observer
    admission: Admission | None

    @property
    def info_seq(self) -> int: ...

    def local_info(self) -> NodeInfo: ...


Admission = Callable[[NodeId, str, bool], tuple[DisconnectReason, str] | None]
"""``(node_id, remote_host, outbound) -> None`` to admit, or ``(DisconnectReason, message)``."""

__all__ = ["Admission", "ConnectionSetup", "SetupHost"]

log = logging.getLogger("overlay.node")


class ConnectionSetup:
    """The hello, admission and connection tasks of one node (see the module docstring)."""

    def __init__(
        self,
        node: SetupHost,
        *,
        timers: TimerService,
        transient: TransientConnections | None,
        closing: Callable[[], bool],
        peering: Callable[[], Peering | None],
    ) -> None:
        """``closing``: whether the node is shutting down; ``peering``: the peering driver
        while the node's services run (None before)."""
        self._node = node
        self._timers = timers
        self._transient = transient
        self._closing = closing
        self._peering = peering
        self._close_timeout = node.config.connection.close_timeout
        self._dials: dict[NodeId, anyio.Event] = {}  # dials in progress, by peer
        self.handshake_failures: dict[Direction, dict[HandshakeFailureReason, int]] = {
            Direction.INBOUND: {}, Direction.OUTBOUND: {},
        }
        """Failed connection set-ups (Noise handshake or hello) by direction and reason."""
        self.retired = TrafficTotals()
        """Traffic counters of closed connections."""
        self._core_config = node.config.connection.core_config()  # once: the config is frozen
        self._params_cache: dict[int, tuple[ChannelSpec[Any, Any], ChannelParams]] = {}

    async def dial(
        self,
        addr: NodeAddress,
        timeout: float | None,
        transport_for: Callable[[NodeAddress], Transport],
        tg: anyio.abc.TaskGroup,
    ) -> DialOutcome:
        """``Node.dial_outcome`` once the address is checked: one dial per peer at a time, the
        Noise handshake with our hello riding its last message, then the connection's task in
        ``tg`` (started once the hello exchange succeeded)."""
        conf = self._node.config.connection
        limit = timeout if timeout is not None else conf.dial_timeout + conf.handshake_timeout
        deadline = anyio.current_time() + limit
        # One dial per peer at a time: a second caller waits for the first one's outcome.
        with anyio.move_on_after(limit):
            while (pending := self._dials.get(addr.node_id)) is not None:
                await pending.wait()
        if addr.node_id in self._dials:
            raise DialError(
                f"a dial to {addr} already in progress did not finish within {limit:g} s",
                ConnectFailure.TIMEOUT,
            )
        existing = self._node.router.get_peer(addr.node_id)
        if existing is not None and existing.is_open:
            return DialOutcome(addr.node_id, new=False)
        transport = transport_for(addr)
        done = self._dials[addr.node_id] = anyio.Event()
        try:
            # Our hello rides with the handshake's last message (one write, one read fewer).
            hello = hello_frame(encode_node_info(self._node.local_info()))
            hello_seq = self._node.info_seq
            remaining = deadline - anyio.current_time()  # after any wait for another dial
            if remaining <= 0:
                raise DialError(f"no time left to dial {addr}", ConnectFailure.TIMEOUT)
            stream = await transport.dial(addr, timeout=remaining, first_data=hello)
            hello_limit = deadline - anyio.current_time()  # the caller's budget covers it all
            await tg.start(self.run_connection, stream, True, hello_limit,
                                 hello_seq)
        except OverlayError as exc:
            if not isinstance(exc, DialError):  # could not connect: a dial failure, not this
                self.count_failure(exc, Direction.OUTBOUND)
            raise
        finally:
            del self._dials[addr.node_id]
            done.set()
        return DialOutcome(addr.node_id, new=True)

    async def on_inbound(self, stream: SecureStream) -> None:
        try:
            await self.run_connection(stream, False)
        except OverlayError as exc:
            reason = self.count_failure(exc, Direction.INBOUND)
            # A peer hanging up during the set-up is ordinary (a dialer that gave up, a lookup
            # that finished): counted, and logged at debug only.
            log.log(logging.DEBUG if reason is HandshakeFailureReason.CONNECTION else logging.INFO,
                    "inbound connection from %s failed (%s): %s",
                    stream.extra(PeerAttribute.remote_address, "?"), reason.value, exc)

    def count_failure(self, exc: BaseException, direction: Direction) -> HandshakeFailureReason:
        reason = handshake_failure_reason(exc)
        self.record_failure(direction, reason)
        return reason

    def record_failure(self, direction: Direction, reason: HandshakeFailureReason) -> None:
        """Count a failed connection set-up (also called by the transports for inbound Noise
        failures) and tell the observer."""
        counts = self.handshake_failures[direction]
        counts[reason] = counts.get(reason, 0) + 1
        self._node.observer.on_handshake_failed(direction, reason)

    def _core_for(self, remote: NodeInfo, now: float) -> ConnectionCore:
        conf = self._node.config.connection
        compression = conf.compression and "zstd" in remote.compression
        return ConnectionCore(self._core_config, self._channel_params(), now=now,
                              compression=compression, peer_info=remote)

    async def _refuse(self, stream: SecureStream, remote: NodeInfo, reason: DisconnectReason,
                      message: str) -> None:
        """Tell a peer we will not keep why, in a best-effort Disconnect frame (written within
        ``connection.close_timeout``; a peer already gone is fine)."""
        now = anyio.current_time()
        core = self._core_for(remote, now)
        core.send_disconnect(reason, message, now=now)
        with anyio.move_on_after(self._close_timeout), _peer_gone_ok():
            await stream.send(core.data_to_send(now))

    def _channel_params(self) -> list[ChannelParams]:
        """The open channels' parameters, shared by every connection (frozen records, built
        once per channel spec rather than once per connection)."""
        cache = self._params_cache
        params = []
        for spec in self._node.router.channel_specs():
            cached = cache.get(id(spec))
            if cached is None or cached[0] is not spec:
                cached = cache[id(spec)] = (spec, channel_params(spec))
            params.append(cached[1])
        if len(cache) > 4 * len(params) + 16:  # channels closed and reopened many times
            live = {id(spec) for spec in self._node.router.channel_specs()}
            for key in [key for key in cache if key not in live]:
                del cache[key]
        return params

    def _admit(
        self, node_id: NodeId, remote_host: str, outbound: bool
    ) -> tuple[DisconnectReason, str] | None:
        if node_id == self._node.node_id:
            return (DisconnectReason.SELF, "connected to ourselves")
        if self._closing():
            return (DisconnectReason.SHUTDOWN, "node shutting down")
        existing = self._node.router.get_peer(node_id)
        replacing = False
        if existing is not None and existing.is_open:
            # Simultaneous dials: keep the connection initiated by the smaller node id (the
            # same verdict on both ends). A new connection from the *same* initiator replaces
            # the old one: the initiator only redials once it saw the old one fail (after a
            # partition the other end may not have noticed yet).
            new_initiator = self._node.node_id if outbound else node_id
            old_initiator = self._node.node_id if existing.outbound else node_id
            if old_initiator != new_initiator and old_initiator < new_initiator:
                return (DisconnectReason.DUPLICATE, "already connected")
            replacing = old_initiator == new_initiator
        peering = self._peering()
        if peering is not None:
            verdict = peering.admit(node_id, remote_host, outbound)
            # The peer manager still sees the old connection; the rule above replaces it.
            if verdict is not None and not (replacing and verdict[0] == DisconnectReason.DUPLICATE):
                return verdict
        if self._node.admission is not None:
            return self._node.admission(node_id, remote_host, outbound)
        return None

    async def _hello(
        self, stream: SecureStream, outbound: bool
    ) -> tuple[NodeInfo, bytes, int | None]:
        """Exchange NodeInfo (see ``overlay.wire._nodeinfo``); returns it, leftover bytes and,
        for an inbound connection, the ``info_seq`` of the NodeInfo we answered with."""
        node_id = stream.extra(PeerAttribute.node_id)
        remote_host = stream.extra(PeerAttribute.remote_host, "")
        local = self._node.local_info()
        local_seq = self._node.info_seq  # what ``local`` is (admission may open a channel)
        buffer = bytearray()
        if outbound:  # our hello went out with the handshake (Node.dial)
            remote = decode_hello_reply(await receive_hello(stream, buffer))
            problem = check_compatible(local, remote) or self._admit(node_id, remote_host, True)
            if problem is not None:
                await self._refuse(stream, remote, problem[0], problem[1])
                raise IncompatiblePeerError(problem[0].label, problem[1])
        else:
            remote = decode_node_info(await receive_hello(stream, buffer))
            if self._transient is not None and is_transient_hello(remote):
                # DHT-only: the transient budget admits it, never the peer manager.
                problem = check_compatible(local, remote) or (
                    (DisconnectReason.SELF, "connected to ourselves")
                    if node_id == self._node.node_id
                    else self._transient.admit(remote_host)
                )
            else:
                problem = check_compatible(local, remote) or self._admit(
                    node_id, remote_host, False)
            if problem is not None:
                with anyio.move_on_after(self._close_timeout), _peer_gone_ok():
                    await send_hello(stream, encode_hello_reply(problem))
                raise IncompatiblePeerError(problem[0].label, problem[1])
            await send_hello(stream, encode_hello_reply(local))
        return remote, bytes(buffer), None if outbound else local_seq

    def _retire(self, conn: PeerConnection) -> None:
        self.retired = self.retired.plus(conn.core.statistics())

    async def run_connection(
        self,
        stream: SecureStream,
        outbound: bool,
        hello_limit: float | None = None,
        hello_seq: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        node_id = stream.extra(PeerAttribute.node_id)
        timeout = self._node.config.connection.handshake_timeout
        if hello_limit is not None:
            timeout = max(0.0, min(timeout, hello_limit))
        try:
            with anyio.fail_after(timeout):
                remote, leftover, sent_seq = await self._hello(stream, outbound)
            if sent_seq is not None:
                hello_seq = sent_seq
        except TimeoutError:
            await _close_quietly(stream)
            raise HandshakeTimeout(f"hello with {node_id} took over {timeout:g} s") from None
        except (RemoteProtocolError, IncompatiblePeerError) as exc:
            await _close_quietly(stream)
            if handshake_failure_reason(exc) is not HandshakeFailureReason.CONNECTION:
                log.info("refused %s peer %s: %s", "outbound" if outbound else "inbound",
                         node_id, exc)
            raise
        except BaseException:
            await _close_quietly(stream)
            raise
        if not outbound and self._transient is not None and is_transient_hello(remote):
            await self._transient.run_inbound(stream, remote, leftover)
            return
        existing = self._node.router.get_peer(node_id)
        if existing is not None and existing.is_open and not outbound:
            # Simultaneous dial: our outbound connection registered while we answered this
            # hello. Apply _admit's rule again (keep the one the smaller id initiated), or both
            # ends may each keep a different connection and then close each other's.
            if existing.outbound and self._node.node_id < node_id:
                await self._refuse(stream, remote, DisconnectReason.DUPLICATE,
                                   "already connected")
                await _close_quietly(stream)
                raise IncompatiblePeerError("duplicate", "already connected")
        if existing is not None:
            existing.close(DisconnectReason.DUPLICATE, "replaced by a newer connection")
        now = anyio.current_time()
        core = self._core_for(remote, now)
        if leftover:
            core.receive_data(leftover, now)
        conn = PeerConnection(
            node_id=node_id,
            info=remote,
            stream=stream,
            core=core,
            outbound=outbound,
            remote_address=stream.extra(PeerAttribute.remote_address, ""),
            remote_host=stream.extra(PeerAttribute.remote_host, ""),
            delivery=self._node.router,
            observer=self._node.observer,
            timers=self._timers,
        )
        self._node.router.add_peer(conn)
        if hello_seq != self._node.info_seq:  # our NodeInfo changed since the hello went out
            seq = self._node.info_seq
            conn.send_info_update(seq, encode_info_update(seq, self._node.local_info()))
        self._node.observer.on_peer_connected(
            node_id, outbound=outbound, remote_host=conn.remote_host,
            listen_addrs=remote.listen_addrs,
        )
        log.info("connected to %s (%s, %s)", node_id, "outbound" if outbound else "inbound",
                 conn.remote_address)
        task_status.started()
        try:
            await conn.run()
        except Exception:  # task root: one broken connection must never take the node down
            log.exception("connection to %s failed unexpectedly", node_id)
            self._node.observer.on_task_failed(TaskRoot.CONNECTION)
        finally:
            self._node.router.remove_peer(conn)
            self._retire(conn)
            reason = conn.end_reason or ("shutdown" if self._closing() else "connection_closed")
            if self._node.router.get_peer(node_id) is None:
                self._node.observer.on_peer_disconnected(node_id, reason)
                log.info("disconnected from %s: %s", node_id, reason)
            else:  # replaced by a newer connection, already announced: the peer is still here
                log.info("closed an older connection to %s: %s", node_id, reason)


def _peer_gone_ok() -> contextlib.suppress:
    """Suppress the errors of writing a refusal to a peer that already hung up (mapped by
    ``send_hello``, or raw from ``stream.send``)."""
    return contextlib.suppress(HandshakeError, anyio.BrokenResourceError,
                               anyio.ClosedResourceError, OSError)


async def _close_quietly(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True):
        await stream.aclose()
