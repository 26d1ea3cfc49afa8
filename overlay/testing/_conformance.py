"""The transport conformance suite: one set of checks every :class:`Transport` must pass.

Theory of operation
-------------------
:func:`check_transport_conformance` builds fresh transports with the caller's factory (one per
check, each with a new identity), serves them inside a task group, and drives them through the
public API (``serve``/``dial``/``statistics``) plus the ``_raw_connect`` hook, which plays a
peer that never speaks or speaks garbage. Nothing sleeps to wait for a condition: listener-side
effects are awaited with :meth:`Transport.wait_statistics` or by reading until the listener
closes the raw connection. Each step is bounded by ``step_timeout``; a failing check raises
:class:`ConformanceError` (or the transport's own error), with a note naming the check (the
error may arrive wrapped in an ``ExceptionGroup`` by a task group). The checks, by name (see
:data:`CHECKS`):

``identities``        both ends see the other's node id, public key, initiator flag, remote host
``listen_addresses``  serve reports addresses with our node id; empty once serve stops
``data_integrity``    small messages, 500 pipelined messages, 1 MiB both ways (echo)
``server_push``       the listener sends 1 MiB unprompted, then closes: the dialer sees it all + EOF
``eof_propagation``   close / send_eof on one end → EndOfStream at the other, both directions
``handler_lifecycle`` a handler that raises is counted; one that returns has its stream closed
``wrong_id``          dialing with another expected id → AuthenticationError; listener still serves
``dial_nothing``      dialing a listener that stopped → DialError; counters updated
``handshake_timeout`` a silent raw peer is dropped after the handshake timeout and counted
``garbage``           garbage at the listener → counted (not as timeout/internal); still serves
``concurrent_dials``  8 concurrent dials from one host (its pending-handshake allowance) succeed
``gate``              a refusing gate closes the connection before the handshake and counts it
``overload``          over ``max_pending_handshakes`` a connection is closed at once and counted
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import anyio
import anyio.abc

from overlay.address import NodeAddress
from overlay.errors import AuthenticationError, DialError, HandshakeError
from overlay.identity import NodeId, NodeKey
from overlay.transport import (
    AcceptGate,
    InboundHandler,
    Transport,
    TransportConfig,
    TransportStatistics,
)
from overlay.transport._failures import HandshakeFailureReason
from overlay.transport._secure import PeerAttribute, SecureIdentity, SecureStream

__all__ = ["CHECKS", "ConformanceError", "TransportFactory", "check_transport_conformance"]

_MIB = 1024 * 1024


class TransportFactory(Protocol):
    """Builds the transport under test (listening on a loopback / fresh address)."""

    def __call__(
        self,
        identity: SecureIdentity,
        config: TransportConfig,
        *,
        accept_gate: AcceptGate | None,
    ) -> Transport: ...


class ConformanceError(AssertionError):
    """A transport failed a conformance check."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


@dataclass(frozen=True, slots=True)
class _Suite:
    make: TransportFactory
    misdirect: Callable[[NodeAddress, NodeId], NodeAddress]
    handshake_timeout: float
    step_timeout: float

    def transport(
        self, config: TransportConfig | None = None, *, accept_gate: AcceptGate | None = None
    ) -> Transport:
        """A new transport; ``config`` defaults to the suite's (short) ``handshake_timeout``."""
        if config is None:
            config = TransportConfig(handshake_timeout=self.handshake_timeout)
        return self.make(SecureIdentity(NodeKey.generate()), config, accept_gate=accept_gate)

    @asynccontextmanager
    async def serving(
        self, handler: InboundHandler, transport: Transport | None = None
    ) -> AsyncIterator[tuple[Transport, NodeAddress]]:
        transport = transport if transport is not None else self.transport()
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(self.step_timeout):
                addresses = await tg.start(transport.serve, handler)
            _check(bool(addresses), "serve() reported no listen address")
            yield transport, addresses[0]
            tg.cancel_scope.cancel()

    async def wait_stats(
        self, transport: Transport, what: str, predicate: Callable[[TransportStatistics], bool]
    ) -> None:
        try:
            with anyio.fail_after(self.step_timeout):
                await transport.wait_statistics(predicate)
        except TimeoutError:
            raise ConformanceError(f"{what}; statistics: {transport.statistics()}") from None


async def _echo(stream: SecureStream) -> None:
    async with stream:
        try:
            async for chunk in stream:
                await stream.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


async def _idle(stream: SecureStream) -> None:
    await anyio.sleep_forever()


async def _read_exactly(stream: anyio.abc.ByteReceiveStream, size: int) -> bytes:
    parts = bytearray()
    while len(parts) < size:
        parts += await stream.receive(min(65536, size - len(parts)))
    return bytes(parts)


async def _read_to_eof(stream: anyio.abc.ByteReceiveStream) -> bytes:
    parts = bytearray()
    try:
        while True:
            parts += await stream.receive()
    except anyio.EndOfStream:
        return bytes(parts)


async def _expect_closed_by_peer(stream: anyio.abc.ByteStream) -> None:
    """Read (discarding) until the peer closes: EndOfStream or a reset both count."""
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass


async def _round_trip(stream: SecureStream, payload: bytes) -> None:
    await stream.send(payload)
    echoed = await _read_exactly(stream, len(payload))
    _check(echoed == payload, f"echo mismatch for a {len(payload)}-byte message")


# -- the checks ---------------------------------------------------------------------------------


async def _identities(suite: _Suite) -> None:
    seen: list[SecureStream] = []
    arrived = anyio.Event()

    async def handler(stream: SecureStream) -> None:
        seen.append(stream)
        arrived.set()
        await _echo(stream)

    async with suite.serving(handler) as (listener, address):
        dialer = suite.transport()
        with anyio.fail_after(suite.step_timeout):
            stream = await dialer.dial(address, timeout=suite.step_timeout)
            await arrived.wait()
        async with stream:
            inbound = seen[0]
            _check(
                stream.extra(PeerAttribute.node_id) == listener.identity.node_id,
                "dialer's stream does not carry the listener's node id",
            )
            _check(
                inbound.extra(PeerAttribute.node_id) == dialer.identity.node_id,
                "listener's stream does not carry the dialer's node id",
            )
            _check(
                stream.extra(PeerAttribute.public_key) == listener.identity.public_key,
                "dialer's stream has the wrong public key",
            )
            _check(stream.extra(PeerAttribute.initiator) is True, "dialer must be initiator")
            _check(inbound.extra(PeerAttribute.initiator) is False, "listener must be responder")
            for side, s in (("dialer", stream), ("listener", inbound)):
                host = s.extra(PeerAttribute.remote_host)
                _check(isinstance(host, str) and bool(host), f"{side}: remote_host not set")
                _check(bool(s.extra(PeerAttribute.remote_address)), f"{side}: no remote_address")
            with anyio.fail_after(suite.step_timeout):
                await _round_trip(stream, b"hello")
        await suite.wait_stats(listener, "accepted not counted", lambda s: s.accepted == 1)
        stats = dialer.statistics()
        _check(stats.dials == 1 and stats.dial_failures == 0, f"dial counters: {stats}")


async def _listen_addresses(suite: _Suite) -> None:
    transport = suite.transport()
    _check(transport.listen_addresses() == [], "listen_addresses() before serve must be empty")
    async with suite.serving(_echo, transport) as (_, address):
        _check(address.node_id == transport.identity.node_id, "listen address has another id")
        _check(address.protocol == transport.protocol, "listen address has another protocol")
        _check(address in transport.listen_addresses(), "listen_addresses() misses the address")
    _check(transport.listen_addresses() == [], "listen_addresses() after serve must be empty")


async def _data_integrity(suite: _Suite) -> None:
    rng = random.Random(1)
    async with suite.serving(_echo) as (_, address):
        with anyio.fail_after(suite.step_timeout):
            stream = await suite.transport().dial(address, timeout=suite.step_timeout)
            async with stream:
                for payload in (b"x", b"hello world", bytes(range(256)) * 3):
                    await _round_trip(stream, payload)
                messages = [rng.randbytes(rng.randrange(1, 2000)) for _ in range(500)]
                expected = b"".join(messages)

                async def send_all() -> None:
                    for message in messages:
                        await stream.send(message)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send_all)
                    echoed = await _read_exactly(stream, len(expected))
                _check(echoed == expected, "pipelined messages came back corrupted")
                big = rng.randbytes(_MIB)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stream.send, big)
                    echoed = await _read_exactly(stream, len(big))
                _check(echoed == big, "1 MiB payload came back corrupted")


async def _server_push(suite: _Suite) -> None:
    payload = random.Random(2).randbytes(_MIB)

    async def push(stream: SecureStream) -> None:
        async with stream:
            await stream.send(payload)

    async with suite.serving(push) as (_, address):
        with anyio.fail_after(suite.step_timeout):
            stream = await suite.transport().dial(address, timeout=suite.step_timeout)
            async with stream:
                received = await _read_to_eof(stream)
        _check(received == payload, f"server push: got {len(received)} bytes, corrupted or short")


async def _eof_propagation(suite: _Suite) -> None:
    results: list[bytes] = []
    done = anyio.Event()

    async def reply_after_eof(stream: SecureStream) -> None:
        async with stream:
            results.append(await _read_to_eof(stream))
            try:
                await stream.send(b"bye")
            except (anyio.BrokenResourceError, OSError):
                pass  # the dialer closed completely: nobody to answer
        done.set()

    async with suite.serving(reply_after_eof) as (_, address):
        with anyio.fail_after(suite.step_timeout):
            # half-close: the listener sees EOF, and can still answer
            stream = await suite.transport().dial(address, timeout=suite.step_timeout)
            async with stream:
                await stream.send(b"last words")
                await stream.send_eof()
                reply = await _read_to_eof(stream)
            await done.wait()
        _check(results == [b"last words"], f"listener read {results!r} before EOF")
        _check(reply == b"bye", f"dialer read {reply!r} before EOF")

        results.clear()
        done = anyio.Event()
        with anyio.fail_after(suite.step_timeout):
            # full close by the dialer: the listener's receive ends with EndOfStream
            stream = await suite.transport().dial(address, timeout=suite.step_timeout)
            await stream.send(b"abc")
            await stream.aclose()
            await done.wait()
        _check(results == [b"abc"], f"listener read {results!r} after the dialer closed")


async def _handler_lifecycle(suite: _Suite) -> None:
    calls: list[int] = []

    async def careless(stream: SecureStream) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("deliberate handler failure (conformance check)")
        await stream.send(b"unclosed")  # returns without closing: serve must close it

    async with suite.serving(careless) as (listener, address):
        dialer = suite.transport()
        with anyio.fail_after(suite.step_timeout):
            async with await dialer.dial(address, timeout=suite.step_timeout) as stream:
                first = await _read_to_eof(stream)
            async with await dialer.dial(address, timeout=suite.step_timeout) as stream:
                second = await _read_to_eof(stream)
        _check(first == b"", f"a failing handler's stream must just close, read {first!r}")
        _check(second == b"unclosed", f"expected the handler's bytes then EOF, read {second!r}")
        await suite.wait_stats(
            listener,
            "handler error / closing not accounted",
            lambda s: s.handler_errors == 1 and s.accepted == 2 and s.active_inbound == 0,
        )


async def _wrong_id(suite: _Suite) -> None:
    async with suite.serving(_echo) as (listener, address):
        wrong = NodeKey.generate().node_id
        dialer = suite.transport()
        try:
            with anyio.fail_after(suite.step_timeout):
                stream = await dialer.dial(
                    suite.misdirect(address, wrong), timeout=suite.step_timeout
                )
        except AuthenticationError:
            pass
        else:
            await stream.aclose()
            raise ConformanceError("dialing with a wrong expected id did not fail")
        stats = dialer.statistics()
        _check(stats.dials == 1 and stats.dial_failures == 1, f"dialer counters: {stats}")
        await suite.wait_stats(
            listener,
            "the listener did not count the failed handshake",
            lambda s: s.total_handshake_failures == 1,
        )
        with anyio.fail_after(suite.step_timeout):
            async with await dialer.dial(address, timeout=suite.step_timeout) as stream:
                await _round_trip(stream, b"still serving")


async def _dial_nothing(suite: _Suite) -> None:
    async with suite.serving(_echo) as (_, address):
        pass
    dialer = suite.transport()
    try:
        with anyio.fail_after(suite.step_timeout):
            stream = await dialer.dial(address, timeout=suite.step_timeout)
    except DialError:
        pass
    else:
        await stream.aclose()
        raise ConformanceError("dialing a stopped listener did not raise DialError")
    stats = dialer.statistics()
    _check(stats.dials == 1 and stats.dial_failures == 1, f"dialer counters: {stats}")


async def _handshake_timeout(suite: _Suite) -> None:
    async with suite.serving(_echo) as (listener, address):
        dialer = suite.transport()
        with anyio.fail_after(suite.step_timeout):
            raw = await dialer._raw_connect(address)
            async with raw.stream:
                await _expect_closed_by_peer(raw.stream)
        await suite.wait_stats(
            listener,
            "a silent peer was not counted as a handshake timeout",
            lambda s: s.handshake_failures.get(HandshakeFailureReason.TIMEOUT, 0) == 1
            and s.pending_handshakes == 0,
        )
        with anyio.fail_after(suite.step_timeout):
            async with await dialer.dial(address, timeout=suite.step_timeout) as stream:
                await _round_trip(stream, b"after timeout")


_GARBAGE = (
    b"\x00\x03abc",  # a first handshake message of the wrong length
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # length prefix 0x4745, then EOF
    b"\x00\x20" + bytes(range(32)) + b"\x00\x40" + b"\xff" * 64,  # valid msg 1, junk msg 3
    b"\x00\x00",  # an empty frame
)


def _failures_at_least(count: int) -> Callable[[TransportStatistics], bool]:
    return lambda stats: stats.total_handshake_failures >= count


async def _garbage(suite: _Suite) -> None:
    async with suite.serving(_echo) as (listener, address):
        dialer = suite.transport()
        for index, garbage in enumerate(_GARBAGE, 1):
            with anyio.fail_after(suite.step_timeout):
                raw = await dialer._raw_connect(address)
                async with raw.stream:
                    try:
                        await raw.stream.send(garbage)
                        await raw.stream.send_eof()
                    except (anyio.BrokenResourceError, OSError):
                        pass
                    await _expect_closed_by_peer(raw.stream)
            await suite.wait_stats(
                listener,
                f"garbage #{index} was not counted as a handshake failure",
                _failures_at_least(index),
            )
        failures = listener.statistics().handshake_failures
        _check(
            not failures.get(HandshakeFailureReason.TIMEOUT)
            and not failures.get(HandshakeFailureReason.INTERNAL),
            f"garbage must fail fast and cleanly, got {dict(failures)}",
        )
        with anyio.fail_after(suite.step_timeout):
            async with await dialer.dial(address, timeout=suite.step_timeout) as stream:
                await _round_trip(stream, b"after garbage")


# As many concurrent dials from one host as one host may have pending handshakes.
_CONCURRENT_DIALS = TransportConfig().max_pending_handshakes_per_ip


async def _concurrent_dials(suite: _Suite, count: int = _CONCURRENT_DIALS) -> None:
    async with suite.serving(_echo) as (listener, address):
        dialer = suite.transport()
        finished: list[int] = []

        async def one(index: int) -> None:
            async with await dialer.dial(address, timeout=suite.step_timeout) as stream:
                await _round_trip(stream, b"dial %d" % index)
            finished.append(index)

        with anyio.fail_after(suite.step_timeout):
            async with anyio.create_task_group() as tg:
                for index in range(count):
                    tg.start_soon(one, index)
        _check(sorted(finished) == list(range(count)), f"only {len(finished)} dials finished")
        await suite.wait_stats(
            listener, f"expected {count} accepted connections", lambda s: s.accepted == count
        )


async def _gate(suite: _Suite) -> None:
    hosts: list[str] = []

    def refuse(host: str) -> bool:
        hosts.append(host)
        return False

    transport = suite.transport(
        TransportConfig(handshake_timeout=suite.step_timeout), accept_gate=refuse
    )
    async with suite.serving(_idle, transport) as (listener, address):
        dialer = suite.transport()
        try:
            with anyio.fail_after(suite.step_timeout):
                stream = await dialer.dial(address, timeout=suite.step_timeout)
        except (HandshakeError, DialError):
            pass
        else:
            await stream.aclose()
            raise ConformanceError("a refusing gate let a dial through")
        await suite.wait_stats(
            listener, "gate rejection not counted", lambda s: s.rejected_by_gate == 1
        )
        stats = listener.statistics()
        _check(
            stats.accepted == 0 and stats.total_handshake_failures == 0,
            f"a gated connection must not reach the handshake: {stats}",
        )
        _check(len(hosts) == 1 and bool(hosts[0]), f"gate saw hosts {hosts!r}")


async def _overload(suite: _Suite) -> None:
    # a long handshake timeout, so the first connection stays pending while the second arrives
    transport = suite.transport(
        TransportConfig(handshake_timeout=suite.step_timeout, max_pending_handshakes=1)
    )
    async with suite.serving(_idle, transport) as (listener, address):
        dialer = suite.transport()
        with anyio.fail_after(suite.step_timeout):
            first = await dialer._raw_connect(address)
        async with first.stream:
            await suite.wait_stats(
                listener, "first handshake not pending", lambda s: s.pending_handshakes == 1
            )
            with anyio.fail_after(suite.step_timeout):
                second = await dialer._raw_connect(address)
                async with second.stream:
                    await _expect_closed_by_peer(second.stream)
            await suite.wait_stats(
                listener, "overload rejection not counted", lambda s: s.rejected_overload == 1
            )


CHECKS: dict[str, Callable[[_Suite], Awaitable[None]]] = {
    "identities": _identities,
    "listen_addresses": _listen_addresses,
    "data_integrity": _data_integrity,
    "server_push": _server_push,
    "eof_propagation": _eof_propagation,
    "handler_lifecycle": _handler_lifecycle,
    "wrong_id": _wrong_id,
    "dial_nothing": _dial_nothing,
    "handshake_timeout": _handshake_timeout,
    "garbage": _garbage,
    "concurrent_dials": _concurrent_dials,
    "gate": _gate,
    "overload": _overload,
}
"""Every conformance check by name, in the order they run."""


async def check_transport_conformance(
    make_transport: TransportFactory,
    *,
    checks: Iterable[str] | None = None,
    misdirect: Callable[[NodeAddress, NodeId], NodeAddress] | None = None,
    handshake_timeout: float = 0.5,
    step_timeout: float = 20.0,
) -> None:
    """Run the conformance checks (all, or the named ``checks``) against a transport.

    ``make_transport(identity, config, *, accept_gate)`` builds a transport configured by
    ``config`` (a :class:`~overlay.transport.TransportConfig`) listening somewhere fresh
    (e.g. ``127.0.0.1`` port 0).
    ``misdirect(address, wrong_id)`` returns an address that reaches ``address``'s listener but
    expects ``wrong_id`` (default: the same address with the node id replaced; the memory
    network needs :meth:`MemoryNetwork.misdirect`). ``handshake_timeout`` is what the
    transports are built with (short, so the silent-peer check is quick); every step must
    finish within ``step_timeout``. Raises :class:`ConformanceError` on the first failure.
    """
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise ValueError(f"unknown conformance checks: {unknown}; known: {list(CHECKS)}")
    suite = _Suite(
        make=make_transport,
        misdirect=misdirect if misdirect is not None else _replace_id,
        handshake_timeout=handshake_timeout,
        step_timeout=step_timeout,
    )
    for name in names:
        try:
            await CHECKS[name](suite)
        except Exception as exc:  # re-raised: only annotated with the failing check's name
            exc.add_note(f"in transport conformance check {name!r}")
            raise


def _replace_id(address: NodeAddress, wrong_id: NodeId) -> NodeAddress:
    return replace(address, node_id=wrong_id)
