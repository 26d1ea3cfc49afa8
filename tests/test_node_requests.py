"""Request/response between real nodes over one connection (loopback TCP and the memory network,
asyncio and trio): matching, out-of-order answers, typed errors, limits, deadlines, cancellation.

Conditions are awaited with events and ``anyio.wait_all_tasks_blocked()``, never with sleeps;
the only real time spent is in tests whose subject *is* a timeout (0.1 s each), and none of them
measures it: elapsed times are asserted on trio's mock clock (``virtual_time``), where they are
exact.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from overlay.errors import (
    ChannelError,
    ErrorCode,
    LocalProtocolError,
    PeerNotConnected,
    RequestError,
    RequestTimeout,
)
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._destination import BROADCAST
from tests.support import (
    Holding,
    Parked,
    both_backends,
    both_transports,
    connected_pair,
    node_pair,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

SHORT = 0.1
"""Seconds of the tests whose subject is a deadline."""

ECHO = ChannelSpec(
    id=5,
    name="echo",
    codec=BytesCodec(),
    response_codec=BytesCodec(),
    max_concurrent_requests=256,
    send_queue_size=16,
)
LIMITED = ChannelSpec(
    id=6, name="limited", codec=BytesCodec(), response_codec=BytesCodec(),
    max_concurrent_requests=2,
)

anyio_backend = both_backends()
transport = both_transports()


@dataclass(slots=True)
class Pair:
    a: Node
    b: Node
    ca: Channel[bytes, bytes]
    cb: Channel[bytes, bytes]
    la: Channel[bytes, bytes]
    lb: Channel[bytes, bytes]


@asynccontextmanager
async def channel_pair(transport: str) -> AsyncIterator[Pair]:
    """Node ``a`` dialed node ``b``, both registered the connection; ECHO and LIMITED open."""
    async with connected_pair(transport, [ECHO, LIMITED]) as (a, b):
        yield Pair(a, b, a.channel(ECHO), b.channel(ECHO), a.channel(LIMITED), b.channel(LIMITED))


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message + b"!"


# --------------------------------------------------------------------------- matching


async def test_simple_round_trip_both_directions(transport: str) -> None:
    async with channel_pair(transport) as p:
        p.ca.handle_requests(_echo)
        p.cb.handle_requests(_echo)
        assert await p.ca.request(p.b.node_id, b"ping", timeout=5) == b"ping!"
        assert await p.cb.request(p.a.node_id, b"pong", timeout=5) == b"pong!"
        assert p.cb.statistics().requests_served == 1
        assert p.ca.statistics().requests_served == 1


async def test_out_of_order_responses(transport: str) -> None:
    """A's handler answers only after B's response reached the caller: ids keep them apart."""
    async with channel_pair(transport) as p:
        a_started = anyio.Event()
        b_answered = anyio.Event()
        order: list[bytes] = []

        async def handler(env: Envelope[bytes]) -> bytes:
            if env.message == b"A":
                a_started.set()
                await b_answered.wait()
            return b"answer-" + env.message

        p.cb.handle_requests(handler)
        results: dict[bytes, bytes] = {}

        async def call(msg: bytes) -> None:
            results[msg] = await p.ca.request(p.b.node_id, msg, timeout=5)
            order.append(msg)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, b"A")
                await a_started.wait()  # request A is in flight, its handler is parked
                await call(b"B")
                assert b"A" not in results
                b_answered.set()
        assert results == {b"A": b"answer-A", b"B": b"answer-B"}
        assert order == [b"B", b"A"]


async def test_two_hundred_concurrent_requests_all_matched(transport: str) -> None:
    """200 requests are in flight at once (the handler holds them all) and each caller gets
    the answer to its own request."""
    count = 200
    async with channel_pair(transport) as p:
        arrived = 0
        all_in = anyio.Event()

        async def handler(env: Envelope[bytes]) -> bytes:
            nonlocal arrived
            arrived += 1
            if arrived == count:
                all_in.set()
            await all_in.wait()
            return env.message[::-1]

        p.cb.handle_requests(handler)
        results: dict[int, bytes] = {}

        async def call(i: int) -> None:
            results[i] = await p.ca.request(p.b.node_id, f"req-{i:04d}".encode(), timeout=20)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(call, i)
        assert arrived == count
        assert results == {i: f"req-{i:04d}".encode()[::-1] for i in range(count)}
        conn = p.a.router.get_peer(p.b.node_id)
        assert conn is not None
        assert conn.core.statistics().outbound_requests_in_flight == 0


# --------------------------------------------------------------------------- typed errors


async def test_handler_request_error_reaches_caller_with_code_and_message(transport: str) -> None:
    async def handler(env: Envelope[bytes]) -> bytes:
        raise RequestError(ErrorCode.NOT_FOUND, "x")

    async with channel_pair(transport) as p:
        p.cb.handle_requests(handler)
        with pytest.raises(RequestError) as info:
            await p.ca.request(p.b.node_id, b"key", timeout=5)
        assert info.value.code is ErrorCode.NOT_FOUND
        assert info.value.message == "x"
        assert p.cb.statistics().requests_failed == 1


async def test_handler_bug_is_internal_and_connection_stays_up(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(env: Envelope[bytes]) -> bytes:
        if env.message == b"boom":
            raise ValueError("handler bug")
        return b"fine"

    async with channel_pair(transport) as p:
        p.cb.handle_requests(handler)
        conn_before = p.a.router.get_peer(p.b.node_id)
        with pytest.raises(RequestError) as info:
            await p.ca.request(p.b.node_id, b"boom", timeout=5)
        assert info.value.code is ErrorCode.INTERNAL
        assert "handler bug" not in info.value.message  # internals are not leaked to peers
        assert await p.ca.request(p.b.node_id, b"again", timeout=5) == b"fine"
        assert p.a.router.get_peer(p.b.node_id) is conn_before
        assert conn_before is not None and conn_before.is_open
        assert p.b.connected_peers() == [p.a.node_id]
    assert any("failed on a request" in r.getMessage() for r in caplog.records)


async def test_no_handler(transport: str) -> None:
    async with channel_pair(transport) as p:
        with pytest.raises(RequestError) as info:
            await p.ca.request(p.b.node_id, b"anyone?", timeout=5)
        assert info.value.code is ErrorCode.NO_HANDLER
        p.cb.handle_requests(_echo)  # installing one later works on the same connection
        assert await p.ca.request(p.b.node_id, b"now", timeout=5) == b"now!"
        p.cb.handle_requests(None)
        with pytest.raises(RequestError) as info:
            await p.ca.request(p.b.node_id, b"gone", timeout=5)
        assert info.value.code is ErrorCode.NO_HANDLER


async def test_overloaded_beyond_max_concurrent_requests(transport: str) -> None:
    async with channel_pair(transport) as p:
        holding = Holding(2)
        p.lb.handle_requests(holding)
        results: list[bytes] = []

        async def call(msg: bytes) -> None:
            results.append(await p.la.request(p.b.node_id, msg, timeout=5))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, b"1")
                tg.start_soon(call, b"2")
                await holding.all_in.wait()
                with pytest.raises(RequestError) as info:
                    await p.la.request(p.b.node_id, b"3", timeout=5)
                assert info.value.code is ErrorCode.OVERLOADED
                holding.release.set()
        assert sorted(results) == [b"1", b"2"]
        conn = p.b.router.get_peer(p.a.node_id)
        assert conn is not None
        assert conn.core.statistics().channel(LIMITED.id).requests_rejected == 1
        # capacity is back once the first two were answered
        assert await p.la.request(p.b.node_id, b"4", timeout=5) == b"4"


async def test_request_to_unconnected_peer_and_to_broadcast(transport: str) -> None:
    async with channel_pair(transport) as p:
        p.cb.handle_requests(_echo)
        with pytest.raises(PeerNotConnected):
            await p.ca.request(NodeKey.generate().node_id, b"x", timeout=5)
        with pytest.raises(ChannelError):
            await p.ca.request(BROADCAST, b"x", timeout=5)


# ---------------------------------------------------------------- deadlines, cancellation


async def test_explicit_timeout_raises_request_timeout_and_cancels_handler(
    transport: str,
) -> None:
    async with channel_pair(transport) as p:
        parked = Parked()
        p.cb.handle_requests(parked)
        with pytest.raises(RequestTimeout):
            await p.ca.request(p.b.node_id, b"slow", timeout=SHORT)
        with anyio.fail_after(5):
            await parked.cancelled.wait()  # the CANCEL reached the responder
        p.cb.handle_requests(_echo)
        assert await p.ca.request(p.b.node_id, b"next", timeout=5) == b"next!"


async def test_spec_default_timeout_applies_without_scope_or_argument(transport: str) -> None:
    spec = ChannelSpec(id=7, name="short", codec=BytesCodec(), response_codec=BytesCodec(),
                       request_timeout=SHORT)
    async with connected_pair(transport, [spec]) as (a, b):
        ca, cb = a.channel(spec), b.channel(spec)
        parked = Parked()
        cb.handle_requests(parked)
        with pytest.raises(RequestTimeout):
            await ca.request(b.node_id, b"x")
        with anyio.fail_after(5):
            await parked.cancelled.wait()


async def test_caller_fail_after_scope_is_the_deadline(transport: str) -> None:
    async with channel_pair(transport) as p:
        parked = Parked()
        p.cb.handle_requests(parked)
        with pytest.raises(TimeoutError):
            with anyio.fail_after(SHORT):
                await p.ca.request(p.b.node_id, b"slow")
        with anyio.fail_after(5):
            await parked.cancelled.wait()


async def test_caller_move_on_after_scope_cancels_quietly(transport: str) -> None:
    async with channel_pair(transport) as p:
        parked = Parked()
        p.cb.handle_requests(parked)
        with anyio.move_on_after(SHORT) as scope:
            await p.ca.request(p.b.node_id, b"slow")
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            await parked.cancelled.wait()


async def test_cancelling_the_caller_cancels_the_responders_handler(transport: str) -> None:
    """No timers at all: the caller is cancelled once the handler has started."""
    async with channel_pair(transport) as p:
        parked = Parked()
        p.cb.handle_requests(parked)
        finished = False
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def caller() -> None:
                    nonlocal finished
                    await p.ca.request(p.b.node_id, b"doomed")
                    finished = True

                tg.start_soon(caller)
                await parked.started.wait()
                tg.cancel_scope.cancel()
            await parked.cancelled.wait()
        assert not finished
        conn = p.b.router.get_peer(p.a.node_id)
        assert conn is not None
        await wait_until(lambda: conn.core.statistics().inbound_requests_active == 0)
        # the connection is still perfectly usable
        p.cb.handle_requests(_echo)
        assert await p.ca.request(p.b.node_id, b"after", timeout=5) == b"after!"


# ------------------------------------------------------- deadlines on virtual time (trio only)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_request_timeout_fires_exactly_at_the_deadline() -> None:
    """The caller's RequestTimeout comes at its deadline, not before and not later (virtual
    time: the elapsed time is exact, so this runs on trio's mock clock only)."""
    async with connected_pair("memory", [ECHO]) as (a, b):
        parked = Parked()
        b.channel(ECHO).handle_requests(parked)
        before = anyio.current_time()
        with pytest.raises(RequestTimeout):
            await a.channel(ECHO).request(b.node_id, b"slow", timeout=SHORT)
        assert anyio.current_time() - before == pytest.approx(SHORT)
        await parked.cancelled.wait()


ECHO_SLOW = ChannelSpec(id=11, name="slow-echo", codec=BytesCodec(),
                        response_codec=BytesCodec())


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
@pytest.mark.parametrize("delta", [-0.001, 0.0, 0.001])
async def test_response_and_deadline_at_the_same_instant_leave_no_state(delta: float) -> None:
    """The answer arrives just before, exactly at, or just after the deadline: the caller gets
    the answer or RequestTimeout, and neither end keeps a waiter, an in-flight slot or a
    handler."""
    timeout = 1.0

    async def slow(env: Any) -> bytes:
        await anyio.sleep(timeout + delta)
        return bytes(env.message)

    async with node_pair("memory", [ECHO_SLOW]) as (a, b):
        b.channel(ECHO_SLOW).handle_requests(slow)
        await a.dial(b.address)
        await wait_until(lambda: a.node_id in b.connected_peers())
        outcomes: list[bytes | str] = []
        for _ in range(3):
            try:
                outcomes.append(await a.channel(ECHO_SLOW).request(b.node_id, b"x",
                                                                    timeout=timeout))
            except RequestTimeout:
                outcomes.append("timeout")
        await anyio.sleep(5)
        conn_a = a.router.get_peer(b.node_id)
        conn_b = b.router.get_peer(a.node_id)
        assert conn_a is not None and conn_b is not None
        assert conn_a.requests_waiting == 0
        assert conn_b.requests_serving == 0
        stats = {c.channel_id: c for c in conn_a.core.statistics().channels}
        assert stats[ECHO_SLOW.id].outbound_requests_in_flight == 0
        stats_b = {c.channel_id: c for c in conn_b.core.statistics().channels}
        assert stats_b[ECHO_SLOW.id].inbound_requests_active == 0
        if delta < 0:
            assert outcomes == [b"x"] * 3
        elif delta > 0:
            assert outcomes == ["timeout"] * 3


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_request_with_a_nan_timeout_is_refused_before_anything_is_sent() -> None:
    """``request(timeout=nan)`` fails with LocalProtocolError before the request is queued (a
    NaN reaching the timer service after the request was sent would leak the waiter and the
    in-flight slot)."""
    parked = Parked()
    async with node_pair("memory", [ECHO_SLOW]) as (a, b):
        b.channel(ECHO_SLOW).handle_requests(parked)
        await a.dial(b.address)
        await wait_until(lambda: a.node_id in b.connected_peers())
        error: BaseException | None = None
        with anyio.fail_after(60):
            try:
                await a.channel(ECHO_SLOW).request(b.node_id, b"x", timeout=math.nan)
            except Exception as exc:
                error = exc
        await anyio.sleep(1)
        conn = a.router.get_peer(b.node_id)
        assert conn is not None
        stats = {c.channel_id: c for c in conn.core.statistics().channels}
        leaked = (conn.requests_waiting, stats[ECHO_SLOW.id].outbound_requests_in_flight,
                  parked.started.is_set())
        assert isinstance(error, LocalProtocolError), repr(error)
        assert leaked == (0, 0, False)
