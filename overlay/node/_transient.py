"""Transient connections: authenticated connections that carry the DHT channel and nothing else.

Theory of operation
-------------------
A DHT lookup asks nodes this node is not peered with. A peer connection per query would take
peer slots, evict peers and make the queried nodes PEX material; the DHT uses *transient*
connections instead:

* **Marked in the hello.** The initiator's NodeInfo lists the DHT channel only
  (``channels == (DHT_CHANNEL_ID,)``; a full node always lists the built-in ping channel too);
  :func:`is_transient_hello` is the responder's test. The Noise handshake authenticates both
  ends exactly as for a peer connection.
* **Never peers.** They live in this pool, never in the router: destinations never select them
  (no application traffic), ``connected_peers()`` and ``peer_summaries()`` never list them, the
  peer manager never hears of their connection or disconnection (no slot taken, nobody evicted,
  nothing gossiped by PEX). Facts the connection itself reports (a protocol violation, a
  latency sample) still reach the node's observer by node id.
* **DHT only.** Requests on other channels get ``NO_HANDLER``; fire-and-forget messages are
  dropped; DHT requests go to ``serve`` (the node's DHT server, rate-limited per peer there).
* **Bounded.** Outbound: at most ``max_transient_connections`` open at once; a caller finding
  the pool full closes the least recently used idle connection, or waits for one to free up
  (within its own deadline). Inbound: at most ``max_transient_connections`` at once and
  ``max_transient_per_ip`` per remote host; beyond that the hello is refused
  (``too_many_peers``).
* **Reused, then closed.** One connection per remote node and direction is reused while open;
  a connection that carried no request for ``transient_idle`` seconds is closed by the reaper
  (``run``), on either side.

Clock: anyio's monotonic clock (``anyio.current_time()``), as for every connection timer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from overlay.address import NodeAddress
from overlay.connection._core import ChannelParams, ConnectionCore
from overlay.connection._driver import PeerConnection, RequestExpired
from overlay.connection._observer import Observer, TaskRoot
from overlay.connection._timers import TimerService
from overlay.errors import (
    DialError,
    ErrorCode,
    IncompatiblePeerError,
    NetworkError,
    NodeClosed,
    OverlayError,
    RequestError,
    RequestTimeout,
)
from overlay.identity import NodeId
from overlay.node._config import ConnectionConfig, DhtSettings
from overlay.node._discovery import DHT_CHANNEL_ID
from overlay.router._channel import ChannelSpec
from overlay.transport._hello import receive_hello
from overlay.transport._secure import PeerAttribute, SecureStream
from overlay.wire._nodeinfo import (
    DisconnectReason,
    NodeInfo,
    check_compatible,
    decode_hello_reply,
    encode_node_info,
    hello_frame,
)

__all__ = [
    "Serve",
    "TransientConnections",
    "TransientStatistics",
    "is_transient_hello",
    "transient_info",
]

log = logging.getLogger("overlay.transient")

Serve = Callable[[PeerConnection, bytes], Awaitable[bytes]]
"""Answers one DHT request payload from a transient connection's peer (raise ``RequestError``
to answer with an error)."""

Dial = Callable[[NodeAddress, bytes, float], Awaitable[SecureStream]]
"""Connect to an address and authenticate it: ``(address, first_data, timeout)``."""


def is_transient_hello(info: NodeInfo) -> bool:
    """Whether a hello asks for a transient connection (it lists the DHT channel only)."""
    return info.channels == (DHT_CHANNEL_ID,)


def transient_info(local: NodeInfo) -> NodeInfo:
    """The hello of a transient connection: the node's NodeInfo with the DHT channel only."""
    return dataclasses.replace(local, channels=(DHT_CHANNEL_ID,))


@dataclass(frozen=True, slots=True)
class TransientStatistics:
    """A snapshot of the pool (``TransientConnections.statistics()``)."""

    outbound: int
    """Open transient connections this node initiated."""
    inbound: int
    """Open transient connections other nodes initiated."""
    opened: int
    """Outbound transient connections opened so far."""
    accepted: int
    """Inbound transient connections accepted so far."""
    refused: int
    """Inbound transient hellos refused (over the total or per-IP budget)."""
    idle_closed: int
    """Connections closed after ``transient_idle`` seconds without a request."""
    reused: int
    """Requests that went over an already open transient connection."""


class _Entry:
    __slots__ = ("conn", "in_flight", "last_used")

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn
        self.last_used = anyio.current_time()
        self.in_flight = 0

    def idle_since(self) -> float:
        return math.inf if self.in_flight else self.last_used


class TransientConnections:
    """The node's transient connections (see the module docstring). Also the connections'
    ``Delivery``: it serves the DHT channel on them and nothing else."""

    def __init__(
        self,
        settings: DhtSettings,
        *,
        spec: ChannelSpec[Any, Any],
        connection: ConnectionConfig,
        timers: TimerService,
        observer: Observer,
        dial: Dial,
        local_info: Callable[[], NodeInfo],
    ) -> None:
        self.settings = settings
        self.serve: Serve | None = None
        """The DHT server (set by the node's DHT); without one, requests get NO_HANDLER."""
        self._spec = spec
        self._conn_config = connection
        self._timers = timers
        self._observer = observer
        self._dial = dial
        self._local_info = local_info
        self._out: dict[NodeId, _Entry] = {}
        self._in: dict[NodeId, _Entry] = {}
        self._dialing: dict[NodeId, anyio.Event] = {}
        self._freed = anyio.Event()
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._opened = self._accepted = self._refused = self._idle_closed = self._reused = 0

    # ----------------------------------------------------------------------------- state

    def statistics(self) -> TransientStatistics:
        return TransientStatistics(
            outbound=len(self._out), inbound=len(self._in), opened=self._opened,
            accepted=self._accepted, refused=self._refused, idle_closed=self._idle_closed,
            reused=self._reused,
        )

    def connections(self) -> list[PeerConnection]:
        """Open transient connections, both directions."""
        return [e.conn for e in (*self._out.values(), *self._in.values())]

    def get(self, peer: NodeId) -> PeerConnection | None:
        """An open transient connection to ``peer`` (ours first), if any."""
        for table in (self._out, self._in):
            entry = table.get(peer)
            if entry is not None and entry.conn.is_open:
                return entry.conn
        return None

    # --------------------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the outbound connections' tasks and close idle connections, until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                while True:
                    self._reap(anyio.current_time())
                    entries = [*self._out.values(), *self._in.values()]
                    oldest = min((e.idle_since() for e in entries if e.conn.is_open),
                                 default=math.inf)
                    self._wake = anyio.Event()
                    with anyio.move_on_at(oldest + self.settings.transient_idle):
                        await self._wake.wait()
        finally:
            self._tg = None
            self.close_all()

    def _reap(self, now: float) -> None:
        idle = self.settings.transient_idle
        for entry in [*self._out.values(), *self._in.values()]:
            # the same sum as the wake-up deadline in ``run`` (no rounding gap between them)
            if entry.idle_since() + idle <= now and entry.conn.is_open:
                self._idle_closed += 1
                entry.conn.close(DisconnectReason.OPERATOR, "transient connection idle")

    def close_all(self) -> None:
        """Close every transient connection (the node is stopping)."""
        self._closed = True
        for entry in [*self._out.values(), *self._in.values()]:
            entry.conn.close(DisconnectReason.SHUTDOWN, "node shutting down",
                             error=NodeClosed("the node is shutting down"))
        self._freed.set()

    # -------------------------------------------------------------------------- outbound

    async def request(
        self, peer: NodeId, addresses: Sequence[NodeAddress], payload: bytes, *, timeout: float
    ) -> bytes:
        """Send one DHT request to ``peer`` over a transient connection (reused, or dialed at
        one of ``addresses``) and return the response payload. Raises ``RequestTimeout``,
        ``RequestError``, or a ``NetworkError`` when ``peer`` cannot be reached."""
        deadline = anyio.current_time() + timeout
        entry = await self._connection_to(peer, addresses, deadline)
        entry.in_flight += 1
        try:
            return await entry.conn.request(DHT_CHANNEL_ID, payload, deadline=deadline)
        except RequestExpired:
            raise RequestTimeout(f"no DHT answer from {peer} within {timeout:g} s") from None
        finally:
            entry.in_flight -= 1
            entry.last_used = anyio.current_time()
            self._wake.set()

    async def _connection_to(
        self, peer: NodeId, addresses: Sequence[NodeAddress], deadline: float
    ) -> _Entry:
        with anyio.fail_at(deadline):
            while True:
                if self._closed:
                    raise NodeClosed("the node is not running")
                entry = self._out.get(peer)
                if entry is not None and entry.conn.is_open:
                    self._reused += 1
                    return entry
                pending = self._dialing.get(peer)
                if pending is not None:  # another query is dialing it: wait for its outcome
                    await pending.wait()
                    if peer not in self._out:
                        raise DialError(f"could not open a transient connection to {peer}")
                    continue
                if self._room():
                    break
                freed = self._freed
                await freed.wait()
        done = self._dialing[peer] = anyio.Event()
        try:
            return await self._open(peer, addresses, deadline)
        finally:
            del self._dialing[peer]
            done.set()

    def _room(self) -> bool:
        """Whether one more outbound connection fits (closing the LRU idle one if need be)."""
        live = len(self._out) + len(self._dialing)
        if live < self.settings.max_transient_connections:
            return True
        idle = [e for e in self._out.values() if not e.in_flight]
        if not idle:
            return False
        victim = min(idle, key=lambda e: e.last_used)
        del self._out[victim.conn.node_id]  # its slot is free now; it closes on its own
        victim.conn.close(DisconnectReason.OPERATOR, "transient connection recycled")
        return True

    async def _open(
        self, peer: NodeId, addresses: Sequence[NodeAddress], deadline: float
    ) -> _Entry:
        if self._tg is None:
            raise NodeClosed("the node's DHT is not running")
        if not addresses:
            raise DialError(f"no address to reach {peer}")
        errors: list[str] = []
        for address in addresses:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            try:
                stream = await self._dial(address, hello_frame(encode_node_info(
                    transient_info(self._local_info()))), remaining)
            except OverlayError as exc:
                errors.append(f"{address}: {exc}")
                continue
            try:
                conn = await self._hello(stream, deadline)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                raise
            entry = _Entry(conn)
            self._out[peer] = entry
            self._opened += 1
            await self._tg.start(self._run_outbound, entry)
            return entry
        raise DialError(f"cannot reach {peer} for the DHT: {'; '.join(errors) or 'no time'}")

    async def _hello(self, stream: SecureStream, deadline: float) -> PeerConnection:
        buffer = bytearray()
        with anyio.fail_at(deadline):
            remote = decode_hello_reply(await receive_hello(stream, buffer))
        problem = check_compatible(transient_info(self._local_info()), remote)
        if problem is not None:
            raise IncompatiblePeerError(problem[0].label, problem[1])
        return self._connection(stream, remote, bytes(buffer), outbound=True)

    async def _run_outbound(
        self, entry: _Entry, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        conn = entry.conn
        try:
            await conn.run(task_status=task_status)
        except Exception:  # task root: one broken connection must never take the node down
            log.exception("transient connection to %s failed unexpectedly", conn.node_id)
            self._observer.on_task_failed(TaskRoot.TRANSIENT_CONNECTION)
        finally:
            if self._out.get(conn.node_id) is entry:
                del self._out[conn.node_id]
            self._freed.set()
            self._freed = anyio.Event()

    # --------------------------------------------------------------------------- inbound

    def admit(self, remote_host: str) -> tuple[DisconnectReason, str] | None:
        """Whether one more inbound transient connection from ``remote_host`` fits."""
        if self._closed:
            return (DisconnectReason.SHUTDOWN, "node shutting down")
        settings = self.settings
        same_ip = sum(1 for e in self._in.values() if e.conn.remote_host == remote_host)
        if len(self._in) >= settings.max_transient_connections:
            self._refused += 1
            return (DisconnectReason.TOO_MANY_PEERS, "too many transient connections")
        if same_ip >= settings.max_transient_per_ip:
            self._refused += 1
            return (DisconnectReason.TOO_MANY_PEERS, "too many transient connections from "
                                                     "this address")
        return None

    async def run_inbound(self, stream: SecureStream, remote: NodeInfo, leftover: bytes) -> None:
        """Run an inbound transient connection (its hello was accepted) until it closes."""
        conn = self._connection(stream, remote, leftover, outbound=False)
        previous = self._in.get(conn.node_id)
        if previous is not None:
            previous.conn.close(DisconnectReason.DUPLICATE, "replaced by a newer connection")
        entry = self._in[conn.node_id] = _Entry(conn)
        self._accepted += 1
        self._wake.set()
        try:
            await conn.run()
        except Exception:  # task root: one broken connection must never take the node down
            log.exception("transient connection from %s failed unexpectedly", conn.node_id)
            self._observer.on_task_failed(TaskRoot.TRANSIENT_CONNECTION)
        finally:
            if self._in.get(conn.node_id) is entry:
                del self._in[conn.node_id]

    # ----------------------------------------------------------------------- connections

    def _connection(
        self, stream: SecureStream, remote: NodeInfo, leftover: bytes, *, outbound: bool
    ) -> PeerConnection:
        spec = self._spec
        params = [ChannelParams(
            channel_id=spec.id, priority=spec.priority, send_queue_size=spec.send_queue_size,
            max_message_size=spec.max_message_size,
            max_concurrent_inbound=spec.max_concurrent_requests,
        )]
        conf = self._conn_config
        now = anyio.current_time()
        core = ConnectionCore(conf.core_config(), params, now=now,
                              compression=conf.compression and "zstd" in remote.compression)
        if leftover:
            core.receive_data(leftover, now)
        return PeerConnection(
            node_id=stream.extra(PeerAttribute.node_id),
            info=remote,
            stream=stream,
            core=core,
            outbound=outbound,
            remote_address=stream.extra(PeerAttribute.remote_address, ""),
            remote_host=stream.extra(PeerAttribute.remote_host, ""),
            delivery=self,
            observer=self._observer,
            timers=self._timers,
        )

    def _entry(self, conn: PeerConnection) -> _Entry | None:
        table = self._out if conn.outbound else self._in
        entry = table.get(conn.node_id)
        return entry if entry is not None and entry.conn is conn else None

    # -- Delivery ------------------------------------------------------------------------

    def on_peer_info(self, conn: PeerConnection) -> None:
        """A transient peer's new NodeInfo (its record) needs nothing here: the DHT reads
        ``conn.info`` when it serves a request."""

    async def on_message(self, conn: PeerConnection, channel_id: int, payload: bytes) -> None:
        self.on_message_nowait(conn, channel_id, payload)

    def on_message_nowait(self, conn: PeerConnection, channel_id: int, payload: bytes) -> bool:
        log.debug("dropped a message on channel %d from transient peer %s",
                  channel_id, conn.node_id)
        return True

    def on_request(
        self, conn: PeerConnection, channel_id: int, request_id: int, payload: bytes
    ) -> None:
        if channel_id != DHT_CHANNEL_ID or self.serve is None:
            conn.submit(conn.respond_error, channel_id, request_id, ErrorCode.NO_HANDLER,
                        "a transient connection carries DHT requests only")
            return
        conn.submit(self._serve_one, conn, request_id, payload)

    async def _serve_one(self, conn: PeerConnection, request_id: int, payload: bytes) -> None:
        serve = self.serve
        assert serve is not None
        if not conn.is_inbound_active(DHT_CHANNEL_ID, request_id):
            return
        entry = self._entry(conn)
        if entry is not None:
            entry.in_flight += 1
        try:
            try:
                data = await serve(conn, payload)
            except RequestError as exc:
                await conn.respond_error(DHT_CHANNEL_ID, request_id, exc.code, exc.message)
                return
            if len(data) > self._spec.max_message_size:
                await conn.respond_error(DHT_CHANNEL_ID, request_id, ErrorCode.TOO_LARGE,
                                         "response too large")
                return
            await conn.respond(DHT_CHANNEL_ID, request_id, data)
        except NetworkError:
            return  # the connection went away while we answered
        finally:
            if entry is not None:
                entry.in_flight -= 1
                entry.last_used = anyio.current_time()
                self._wake.set()
