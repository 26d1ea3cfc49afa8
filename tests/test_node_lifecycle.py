"""Node lifecycle: what happens to pending work when a node, or its peer, goes away (loopback
TCP and the memory network, asyncio and trio). Everything fails promptly with the error that
names who went away, and nothing is left running."""

from __future__ import annotations

import anyio
import pytest

from overlay.errors import (
    ConnectionClosed,
    LocalProtocolError,
    NodeClosed,
    PeerNotConnected,
    WouldBlock,
)
from overlay.router._channel import ChannelSpec
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork
from tests.support import (
    Parked,
    both_backends,
    both_transports,
    config_for,
    connected_pair,
    make_node,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

PROMPT = 1.5
"""Upper bound, in seconds, for "promptly" (the close flush allows 1 s for a dead peer)."""

ECHO = ChannelSpec(id=5, name="echo", codec=BytesCodec(), response_codec=BytesCodec(),
                   send_queue_size=2, recv_queue_size=1)

anyio_backend = both_backends()
transport = both_transports()


async def _leave_with_a_pending_request(transport: str) -> float:
    """The requester's node leaves while a request is pending; returns the seconds from leaving
    to the request's NodeClosed."""
    net = MemoryNetwork()
    async with make_node(config_for(transport), net) as b:
        parked = Parked()
        b.channel(ECHO).handle_requests(parked)
        errors: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            async with make_node(config_for(transport), net) as a:
                ca = a.channel(ECHO)
                await a.dial(b.address)

                async def ask() -> None:
                    try:
                        await ca.request(b.node_id, b"pending", timeout=30)
                    except NodeClosed as exc:
                        errors.append(exc)

                tg.start_soon(ask)
                with anyio.fail_after(5):
                    await parked.started.wait()
                closing = anyio.current_time()
            # left `async with a`: the request task (outside a's task group) saw NodeClosed
            await wait_until(lambda: bool(errors))
            elapsed = anyio.current_time() - closing
        assert len(errors) == 1 and isinstance(errors[0], NodeClosed)
        # the responder was told: its handler is cancelled and the peer is gone
        with anyio.fail_after(5):
            await parked.cancelled.wait()
        await wait_until(lambda: b.connected_peers() == [])
    return elapsed


async def _peer_leaves_with_a_pending_request(transport: str) -> float:
    """The responder's node leaves while a request is pending; returns the seconds from its
    leaving to the request's ConnectionClosed."""
    net = MemoryNetwork()
    async with make_node(config_for(transport), net) as a:
        ca = a.channel(ECHO)
        errors: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            async with make_node(config_for(transport), net) as b:
                parked = Parked()
                b.channel(ECHO).handle_requests(parked)
                await a.dial(b.address)

                async def ask() -> None:
                    try:
                        await ca.request(b.node_id, b"pending", timeout=30)
                    except ConnectionClosed as exc:
                        errors.append(exc)

                tg.start_soon(ask)
                with anyio.fail_after(5):
                    await parked.started.wait()
                closing = anyio.current_time()
            assert parked.cancelled.is_set()  # b cancelled its own handler on the way out
            await wait_until(lambda: bool(errors))
            elapsed = anyio.current_time() - closing
        assert len(errors) == 1 and isinstance(errors[0], ConnectionClosed)
        assert "shutdown" in str(errors[0])
        await wait_until(lambda: a.connected_peers() == [])
        with pytest.raises(PeerNotConnected):
            await ca.request(b.node_id, b"again", timeout=5)
    return elapsed


async def test_leaving_the_node_fails_pending_requests_with_node_closed(transport: str) -> None:
    await _leave_with_a_pending_request(transport)


async def test_peer_leaving_fails_pending_requests_with_connection_closed(transport: str) -> None:
    await _peer_leaves_with_a_pending_request(transport)


# Virtual time (trio's mock clock only): "promptly" is measured exactly, not on a loaded machine.
@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_pending_requests_fail_promptly_when_either_node_leaves() -> None:
    assert await _leave_with_a_pending_request("memory") < PROMPT
    assert await _peer_leaves_with_a_pending_request("memory") < PROMPT


async def test_disconnect_fails_pending_requests_and_blocked_senders(transport: str) -> None:
    async with connected_pair(transport, [ECHO]) as (a, b):
        ca = a.channel(ECHO)
        parked = Parked()
        b.channel(ECHO).handle_requests(parked)  # b's reactor never reads its inbox either
        request_errors: list[BaseException] = []
        send_errors: list[BaseException] = []

        async def ask() -> None:
            try:
                await ca.request(b.node_id, b"pending", timeout=30)
            except ConnectionClosed as exc:
                request_errors.append(exc)

        async def flood() -> None:
            try:
                while True:
                    await ca.send(b.node_id, b"x" * 60_000, timeout=30)
            except ConnectionClosed as exc:
                send_errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            with anyio.fail_after(5):
                await parked.started.wait()
            tg.start_soon(flood)
            conn = a.router.get_peer(b.node_id)
            assert conn is not None
            # the flood is parked on a full queue (b stopped reading)
            await wait_until(lambda: conn.core.statistics().channel(ECHO.id).queue_depth == 2,
                             timeout=10)
            with pytest.raises(WouldBlock):
                ca.send_nowait(b.node_id, b"y")
            assert await a.disconnect(b.node_id, "test is over")
        assert len(request_errors) == 1 and len(send_errors) == 1
        assert not await a.disconnect(b.node_id)
        # b's reader is parked on b's full inbox (backpressure), so b only reads a's Disconnect
        # once its reactor drains the channel
        cb = b.channel(ECHO)

        async def drain() -> None:
            async for _env in cb:
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await wait_until(lambda: b.connected_peers() == [])
            tg.cancel_scope.cancel()


async def test_receive_after_close_raises_node_closed_and_iteration_ends(transport: str) -> None:
    net = MemoryNetwork()
    received: list[bytes] = []
    ended = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with make_node(config_for(transport), net) as a:
            ca = a.channel(ECHO)

            async def reactor() -> None:
                async for env in ca:
                    received.append(env.message)
                ended.set()

            tg.start_soon(reactor)
            await ca.send(a.node_id, b"one")
            await wait_until(lambda: received == [b"one"])
        with anyio.fail_after(5):
            await ended.wait()
    with pytest.raises(NodeClosed):
        await ca.receive()
    with pytest.raises(NodeClosed):
        ca.receive_nowait()
    with pytest.raises(NodeClosed):
        await ca.send(a.node_id, b"late")
    with pytest.raises(NodeClosed):
        a.channel(ChannelSpec(id=77, name="new", codec=BytesCodec(), response_codec=BytesCodec()))


async def test_a_node_starts_only_once(transport: str) -> None:
    node = make_node(config_for(transport), MemoryNetwork())
    async with node:
        pass
    with pytest.raises(LocalProtocolError):
        async with node:
            pass
