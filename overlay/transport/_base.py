"""Stream transports: listen, dial, authenticate; hand back a secure byte stream.

Theory of operation
-------------------
A transport knows nothing about messages. It only

* **listens** (:meth:`Transport.serve`): binds, reports the real listen addresses through
  ``task_status.started(...)``, then accepts forever. Every accepted raw connection passes two
  cheap checks *before* any cryptography: the ``accept_gate(remote_host)`` callback (the peer
  manager's ban and connection limits) and the table of handshakes in progress
  (:class:`overlay.transport._pending.PendingTable`: ``max_pending_handshakes`` in all, at most
  ``max_pending_handshakes_per_ip`` from one IP and ``max_pending_handshakes_per_netgroup`` from
  one netgroup; when it is full, a newcomer from an under-represented netgroup evicts the oldest
  pending handshake of the most represented one). A connection refused by either is closed at
  once and counted (``rejected_by_gate``, ``rejected_per_ip``, ``rejected_per_netgroup``,
  ``rejected_overload``); an evicted handshake is cancelled, its connection closed, and counted
  in ``evicted_handshakes``. Otherwise the Noise handshake
  (:func:`overlay.transport._secure.secure_handshake`, responder side, ``handshake_timeout``) runs
  in its own
  task inside ``serve``'s task group, and then ``await handler(secure_stream)``. The handler owns
  the stream; ``serve`` closes it if the handler returns (or raises) without closing it.
  Handshake failures are logged (debug level: they are network noise), counted by reason in
  ``handshake_failures``, reported to ``serve``'s ``on_handshake_failed`` callback (the node
  counts them with its other set-up failures) and never stop ``serve``. Cancelling ``serve``
  closes the listeners and cancels every handshake and handler it started.
* **dials** (:meth:`Transport.dial`): connect, then the handshake as initiator with
  ``expected_id = address.node_id``, the whole thing within ``timeout``.

Dial errors, by phase:

* the connection cannot be opened → :class:`~overlay.errors.DialError`, whose ``reason`` (a
  :class:`~overlay.errors.ConnectFailure`) is set where it is raised: ``REFUSED`` (refused, or a
  full memory backlog), ``UNREACHABLE`` (no route, unknown memory listener, partitioned),
  ``TIMEOUT`` (the connect phase timed out);
* the handshake did not finish in the remaining time (capped by ``handshake_timeout``) →
  :class:`~overlay.errors.HandshakeTimeout`;
* the peer proved another node id → :class:`~overlay.errors.AuthenticationError`;
* the peer spoke garbage → :class:`~overlay.errors.HandshakeError` (``reason`` ``HANDSHAKE``),
  or the connection broke during the handshake (e.g. the listener's gate rejected us) → a
  ``HandshakeError`` with ``reason`` ``CONNECTION``: backend errors are mapped once, in
  ``secure_handshake``, and nothing above reads ``__cause__``.

Handshake failure reasons (keys of ``TransportStatistics.handshake_failures``) are
:class:`~overlay.transport._failures.HandshakeFailureReason` members, mapped from the exception by
:func:`~overlay.transport._failures.handshake_failure_reason`: ``timeout``, ``authentication``,
``handshake`` (malformed / failed Noise: garbage, a short message, a low-order key),
``protocol``, ``connection`` (EOF / reset during the handshake), ``internal`` (an unexpected
exception: a bug, logged with traceback).

Invariants: ``pending_handshakes <= max_pending_handshakes`` at all times; every raw connection
accepted is either rejected (closed at once), evicted (closed, counted), fails its handshake
(closed, counted) or is handed to the handler exactly once and closed when the handler is done.

Concrete transports (:class:`overlay.transport._tcp.TcpTransport`,
:class:`overlay.testing.MemoryTransport`) implement two hooks: :meth:`Transport._listen` (bind;
return :class:`RawListener` objects) and :meth:`Transport._raw_connect` (open an unauthenticated
connection; raise :class:`~overlay.errors.DialError`). The conformance suite
(:func:`overlay.testing.check_transport_conformance`) uses ``_raw_connect`` to play a silent or
garbage-speaking peer.

Aborting. :func:`abort_stream` closes a stream without waiting for anything the peer has not
taken (a connection that must end now, whatever the peer does): a stream that publishes
:attr:`StreamAbortAttribute.abort` (the memory transport) is reset through it; a socket gets
``SO_LINGER`` 0, so closing it drops unsent data and sends a TCP reset. Either way the stream is
then closed (``aclose_forcefully``), which never blocks on the peer.
"""

from __future__ import annotations

import abc
import logging
import socket
import struct
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, assert_never

import anyio
import anyio.abc
from anyio import TypedAttributeSet, typed_attribute

from overlay.address import NodeAddress
from overlay.errors import (
    ConnectFailure,
    DialError,
    HandshakeTimeout,
    InvalidAddressError,
    LocalProtocolError,
)
from overlay.transport._config import TransportConfig
from overlay.transport._failures import Direction, HandshakeFailureReason, handshake_failure_reason
from overlay.transport._pending import PendingOutcome, PendingTable
from overlay.transport._secure import SecureIdentity, SecureStream, secure_handshake
from overlay.wire._netgroup import in_networks, ip_key, netgroup, parse_networks

__all__ = [
    "AbortHook",
    "AcceptGate",
    "FailureHook",
    "InboundHandler",
    "RawConnection",
    "RawListener",
    "StreamAbortAttribute",
    "Transport",
    "TransportConfig",
    "TransportStatistics",
    "abort_stream",
]

logger = logging.getLogger(__name__)

InboundHandler = Callable[[SecureStream], Awaitable[None]]
"""Called once per authenticated inbound connection; it owns the stream."""

AcceptGate = Callable[[str], bool]
"""``accept_gate(remote_host) -> admit?``: a cheap, synchronous, non-raising pre-handshake check."""

FailureHook = Callable[[Direction, HandshakeFailureReason], None]
"""``on_handshake_failed(direction, reason)``: told of every failed inbound handshake (sync)."""

def _admit_all(remote_host: str) -> bool:
    return True


AbortHook = Callable[[], None]
"""Resets a stream at once: unsent data is dropped and the peer sees the connection broken."""


class StreamAbortAttribute(TypedAttributeSet):
    """Typed attribute of byte streams that can be reset without the socket API (memory)."""

    abort: AbortHook = typed_attribute()
    """Reset the stream now (synchronous; then close it as usual)."""


_LINGER_RESET = struct.pack("ii", 1, 0)


async def abort_stream(stream: anyio.abc.AsyncResource) -> None:
    """Close ``stream`` without waiting for the peer to take unsent data (see the module
    docstring). Never blocks on the peer; never raises for a stream that is already broken."""
    hook: AbortHook | None = None
    sock: socket.socket | None = None
    if isinstance(stream, anyio.TypedAttributeProvider):
        hook = stream.extra(StreamAbortAttribute.abort, None)
        if hook is None:
            sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    try:
        if hook is not None:
            hook()
        elif sock is not None and sock.fileno() != -1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError as exc:  # already reset by the peer: closing is all that is left
        logger.debug("aborting a stream: %r", exc)
    await anyio.aclose_forcefully(stream)


async def half_close(stream: anyio.abc.ByteStream) -> bool:
    """``send_eof()`` on ``stream``; False (nothing raised) when the stream is already gone.

    Backend errors for a closed stream differ: asyncio raises ``OSError``, anyio its broken or
    closed errors, and uvloop ``RuntimeError("unable to perform operation on <TCPTransport
    closed=True ...>; the handler is closed")``. They are mapped here, once; any other
    ``RuntimeError`` is a bug and propagates."""
    try:
        await stream.send_eof()
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return False
    except RuntimeError as exc:
        if "closed" not in str(exc):
            raise
        return False
    return True


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """A snapshot of a transport's counters (all cumulative except the gauges noted)."""

    dials: int
    """Outbound dial attempts."""
    dial_failures: int
    """Dials that raised (any error, including cancellation)."""
    accepted: int
    """Inbound connections that completed the handshake and were handed to the handler."""
    rejected_by_gate: int
    """Inbound connections closed at once because ``accept_gate`` refused their host."""
    rejected_overload: int
    """Inbound connections closed at once because ``max_pending_handshakes`` were in progress
    and none could be evicted."""
    handshake_failures: Mapping[HandshakeFailureReason, int]
    """Inbound handshake failures by reason (see the module docstring for the keys)."""
    pending_handshakes: int = 0
    """Gauge: inbound handshakes in progress now."""
    active_inbound: int = 0
    """Gauge: inbound handlers running now."""
    handler_errors: int = 0
    """Handlers that raised an exception (logged with traceback; serve went on)."""
    rejected_per_ip: int = 0
    """Inbound connections closed at once: their IP had ``max_pending_handshakes_per_ip``
    handshakes in progress."""
    rejected_per_netgroup: int = 0
    """Inbound connections closed at once: their netgroup had
    ``max_pending_handshakes_per_netgroup`` handshakes in progress."""
    evicted_handshakes: int = 0
    """Pending inbound handshakes cut to make room for a newcomer from a less represented
    netgroup (not counted as handshake failures)."""

    @property
    def total_handshake_failures(self) -> int:
        """Sum of :attr:`handshake_failures` over all reasons."""
        return sum(self.handshake_failures.values())


@dataclass(frozen=True, slots=True)
class RawConnection:
    """An unauthenticated byte stream plus what we know of the remote end."""

    stream: anyio.abc.ByteStream
    """The raw (not yet secured) stream."""
    remote_host: str
    """The remote IP (or synthetic IP on the memory network): input to per-IP limits."""
    remote_address: str
    """Printable remote endpoint, e.g. ``"127.0.0.1:4321"`` or ``"memory:<id>"``."""


class RawListener(abc.ABC):
    """What a concrete transport's :meth:`Transport._listen` returns: one bound endpoint."""

    address: NodeAddress
    """The actual listen address (our node id, real port)."""

    @abc.abstractmethod
    async def accept(self) -> RawConnection:
        """Wait for the next raw inbound connection."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop listening (idempotent); pending accepts raise ``ClosedResourceError``."""


@dataclass(slots=True)
class _Counters:
    dials: int = 0
    dial_failures: int = 0
    accepted: int = 0
    rejected_by_gate: int = 0
    rejected_overload: int = 0
    rejected_per_ip: int = 0
    rejected_per_netgroup: int = 0
    evicted_handshakes: int = 0
    active_inbound: int = 0
    handler_errors: int = 0
    handshake_failures: dict[HandshakeFailureReason, int] = field(default_factory=dict)


class Transport(abc.ABC):
    """A stream transport: listens, dials, authenticates. See the module docstring."""

    protocol: ClassVar[str]
    """The address protocol this transport serves: ``"tcp"`` or ``"memory"``."""

    def __init__(
        self,
        identity: SecureIdentity,
        config: TransportConfig | None = None,
        *,
        accept_gate: AcceptGate | None = None,
    ) -> None:
        self.identity = identity
        self.config = config if config is not None else TransportConfig()
        """The transport's settings (one object; see :class:`TransportConfig`)."""
        self._gate: AcceptGate = accept_gate if accept_gate is not None else _admit_all
        self._exempt = parse_networks(self.config.exempt_networks)
        self._pending = PendingTable(self.config.pending_limits())
        self._pending_scopes: dict[int, anyio.CancelScope] = {}
        """The cancel scope of each pending handshake, by its ticket (to evict it)."""
        self._counters = _Counters()
        self._stats_event: anyio.Event | None = None
        self._listen_addresses: list[NodeAddress] = []
        self._serving = False

    # -- hooks for concrete transports -------------------------------------------------------

    @abc.abstractmethod
    async def _listen(self) -> list[RawListener]:
        """Bind every configured listen address (raise ``OSError``/``OverlayError`` on failure)."""

    @abc.abstractmethod
    async def _raw_connect(self, address: NodeAddress) -> RawConnection:
        """Open an unauthenticated connection to ``address``; raise :class:`DialError`."""

    # -- public API ----------------------------------------------------------------------------

    def listen_addresses(self) -> list[NodeAddress]:
        """The addresses we are listening on now (empty unless :meth:`serve` is running)."""
        return list(self._listen_addresses)

    def statistics(self) -> TransportStatistics:
        c = self._counters
        return TransportStatistics(
            dials=c.dials,
            dial_failures=c.dial_failures,
            accepted=c.accepted,
            rejected_by_gate=c.rejected_by_gate,
            rejected_overload=c.rejected_overload,
            handshake_failures=types.MappingProxyType(dict(c.handshake_failures)),
            pending_handshakes=len(self._pending),
            active_inbound=c.active_inbound,
            handler_errors=c.handler_errors,
            rejected_per_ip=c.rejected_per_ip,
            rejected_per_netgroup=c.rejected_per_netgroup,
            evicted_handshakes=c.evicted_handshakes,
        )

    async def wait_statistics(
        self, predicate: Callable[[TransportStatistics], bool]
    ) -> TransportStatistics:
        """Wait until ``predicate(self.statistics())`` holds; return that snapshot.

        Woken on every counter change, so tests can wait for a condition without sleeping.
        Wrap it in ``anyio.fail_after`` to bound the wait.
        """
        while True:
            stats = self.statistics()
            if predicate(stats):
                return stats
            if self._stats_event is None:
                self._stats_event = anyio.Event()
            await self._stats_event.wait()

    async def serve(
        self,
        handler: InboundHandler,
        *,
        on_handshake_failed: FailureHook | None = None,
        task_status: anyio.abc.TaskStatus[list[NodeAddress]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and accept forever (until cancelled). See the module docstring.

        ``on_handshake_failed(Direction.INBOUND, reason)`` is called (synchronously, it must
        not raise) for every inbound handshake that fails, after it has been counted.

        Raises :class:`LocalProtocolError` if this transport is already serving, and ``OSError``
        (TCP) / :class:`LocalProtocolError` (memory) if binding fails.
        """
        if self._serving:
            raise LocalProtocolError(f"{type(self).__name__} is already serving")
        self._serving = True
        try:
            listeners = await self._listen()
            try:
                async with anyio.create_task_group() as tg:
                    for listener in listeners:
                        tg.start_soon(
                            self._accept_loop, listener, handler, on_handshake_failed, tg
                        )
                    self._listen_addresses = [listener.address for listener in listeners]
                    task_status.started(self.listen_addresses())
            finally:
                self._listen_addresses = []
                with anyio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
        finally:
            self._serving = False

    async def dial(
        self, address: NodeAddress, *, timeout: float, first_data: bytes = b""
    ) -> SecureStream:
        """Connect to ``address`` and authenticate it, all within ``timeout`` seconds.

        ``first_data`` is sent encrypted in the same write as the handshake's last message (the
        responder gets both in one read); it is already sent when ``dial`` returns.

        Connect-phase failures and timeouts raise :class:`DialError`; handshake-phase timeouts
        :class:`HandshakeTimeout`; a wrong node id :class:`AuthenticationError`; other handshake
        failures :class:`HandshakeError`.
        """
        if address.protocol != self.protocol:
            raise InvalidAddressError(
                f"{type(self).__name__} cannot dial {address.protocol} address {address}"
            )
        if not timeout > 0:
            raise LocalProtocolError(f"dial timeout must be positive, got {timeout!r}")
        self._counters.dials += 1
        self._changed()
        ok = False
        try:
            stream = await self._dial(address, timeout, first_data)
            ok = True
            return stream
        finally:
            if not ok:
                self._counters.dial_failures += 1
                self._changed()

    # -- internals -------------------------------------------------------------------------

    async def _dial(self, address: NodeAddress, limit: float, first_data: bytes) -> SecureStream:
        deadline = anyio.current_time() + limit
        conn: RawConnection | None = None
        with anyio.move_on_after(limit):
            conn = await self._raw_connect(address)
        if conn is None:
            raise DialError(
                f"connecting to {address} timed out after {limit:g} s", ConnectFailure.TIMEOUT
            )
        remaining = min(deadline - anyio.current_time(), self.config.handshake_timeout)
        if remaining <= 0:
            await anyio.aclose_forcefully(conn.stream)
            raise HandshakeTimeout(f"no time left for the handshake with {address}")
        try:
            return await secure_handshake(
                conn.stream,
                self.identity,
                initiator=True,
                expected_id=address.node_id,
                timeout=remaining,
                remote_address=conn.remote_address,
                remote_host=conn.remote_host,
                first_data=first_data,
            )
        except BaseException:  # secure_handshake mapped backend errors (the one boundary)
            await anyio.aclose_forcefully(conn.stream)
            raise

    def _changed(self) -> None:
        event = self._stats_event
        if event is not None:
            self._stats_event = None
            event.set()

    async def _accept_loop(
        self,
        listener: RawListener,
        handler: InboundHandler,
        on_failed: FailureHook | None,
        tg: anyio.abc.TaskGroup,
    ) -> None:
        counters = self._counters
        while True:
            try:
                conn = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                logger.warning("accept on %s failed: %s", listener.address, exc)
                await anyio.sleep(0.1)
                continue
            if not self._gate(conn.remote_host):
                counters.rejected_by_gate += 1
                self._changed()
                logger.debug("gate rejected inbound connection from %s", conn.remote_address)
                await anyio.aclose_forcefully(conn.stream)
                continue
            host = conn.remote_host
            decision = self._pending.admit(
                ip_key(host), netgroup(host), anyio.current_time(),
                exempt=in_networks(host, self._exempt),
            )
            match decision.outcome:
                case PendingOutcome.ADMITTED:
                    pass
                case PendingOutcome.REFUSED_PER_IP:
                    counters.rejected_per_ip += 1
                case PendingOutcome.REFUSED_PER_NETGROUP:
                    counters.rejected_per_netgroup += 1
                case PendingOutcome.REFUSED_FULL:
                    counters.rejected_overload += 1
                case _ as unreachable:
                    assert_never(unreachable)
            if decision.ticket is None:
                self._changed()
                logger.debug(
                    "pending handshakes: refused connection from %s (%s; %d in progress)",
                    conn.remote_address, decision.outcome.value, len(self._pending),
                )
                await anyio.aclose_forcefully(conn.stream)
                continue
            if decision.evicted is not None:
                counters.evicted_handshakes += 1
                victim = self._pending_scopes.pop(decision.evicted, None)
                if victim is not None:
                    victim.cancel()
                logger.debug(
                    "pending handshakes full: evicted one to admit %s", conn.remote_address
                )
            scope = self._pending_scopes[decision.ticket] = anyio.CancelScope()
            self._changed()
            tg.start_soon(self._handle_inbound, conn, handler, on_failed, decision.ticket, scope)

    async def _handle_inbound(
        self,
        conn: RawConnection,
        handler: InboundHandler,
        on_failed: FailureHook | None,
        ticket: int,
        scope: anyio.CancelScope,
    ) -> None:
        counters = self._counters
        reason: HandshakeFailureReason | None = None
        secure: SecureStream | None = None
        try:
            with scope:  # cancelled when this handshake is evicted
                secure = await secure_handshake(
                    conn.stream,
                    self.identity,
                    initiator=False,
                    timeout=self.config.handshake_timeout,
                    remote_address=conn.remote_address,
                    remote_host=conn.remote_host,
                )
        except Exception as exc:  # task root: a failed handshake must never stop serve
            reason = handshake_failure_reason(exc)
            if reason is HandshakeFailureReason.INTERNAL:
                logger.exception("unexpected error in handshake with %s", conn.remote_address)
        finally:
            self._pending.release(ticket)
            self._pending_scopes.pop(ticket, None)
            if reason is not None:
                counters.handshake_failures[reason] = counters.handshake_failures.get(reason, 0) + 1
            self._changed()
            if secure is None:
                await anyio.aclose_forcefully(conn.stream)
        if secure is None:
            if reason is None:
                logger.debug("pending handshake from %s evicted", conn.remote_address)
                return
            logger.debug("inbound handshake from %s failed: %s", conn.remote_address, reason)
            if on_failed is not None:
                on_failed(Direction.INBOUND, reason)
            return
        counters.accepted += 1
        counters.active_inbound += 1
        self._changed()
        try:
            await handler(secure)
        except Exception:  # task root: log + count, keep serving
            counters.handler_errors += 1
            logger.exception("inbound handler for %s raised", conn.remote_address)
        finally:
            counters.active_inbound -= 1
            self._changed()
            await anyio.aclose_forcefully(secure)
