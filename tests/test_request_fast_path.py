"""The data path's fast paths, on every loop (asyncio, trio, uvloop) and both transports.

On asyncio a plain-function handler is served on the connection's read path straight from
the transport's callback, answers are written by whoever queued them when the writer is idle,
and responses wake their caller directly; anything that must wait (a full inbox, a paused
transport, an ``async`` handler) falls back to the tasks. These tests check that the fast and
the slow paths together keep the documented behaviour: order, backpressure, cancellation, and
a blocking handler never stalling the connection's reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from overlay.errors import ErrorCode, RequestError
from overlay.node import Node
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from tests.support import both_transports, connected_pair, every_loop, wait_until

pytestmark = pytest.mark.anyio

anyio_backend = every_loop()
transport = both_transports()

FAST = ChannelSpec(id=7, name="fast", codec=BytesCodec(), response_codec=BytesCodec(),
                   max_concurrent_requests=64)
SLOW = ChannelSpec(id=8, name="slow", codec=BytesCodec(), response_codec=BytesCodec())
BULK = ChannelSpec(id=9, name="bulk", codec=BytesCodec(), response_codec=BytesCodec(),
                   max_message_size=300_000, send_queue_size=4, recv_queue_size=2)


@dataclass(slots=True)
class Pair:
    a: Node
    b: Node
    fast_a: Channel[bytes, bytes]
    fast_b: Channel[bytes, bytes]
    slow_a: Channel[bytes, bytes]
    slow_b: Channel[bytes, bytes]
    bulk_a: Channel[bytes, bytes]
    bulk_b: Channel[bytes, bytes]


@asynccontextmanager
async def pair(transport: str) -> AsyncIterator[Pair]:
    async with connected_pair(transport, [FAST, SLOW, BULK]) as (a, b):
        yield Pair(a, b, a.channel(FAST), b.channel(FAST), a.channel(SLOW), b.channel(SLOW),
                   a.channel(BULK), b.channel(BULK))


def _echo(env: Envelope[bytes]) -> bytes:
    return b"echo:" + env.message


async def test_a_plain_function_handler_answers_and_its_errors_are_mapped(transport: str) -> None:
    def handler(env: Envelope[bytes]) -> bytes:
        if env.message == b"refuse":
            raise RequestError(ErrorCode.OVERLOADED, "busy")
        if env.message == b"bug":
            raise ZeroDivisionError("handler bug")
        anyio.current_time()  # anyio's synchronous API works on the read path
        return b"echo:" + env.message

    async with pair(transport) as p:
        p.fast_b.handle_requests(handler)
        for i in range(20):
            assert await p.fast_a.request(p.b.node_id, b"%d" % i, timeout=5) == b"echo:%d" % i
        with pytest.raises(RequestError) as refused:
            await p.fast_a.request(p.b.node_id, b"refuse", timeout=5)
        assert refused.value.code is ErrorCode.OVERLOADED
        with pytest.raises(RequestError) as bug:
            await p.fast_a.request(p.b.node_id, b"bug", timeout=5)
        assert bug.value.code is ErrorCode.INTERNAL
        stats = p.fast_b.statistics()
        assert (stats.requests_served, stats.requests_failed) == (20, 2)
        # the connection survived the handler's bug
        assert await p.fast_a.request(p.b.node_id, b"after", timeout=5) == b"echo:after"


async def test_a_plain_function_handler_may_send_from_the_read_path(transport: str) -> None:
    """A plain handler queues a message back to the requester (``send_nowait``) before its
    answer: both arrive, the message first (one connection, one order)."""
    async with pair(transport) as p:
        peer_a = p.a.node_id

        def handler(env: Envelope[bytes]) -> bytes:
            p.fast_b.send_nowait(peer_a, b"note:" + env.message)
            return b"echo:" + env.message

        p.fast_b.handle_requests(handler)
        assert await p.fast_a.request(p.b.node_id, b"x", timeout=5) == b"echo:x"
        with anyio.fail_after(5):
            env = await p.fast_a.receive()
        assert env.message == b"note:x"


async def test_a_blocking_async_handler_does_not_stall_the_connections_reads(
    transport: str,
) -> None:
    """An ``async`` handler parked on an event runs on a request worker: meanwhile requests
    to plain and to other ``async`` handlers, and messages, still flow on the connection."""
    release = anyio.Event()
    parked = anyio.Event()

    async def slow(env: Envelope[bytes]) -> bytes:
        if env.message == b"block":
            parked.set()
            await release.wait()
        return b"slow:" + env.message

    async with pair(transport) as p:
        p.fast_b.handle_requests(_echo)
        p.slow_b.handle_requests(slow)
        answers: list[bytes] = []

        async def blocked_call() -> None:
            answers.append(await p.slow_a.request(p.b.node_id, b"block", timeout=10))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked_call)
                await parked.wait()
                for i in range(10):
                    assert await p.fast_a.request(p.b.node_id, b"%d" % i) == b"echo:%d" % i
                    assert await p.slow_a.request(p.b.node_id, b"q%d" % i) == b"slow:q%d" % i
                    await p.bulk_a.send(p.b.node_id, b"m%d" % i)
                    assert (await p.bulk_b.receive()).message == b"m%d" % i
                assert answers == []
                release.set()
        assert answers == [b"slow:block"]


async def test_cancelled_requests_to_a_plain_handler_leave_the_connection_clean(
    transport: str,
) -> None:
    """Callers cancelled at every point of a request served on the read path (before it is
    written, while its answer is on the way, after it arrived) leave no waiter, no handler and
    no broken connection behind."""
    async with pair(transport) as p:
        p.fast_b.handle_requests(_echo)
        conn_a = p.a.router.get_peer(p.b.node_id)
        conn_b = p.b.router.get_peer(p.a.node_id)
        assert conn_a is not None and conn_b is not None
        async def call() -> None:
            await p.fast_a.request(p.b.node_id, b"x", timeout=5)

        for steps in range(6):
            for _ in range(5):
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call)
                        for _ in range(steps):
                            await anyio.lowlevel.checkpoint()
                        scope.cancel()
        await wait_until(lambda: conn_a.requests_waiting == 0 and conn_b.requests_serving == 0)
        assert conn_a.is_open and conn_b.is_open
        assert p.a.router.get_peer(p.b.node_id) is conn_a
        results = [await p.fast_a.request(p.b.node_id, b"%d" % i, timeout=5) for i in range(5)]
        assert results == [b"echo:%d" % i for i in range(5)]


async def _expect_echo(p: Pair, i: int) -> None:
    assert await p.fast_a.request(p.b.node_id, b"%d" % i, timeout=30) == b"echo:%d" % i


async def test_direct_and_queued_writes_keep_the_order_under_backpressure(
    transport: str,
) -> None:
    """A sender pushes large and small messages to a receiver that does not read yet: the
    inbox fills, the reader stops, the transport pauses and later writes go through the writer
    task; requests on another channel interleave. Once the receiver drains, every message
    arrives, in order, intact, and every request is answered."""
    count = 40
    big = 250_000

    def payload(i: int) -> bytes:
        size = big if i % 3 == 0 else 10 + i
        return (b"%04d" % i) * (size // 4)

    async with pair(transport) as p:
        p.fast_b.handle_requests(_echo)
        sent = anyio.Event()

        async def sender() -> None:
            for i in range(count):
                await p.bulk_a.send(p.b.node_id, payload(i), timeout=30)
            sent.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                await anyio.wait_all_tasks_blocked()  # the sender blocked, or sent them all
                for i in range(count):
                    env = await p.bulk_b.receive()
                    assert env.message == payload(i), f"message {i} out of order or damaged"
                    if i % 10 == 0:  # answered behind the queued bulk data (one byte stream)
                        tg.start_soon(_expect_echo, p, i)
        assert sent.is_set()
