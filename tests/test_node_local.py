"""LOCAL delivery on a real node: the very same objects, no codec, and the same request semantics
as over the wire (typed errors, OVERLOADED, NO_HANDLER, deadlines, cancellation), on asyncio
and trio.

The channel's codec raises if it is ever called, so any serialisation on the LOCAL path fails
the test loudly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from overlay.errors import (
    ErrorCode,
    NoRoute,
    NoRouteReason,
    RequestError,
    RequestTimeout,
    SendTimeout,
    WouldBlock,
)
from overlay.node import Node
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.router._destination import BROADCAST, LOCAL
from overlay.testing import MemoryNetwork
from tests.support import Holding, Parked, both_backends, config_for, make_node

pytestmark = pytest.mark.anyio

SHORT = 0.1
"""Seconds of the tests whose subject is a deadline."""

anyio_backend = both_backends()


@dataclass(eq=False)
class Thing:
    """A mutable, unhashable-by-value object: identity is the only way to compare it."""

    label: str
    payload: list[int] = field(default_factory=list)


class CodecUsed(AssertionError):
    """Raised by :class:`ExplodingCodec`: something serialised a LOCAL message."""


class ExplodingCodec:
    """A codec that must never be called."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, message: Thing, /) -> bytes:
        self.calls += 1
        raise CodecUsed(f"encode({message!r}) called on the LOCAL path")

    def decode(self, data: bytes, /) -> Thing:
        self.calls += 1
        raise CodecUsed("decode called on the LOCAL path")


def _spec(**overrides: int) -> tuple[ChannelSpec[Thing, Thing], ExplodingCodec, ExplodingCodec]:
    codec, response_codec = ExplodingCodec(), ExplodingCodec()
    spec = ChannelSpec(id=0x30, name="things", codec=codec, response_codec=response_codec,
                       **overrides)
    return spec, codec, response_codec


@asynccontextmanager
async def local_node(**overrides: int) -> AsyncIterator[tuple[Node, Channel[Thing, Thing]]]:
    spec, codec, response_codec = _spec(**overrides)
    async with make_node(config_for("memory"), MemoryNetwork()) as node:
        yield node, node.channel(spec)
    assert codec.calls == 0
    assert response_codec.calls == 0


async def test_send_local_delivers_the_same_object() -> None:
    async with local_node() as (node, ch):
        msg = Thing("hello", [1, 2, 3])
        report = await ch.send(LOCAL, msg)
        assert report.delivered == (node.node_id,)
        assert report.ok
        env = await ch.receive()
        assert env.message is msg
        assert env.sender == node.node_id
        assert env.channel_id == ch.spec.id
        second = Thing("nowait")
        ch.send_nowait(LOCAL, second)
        assert ch.receive_nowait().message is second
        assert ch.statistics().inbox_depth == 0


async def test_request_local_passes_and_returns_the_same_objects() -> None:
    async with local_node() as (node, ch):
        msg = Thing("question")
        answer = Thing("answer")
        seen: list[Envelope[Thing]] = []

        async def handler(env: Envelope[Thing]) -> Thing:
            seen.append(env)
            env.message.payload.append(42)  # mutations are visible to the caller: no copy
            return answer

        ch.handle_requests(handler)
        result = await ch.request(LOCAL, msg, timeout=5)
        assert result is answer
        assert len(seen) == 1 and seen[0].message is msg
        assert seen[0].sender == node.node_id
        assert msg.payload == [42]
        assert ch.statistics().requests_served == 1


async def test_broadcast_does_not_include_local() -> None:
    async with local_node() as (_node, ch):
        with pytest.raises(NoRoute) as info:
            await ch.send(BROADCAST, Thing("nobody"))
        assert info.value.reason is NoRouteReason.NO_PEERS_CONNECTED
        with pytest.raises(WouldBlock):
            ch.receive_nowait()


async def test_local_request_error_keeps_code_and_message() -> None:
    async with local_node() as (_node, ch):

        async def handler(env: Envelope[Thing]) -> Thing:
            raise RequestError(ErrorCode.NOT_FOUND, "x")

        ch.handle_requests(handler)
        with pytest.raises(RequestError) as info:
            await ch.request(LOCAL, Thing("missing"), timeout=5)
        assert info.value.code is ErrorCode.NOT_FOUND
        assert info.value.message == "x"
        assert ch.statistics().requests_failed == 1


async def test_local_handler_bug_is_internal() -> None:
    async with local_node() as (_node, ch):

        async def handler(env: Envelope[Thing]) -> Thing:
            if env.message.label == "boom":
                raise ValueError("handler bug")
            return env.message

        ch.handle_requests(handler)
        with pytest.raises(RequestError) as info:
            await ch.request(LOCAL, Thing("boom"), timeout=5)
        assert info.value.code is ErrorCode.INTERNAL
        assert isinstance(info.value.__cause__, ValueError)
        ok = Thing("fine")
        assert await ch.request(LOCAL, ok, timeout=5) is ok  # still serving


async def test_local_no_handler() -> None:
    async with local_node() as (_node, ch):
        with pytest.raises(RequestError) as info:
            await ch.request(LOCAL, Thing("anyone?"), timeout=5)
        assert info.value.code is ErrorCode.NO_HANDLER


async def test_local_overloaded_beyond_max_concurrent_requests() -> None:
    async with local_node(max_concurrent_requests=2) as (_node, ch):
        holding = Holding(2)
        ch.handle_requests(holding)
        results: list[Thing] = []
        first, second = Thing("1"), Thing("2")

        async def call(msg: Thing) -> None:
            results.append(await ch.request(LOCAL, msg, timeout=5))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, first)
                tg.start_soon(call, second)
                await holding.all_in.wait()
                with pytest.raises(RequestError) as info:
                    await ch.request(LOCAL, Thing("3"), timeout=5)
                assert info.value.code is ErrorCode.OVERLOADED
                holding.release.set()
        assert {id(r) for r in results} == {id(first), id(second)}
        third = Thing("4")
        assert await ch.request(LOCAL, third, timeout=5) is third  # the slots were released


async def test_local_request_timeouts_and_cancellation() -> None:
    async with local_node() as (_node, ch):
        parked = Parked()
        ch.handle_requests(parked)
        with pytest.raises(RequestTimeout):
            await ch.request(LOCAL, Thing("slow"), timeout=SHORT)
        assert parked.cancelled.is_set()

        parked = Parked()
        ch.handle_requests(parked)
        with pytest.raises(TimeoutError):
            with anyio.fail_after(SHORT):
                await ch.request(LOCAL, Thing("slow"))
        assert parked.cancelled.is_set()

        parked = Parked()
        ch.handle_requests(parked)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ch.request, LOCAL, Thing("doomed"))
                await parked.started.wait()
                tg.cancel_scope.cancel()
        assert parked.cancelled.is_set()
        assert ch.statistics().requests_served == 0


async def test_local_inbox_backpressure() -> None:
    async with local_node(recv_queue_size=2) as (_node, ch):
        a, b = Thing("a"), Thing("b")
        ch.send_nowait(LOCAL, a)
        await ch.send(LOCAL, b)
        assert ch.statistics().inbox_depth == 2
        assert ch.statistics().inbox_capacity == 2
        with pytest.raises(WouldBlock):
            ch.send_nowait(LOCAL, Thing("c"))
        with pytest.raises(SendTimeout):
            await ch.send(LOCAL, Thing("c"), timeout=SHORT)
        assert ch.receive_nowait().message is a
        c = Thing("c")
        await ch.send(LOCAL, c, timeout=SHORT)  # space again
        assert (await ch.receive()).message is b
        assert (await ch.receive()).message is c
