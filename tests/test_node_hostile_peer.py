"""A peer that stops reading cannot keep its connection: every way a connection ends finishes
within the close bound (``close_timeout``) whatever the peer does.

A *stalled peer* authenticates for real (transport dial + Noise), runs the hello exchange of
``overlay.wire._nodeinfo`` by hand and then never reads nor writes again. The node is made to send
it
bulk messages until its writer is blocked in a write (the peer's receive buffer is full: the TCP
window on loopback, the pipe bound on the memory network). Then the connection is ended in
each of the ways a node ends one — ``Node.disconnect``, the idle timeout, node shutdown, the peer
manager's ``close`` (ban, eviction) — and must be gone within ``close_timeout`` plus slack: the
final Disconnect is best effort, then the transport is aborted.

The loopback tests use real time with a short ``close_timeout`` and generous upper bounds (the
old behaviour never finished at all, or after the 2 s shutdown grace); the virtual-time tests
(trio's MockClock, memory network) check the bound itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import pytest
import trio.testing

from overlay.connection._driver import PeerConnection
from overlay.errors import OverlayError
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import ConnectionConfig
from overlay.router._channel import ChannelSpec
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork
from overlay.transport import Transport
from overlay.transport._hello import receive_hello, send_hello
from overlay.transport._secure import SecureIdentity, SecureStream
from overlay.transport._tcp import TcpTransport
from overlay.wire._nodeinfo import (
    DisconnectReason,
    NodeInfo,
    decode_hello_reply,
    encode_node_info,
)
from tests.support import (
    both_transports,
    config_for,
    every_loop,
    make_node,
    settle,
    wait_until,
)

pytestmark = pytest.mark.anyio

T = TypeVar("T")

anyio_backend = every_loop()
transport = both_transports()

BULK = ChannelSpec(id=11, name="bulk", codec=BytesCodec(), response_codec=BytesCodec(),
                   send_queue_size=2, max_message_size=1 << 20)
CHUNK = b"\x5a" * (1 << 20)

CLOSE = 0.25
"""The ``close_timeout`` of the real-time tests."""
SLACK = 1.5
"""Seconds allowed on top of the bound on a loaded machine (far below the old behaviour)."""

VIRTUAL = pytest.param(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}),
                       id="trio-virtual-time")


# ------------------------------------------------------------------------------ stalled peer


async def stalled_peer(node: Node, net: MemoryNetwork) -> tuple[SecureStream, PeerConnection]:
    """Connect to ``node``, run the hello exchange, and return the stream (never read again)
    with the node's connection to it."""
    identity = SecureIdentity(NodeKey.generate())
    dialer: Transport = (
        net.transport(identity) if node.address.protocol == "memory" else TcpTransport(identity)
    )
    stream = await dialer.dial(node.address, timeout=5)
    info = NodeInfo(network=node.config.network, channels=(BULK.id,))
    await send_hello(stream, encode_node_info(info))
    decode_hello_reply(await receive_hello(stream, bytearray()))
    conn = await _poll_for(lambda: node.router.get_peer(identity.node_id))
    assert conn is not None
    return stream, conn


async def _poll_for(get: Callable[[], T], timeout: float = 5.0) -> T:
    """Wait (without sleeping: :func:`tests.support.wait_until`) until ``get()`` returns
    something truthy, and return it."""
    found: list[T] = []

    def ready() -> bool:
        value = get()
        if value:
            found.append(value)
        return bool(value)

    await wait_until(ready, timeout)
    return found[-1]


async def block_writer(tg: anyio.abc.TaskGroup, conn: PeerConnection) -> None:
    """Make the node's writer block on a write to the stalled peer: queue bulk messages until
    the channel's send queue stays full."""

    async def pump() -> None:
        try:
            while True:
                await conn.send_message(BULK.id, CHUNK)
        except OverlayError:
            return

    tg.start_soon(pump)
    await _poll_for(
        lambda: conn.core.statistics().channel(BULK.id).queue_depth >= BULK.send_queue_size,
        timeout=20,
    )
    # ``bytes_out`` counts batches handed to the writer: once it stops growing with the queue
    # full while every task is blocked, the writer is stuck in a write (the kernel may still be
    # growing its buffers first, waking the writer again).
    previous = -1
    for _ in range(200):
        current = conn.core.statistics().bytes_out
        if current == previous:
            break
        previous = current
        await settle()
    else:
        raise AssertionError("the writer never blocked")
    assert conn.is_open


@asynccontextmanager
async def stalled(
    transport: str, **connection: Any
) -> AsyncIterator[tuple[Node, SecureStream, PeerConnection, anyio.abc.TaskGroup]]:
    """A node, a stalled peer connected to it, and the node's writer blocked on it."""
    net = MemoryNetwork()
    conf = config_for(transport, connection=ConnectionConfig(**connection))
    async with make_node(conf, net) as node:
        node.channel(BULK)
        stream, conn = await stalled_peer(node, net)
        try:
            async with anyio.create_task_group() as tg:
                await block_writer(tg, conn)
                yield node, stream, conn, tg
                tg.cancel_scope.cancel()
        finally:
            await anyio.aclose_forcefully(stream)


# ---------------------------------------------------------------- real time, both transports


async def test_disconnect_of_a_peer_that_stopped_reading_is_bounded(transport: str) -> None:
    async with stalled(transport, close_timeout=CLOSE) as (node, _stream, conn, _tg):
        start = anyio.current_time()
        with anyio.fail_after(CLOSE + SLACK):
            assert await node.disconnect(conn.node_id)
        assert anyio.current_time() - start >= CLOSE * 0.9  # the Disconnect was attempted
        assert conn.node_id not in node.connected_peers()
        assert conn.close_reason is DisconnectReason.OPERATOR


async def test_the_stalled_peer_sees_a_reset(transport: str) -> None:
    """The transport is aborted, not closed gracefully: the peer's side is reset (what it had
    not read is dropped), so no buffered bytes keep the socket alive in the kernel."""
    async with stalled(transport, close_timeout=CLOSE) as (node, stream, conn, _tg):
        await node.disconnect(conn.node_id)
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            while True:
                await stream.receive()


async def test_idle_timeout_closes_a_peer_that_neither_reads_nor_sends(transport: str) -> None:
    async with stalled(transport, close_timeout=CLOSE, ping_interval=0.2,
                       idle_timeout=0.5) as (node, _stream, conn, _tg):
        with anyio.fail_after(0.5 + CLOSE + SLACK):
            await wait_until(lambda: conn.node_id not in node.connected_peers(), timeout=10)
        assert conn.close_reason is DisconnectReason.IDLE_TIMEOUT


async def test_node_shutdown_with_a_peer_that_stopped_reading_is_bounded(transport: str) -> None:
    net = MemoryNetwork()
    conf = config_for(transport, connection=ConnectionConfig(close_timeout=CLOSE))
    async with anyio.create_task_group() as tg:
        async with make_node(conf, net) as node:
            node.channel(BULK)
            stream, conn = await stalled_peer(node, net)
            await block_writer(tg, conn)
            start = anyio.current_time()
        elapsed = anyio.current_time() - start  # leaving ``async with Node``
        await anyio.aclose_forcefully(stream)
    assert not conn.is_open
    assert elapsed < 1.5  # the old code waited out its 2 s shutdown grace, then cancelled


async def test_peer_manager_close_ends_a_peer_that_stopped_reading(transport: str) -> None:
    """A ban or an eviction calls ``close`` (no one awaits it): the connection still ends."""
    async with stalled(transport, close_timeout=CLOSE) as (node, _stream, conn, _tg):
        conn.close(DisconnectReason.BANNED, "banned")
        assert not conn.is_open
        with anyio.fail_after(CLOSE + SLACK):
            await wait_until(lambda: conn.node_id not in node.connected_peers(), timeout=10)
        assert conn.close_reason is DisconnectReason.BANNED


async def test_operator_ban_ends_a_peer_that_stopped_reading(transport: str) -> None:
    """``overlay ban`` (the admin API's ``ban``, through the node's peer manager) of a peer
    that stopped reading: the connection is gone within the close bound, and stays gone."""
    async with stalled(transport, close_timeout=CLOSE) as (node, _stream, conn, _tg):
        result = await node.control.ban(conn.node_id, duration=60)
        assert result["banned"] == conn.node_id and result["kind"] == "peer"
        with anyio.fail_after(CLOSE + SLACK):
            await wait_until(lambda: conn.node_id not in node.connected_peers(), timeout=10)
        assert not conn.is_open
        assert conn.close_reason is DisconnectReason.BANNED


# ------------------------------------------------------------- virtual time: the bound itself


@pytest.mark.parametrize("anyio_backend", [VIRTUAL])
async def test_close_bound_in_virtual_time() -> None:
    """With the default ``close_timeout`` (1 s): ``Node.disconnect`` of a peer that stopped
    reading returns after 1 s, and the idle timeout ends such a peer ``idle_timeout + 1`` s
    after its last byte."""
    async with stalled("memory") as (node, stream, conn, _tg):
        start = anyio.current_time()
        assert await node.disconnect(conn.node_id)
        assert anyio.current_time() - start == pytest.approx(1.0, abs=0.01)
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
    async with stalled("memory", ping_interval=1.0, idle_timeout=3.0) as (node, _s, conn, _tg):
        last_byte = conn.connected_at  # the stalled peer never sent anything after its hello
        await _poll_for(lambda: conn.node_id not in node.connected_peers(), timeout=50)
        assert conn.close_reason is DisconnectReason.IDLE_TIMEOUT
        assert anyio.current_time() - last_byte == pytest.approx(3.0 + 1.0, abs=0.05)
