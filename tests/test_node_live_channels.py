"""Channels opened and closed on running, connected nodes (loopback TCP and the memory network,
asyncio and trio): peers learn of them from node-info updates, without reconnecting.

Conditions are awaited with ``wait_until`` (no sleeps); every test checks that the connection it
started with is still the one in use.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from overlay.connection._observer import Observer
from overlay.errors import ChannelClosed, ChannelError, ErrorCode, RequestError
from overlay.identity import NodeId
from overlay.node import Node
from overlay.node._discovery import DHT_CHANNEL_ID
from overlay.node._node import PING
from overlay.router._channel import ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork
from overlay.wire._messages import DisconnectReason
from overlay.wire._nodeinfo import NodeInfo, encode_info_update
from proto import overlay_pb2 as pb
from tests.support import (
    Parked,
    both_backends,
    both_transports,
    config_for,
    connected_pair,
    make_node,
    node_pair,
    wait_until,
)

pytestmark = pytest.mark.anyio

anyio_backend = both_backends()
transport = both_transports()

LATE = ChannelSpec(id=0x30, name="late", codec=BytesCodec(), response_codec=BytesCodec())


async def _shout(env: Envelope[bytes]) -> bytes:
    return env.message.upper()


def sees(node: Node, peer: NodeId, channel_id: int) -> bool:
    return channel_id in node.router.peer_channels(peer)


@contextlib.asynccontextmanager
async def three_nodes(
    transport: str, observer: Observer | None = None
) -> AsyncIterator[tuple[Node, Node, Node]]:
    """``a`` dialed ``b``; ``c`` (with ``observer``) running on the same network, not connected."""
    network = MemoryNetwork() if transport == "memory" else None
    async with node_pair(transport, network=network) as (a, b), \
            make_node(config_for(transport), network, observer=observer) as c:
        await a.dial(b.address)
        await wait_until(lambda: a.node_id in b.connected_peers())
        yield a, b, c


def frames_out(node: Node, peer: NodeId) -> int:
    conn = node.router.get_peer(peer)
    assert conn is not None
    return conn.core.statistics().frames_out


def carries(node: Node, peer: NodeId, channel_id: int) -> bool:
    conn = node.router.get_peer(peer)
    return conn is not None and channel_id in conn.core.channel_ids()


def summary(node: Node, peer: NodeId) -> dict[str, Any]:
    [found] = [s.as_dict() for s in node.peer_summaries() if s.conn.node_id == peer]
    return found


async def test_channel_opened_after_connecting_is_usable_both_ways(transport: str) -> None:
    async with connected_pair(transport) as (a, b):
        conn_ab, conn_ba = a.router.get_peer(b.node_id), b.router.get_peer(a.node_id)
        assert LATE.id not in summary(a, b.node_id)["channels"]
        seq = b.info_seq
        lb = b.channel(LATE)
        lb.handle_requests(_shout)
        assert b.info_seq == seq + 1
        await wait_until(lambda: sees(a, b.node_id, LATE.id))
        assert LATE.id in summary(a, b.node_id)["channels"]
        la = a.channel(LATE)
        la.handle_requests(_shout)
        await wait_until(lambda: sees(b, a.node_id, LATE.id))

        assert await la.request(b.node_id, b"a asks", timeout=5) == b"A ASKS"
        assert await lb.request(a.node_id, b"b asks", timeout=5) == b"B ASKS"
        assert (await la.send(b.node_id, b"to b")).ok
        assert (await lb.send(a.node_id, b"to a")).ok
        with anyio.fail_after(5):
            got_b, got_a = await lb.receive(), await la.receive()
        assert (got_b.sender, got_b.message) == (a.node_id, b"to b")
        assert (got_a.sender, got_a.message) == (b.node_id, b"to a")
        assert a.router.get_peer(b.node_id) is conn_ab and b.router.get_peer(a.node_id) is conn_ba


async def test_closing_a_channel_makes_the_peers_requests_fail_fast(transport: str) -> None:
    async with connected_pair(transport, [LATE]) as (a, b):
        la = a.channel(LATE)
        b.channel(LATE).handle_requests(_shout)
        assert await la.request(b.node_id, b"before", timeout=5) == b"BEFORE"
        b.close_channel(LATE)
        await wait_until(lambda: not sees(a, b.node_id, LATE.id))
        assert LATE.id not in summary(a, b.node_id)["channels"]
        sent = frames_out(a, b.node_id)
        with pytest.raises(RequestError) as info:
            await la.request(b.node_id, b"after", timeout=5)
        assert info.value.code is ErrorCode.NO_HANDLER and "does not serve" in info.value.message
        assert frames_out(a, b.node_id) == sent  # failed without a round trip
        conn = a.router.get_peer(b.node_id)

        b.channel(LATE).handle_requests(_shout)  # re-opening works, on the same connection
        await wait_until(lambda: sees(a, b.node_id, LATE.id))
        assert await la.request(b.node_id, b"again", timeout=5) == b"AGAIN"
        assert a.router.get_peer(b.node_id) is conn


async def test_closing_fails_pending_requests_receivers_and_handlers(transport: str) -> None:
    async with connected_pair(transport, [LATE]) as (a, b):
        la, lb = a.channel(LATE), b.channel(LATE)
        parked = Parked()
        lb.handle_requests(parked)
        failures: list[BaseException] = []

        async def ask() -> None:
            try:
                await la.request(b.node_id, b"pending", timeout=30)
            except (ChannelClosed, RequestError) as exc:
                failures.append(exc)

        async def listen() -> None:
            try:
                await la.receive()
            except ChannelClosed as exc:
                failures.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                tg.start_soon(listen)
                await parked.started.wait()
                assert carries(a, b.node_id, LATE.id)
                a.close_channel(LATE)  # our side: the pending request fails locally
            await parked.cancelled.wait()  # the peer was told (CANCEL): its handler stopped
        assert not carries(a, b.node_id, LATE.id)
        assert sorted(type(f).__name__ for f in failures) == ["ChannelClosed", "ChannelClosed"]
        assert "was closed on this node" in str(failures[0])
        with pytest.raises(ChannelError):
            await la.request(b.node_id, b"closed handle", timeout=5)

        # The other side closes while serving our request: we get NO_HANDLER at once.
        la = a.channel(LATE)
        parked = Parked()
        lb.handle_requests(parked)
        await wait_until(lambda: sees(b, a.node_id, LATE.id))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def close_when_serving() -> None:
                    await parked.started.wait()
                    b.close_channel(LATE.id)

                tg.start_soon(close_when_serving)
                with pytest.raises(RequestError) as info:
                    await la.request(b.node_id, b"served", timeout=30)
                assert info.value.code is ErrorCode.NO_HANDLER
            await parked.cancelled.wait()


async def test_async_iteration_ends_when_the_channel_closes(transport: str) -> None:
    async with connected_pair(transport, [LATE]) as (a, b):
        lb = b.channel(LATE)
        got: list[bytes] = []

        async def consume() -> None:
            async for env in lb:
                got.append(env.message)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await a.channel(LATE).send(b.node_id, b"one")
                await wait_until(lambda: got == [b"one"])
                b.close_channel(LATE)
        with pytest.raises(ChannelError, match="ping"):
            b.close_channel(1)
        with pytest.raises(ChannelError):
            b.close_channel(LATE)


BUILT_IN = (PING.id, DHT_CHANNEL_ID)
"""The channels every node opens (the DHT's is on by default)."""


class Recorder(Observer):
    def __init__(self) -> None:
        self.updates: list[tuple[NodeId, tuple[int, ...]]] = []

    def on_peer_info_updated(self, peer: NodeId, info: NodeInfo) -> None:
        self.updates.append((peer, info.channels))


async def test_peer_info_listeners_and_capability_record_updates(transport: str) -> None:
    async with connected_pair(transport) as (a, b):
        heard: list[tuple[NodeId, bytes, tuple[int, ...]]] = []
        unsubscribe = a.subscribe_peer_info(
            lambda peer, info: heard.append((peer, info.capability_record, info.channels)))
        b.update_local_info(capability_record=b"signed record v1")
        await wait_until(lambda: len(heard) == 1)
        assert heard == [(b.node_id, b"signed record v1", BUILT_IN)]
        conn = a.router.get_peer(b.node_id)
        assert conn is not None and conn.info.capability_record == b"signed record v1"
        assert conn.core.peer_info_seq == b.info_seq
        unsubscribe()
        b.channel(LATE)
        await wait_until(lambda: sees(a, b.node_id, LATE.id))
        assert len(heard) == 1
        with pytest.raises(Exception, match="exceeds"):
            b.update_local_info(capability_record=bytes(40_000))
        assert b.local_info().capability_record == b"signed record v1"


async def test_observer_hears_updates_and_every_peer_is_told(transport: str) -> None:
    recorder = Recorder()
    async with three_nodes(transport, recorder) as (a, b, c):
        b.channel(LATE)
        await wait_until(lambda: sees(a, b.node_id, LATE.id))
        await c.dial(b.address)  # b's hello to c already lists it
        assert sees(c, b.node_id, LATE.id)
        b.close_channel(LATE)
        await wait_until(lambda: not sees(c, b.node_id, LATE.id))
        await wait_until(lambda: not sees(a, b.node_id, LATE.id))
        assert recorder.updates == [(b.node_id, BUILT_IN)]


@pytest.mark.parametrize("bad", ["network", "malformed"])
async def test_a_bad_update_closes_only_that_connection(transport: str, bad: str) -> None:
    async with three_nodes(transport) as (a, b, c):
        await c.dial(b.address)
        await wait_until(lambda: c.node_id in b.connected_peers())
        rogue = c.router.get_peer(b.node_id)
        assert rogue is not None
        if bad == "network":
            payload = encode_info_update(7, NodeInfo(network="elsewhere", channels=(1,)))
        else:
            payload = pb.Control(node_info_update=pb.NodeInfoUpdate(
                info_seq=7, node_info=pb.NodeInfo(network=c.config.network, channels=[0]),
            )).SerializeToString()
        rogue.send_info_update(7, payload)
        await wait_until(lambda: c.node_id not in b.connected_peers())
        await wait_until(lambda: not c.connected_peers())
        assert rogue.remote_reason is DisconnectReason.PROTOCOL_VIOLATION
        assert b.connected_peers() == [a.node_id]
        assert await b.channel(PING).request(a.node_id, b"alive?", timeout=5) == b"alive?"



async def test_a_channel_opened_during_the_hello_reaches_the_new_peer(transport: str) -> None:
    """Both hellos are built before the responder's admission runs; the admission hook opens a
    channel on each side, so each hello is stale by the time the connection opens."""
    network = MemoryNetwork() if transport == "memory" else None

    def admit(peer: NodeId, host: str, outbound: bool) -> None:
        a.channel(LATE)
        responder.channel(LATE)

    async with make_node(config_for(transport), network) as a, \
            make_node(config_for(transport), network, admission=admit) as responder:
        await a.dial(responder.address)
        await wait_until(lambda: sees(a, responder.node_id, LATE.id))
        await wait_until(lambda: sees(responder, a.node_id, LATE.id))
        assert a.info_seq == 1 and responder.info_seq == 1
