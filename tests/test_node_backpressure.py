"""Backpressure end to end: bounded queues everywhere, a stalled peer never blocks the others.

The stalled peer is a real node whose reactor never drains its channel: its inbox fills, its
connection's reader parks on the full inbox and stops reading, the transport's buffers fill (the
memory pipe window, or the kernel's socket buffers on loopback TCP), the sender's writer blocks,
and finally the sender's bounded per-peer channel queue is full. Every step is observable.
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from overlay.connection._driver import PeerConnection
from overlay.connection._outcome import AttemptOutcome
from overlay.errors import (
    MessageTooLarge,
    NoRoute,
    NoRouteReason,
    PeerNotConnected,
    SendTimeout,
    WouldBlock,
)
from overlay.node import Node
from overlay.node._config import DhtSettings
from overlay.peers import PeerManagerConfig
from overlay.router._channel import Channel, ChannelSpec, DeliveryReport
from overlay.router._codec import BytesCodec
from overlay.router._destination import BROADCAST
from overlay.testing import MemoryNetwork
from tests.support import (
    both_backends,
    both_transports,
    config_for,
    make_node,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

SHORT = 0.2
"""The per-send timeout of the tests whose subject is a send timeout."""
BROADCAST_TIMEOUT = 0.5
"""Per-peer timeout of the broadcast tests (measured on virtual time, where two sequential
timeouts, 1 s, and two parallel ones, 0.5 s, are told apart exactly)."""

BULK = ChannelSpec(
    id=9,
    name="bulk",
    codec=BytesCodec(),
    response_codec=BytesCodec(),
    send_queue_size=4,
    recv_queue_size=2,
    send_timeout=5.0,
)
CHUNK = b"\x5a" * 65_536

anyio_backend = both_backends()
transport = both_transports()


@dataclass(slots=True)
class Star:
    """``hub`` connected to every node of ``spokes``; ``chans[i]`` is node i's channel."""

    hub: Node
    spokes: list[Node]
    hub_chan: Channel[bytes, bytes]
    chans: list[Channel[bytes, bytes]]

    def conn(self, peer: Node) -> PeerConnection:
        conn = self.hub.router.get_peer(peer.node_id)
        assert conn is not None
        return conn


TOLERANT = PeerManagerConfig(min_score=-1e9, ban_score=-1e9, disconnect_score=-1e8)
"""The hub's peer manager never drops a slow spoke: these tests measure backpressure, not the
peer manager's scoring (a stalled peer is reported slow on every timed-out send)."""


@asynccontextmanager
async def star(transport: str, spokes: int, spec: ChannelSpec[bytes, bytes] = BULK
               ) -> AsyncIterator[Star]:
    net = MemoryNetwork()
    # No DHT: these tests measure the send path, without background lookups on the side.
    config = config_for(transport, peers=TOLERANT)
    config = dataclasses.replace(config, discovery=dataclasses.replace(
        config.discovery, dht=DhtSettings(enabled=False)))
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(make_node(config, net))
        nodes = [await stack.enter_async_context(make_node(config, net))
                 for _ in range(spokes)]
        hub_chan = hub.channel(spec)
        chans = [node.channel(spec) for node in nodes]
        for node in nodes:
            await hub.dial(node.address)
        await wait_until(lambda: all(n.connected_peers() == [hub.node_id] for n in nodes))
        yield Star(hub, nodes, hub_chan, chans)


def _queue_depth(conn: PeerConnection, channel_id: int = BULK.id) -> int:
    return conn.core.statistics().channel(channel_id).queue_depth


async def stall(sender: Channel[bytes, bytes], conn: PeerConnection, limit: int = 4096) -> int:
    """Fill everything between ``sender`` and the (never reading) peer of ``conn``.

    Returns how many messages were queued. Ends when a send could not get queue space for a
    while and the queue is still full after every task has run (the writer is blocked on a full
    transport). Cancelled sends are not counted as slow-peer events.
    """
    sent = 0
    while sent < limit:
        with anyio.move_on_after(0.05):
            await sender.send(conn.node_id, CHUNK)
            sent += 1
            continue
        await anyio.wait_all_tasks_blocked()
        try:
            sender.send_nowait(conn.node_id, CHUNK)
            sent += 1
        except WouldBlock:
            if _queue_depth(conn) == sender.spec.send_queue_size:
                return sent
    raise AssertionError(f"the peer still accepted data after {limit} messages")


async def test_send_nowait_would_block_and_queue_depths_are_observable(transport: str) -> None:
    async with star(transport, 1) as s:
        slow = s.spokes[0]
        conn = s.conn(slow)
        assert _queue_depth(conn) == 0
        sent = await stall(s.hub_chan, conn)
        assert sent > BULK.send_queue_size + BULK.recv_queue_size
        # the sender's side: its bounded per-peer queue is full, nothing more gets in
        assert _queue_depth(conn) == BULK.send_queue_size
        with pytest.raises(WouldBlock):
            s.hub_chan.send_nowait(slow.node_id, CHUNK)
        assert _queue_depth(conn) == BULK.send_queue_size
        # the receiver's side: its inbox is full and nobody drains it
        stats = s.chans[0].statistics()
        assert stats.inbox_depth == stats.inbox_capacity == BULK.recv_queue_size
        # a single destination times out with SendTimeout; a fan-out one reports would_block
        with pytest.raises(SendTimeout):
            await s.hub_chan.send(slow.node_id, CHUNK, timeout=SHORT)
        report = s.hub_chan.send_nowait(BROADCAST, CHUNK)
        assert report.failed == {slow.node_id: AttemptOutcome.WOULD_BLOCK}
        assert s.hub_chan.statistics().slow_peer_events == 1
        # draining the receiver lets everything flow again (the stall was clean)
        received = 0
        with anyio.fail_after(10):
            while received < sent:
                env = await s.chans[0].receive()
                assert env.message == CHUNK and env.sender == s.hub.node_id
                received += 1
            await s.hub_chan.send(slow.node_id, b"after", timeout=5)
            assert (await s.chans[0].receive()).message == b"after"


async def _broadcast_past_two_stalled_peers(transport: str) -> float:
    """Two stalled peers (first in the broadcast's iteration order) and two healthy ones: the
    healthy ones get the message while the broadcast is still waiting, the stalled ones time
    out and are reported. Returns the broadcast's duration."""
    async with star(transport, 4) as s:
        stalled, healthy = s.spokes[:2], s.spokes[2:]
        assert s.hub.connected_peers()[:2] == [n.node_id for n in stalled]
        for node in stalled:
            await stall(s.hub_chan, s.conn(node))
        finished = anyio.Event()
        reports: list[DeliveryReport] = []

        async def broadcast() -> None:
            reports.append(await s.hub_chan.send(BROADCAST, b"news", timeout=BROADCAST_TIMEOUT))
            finished.set()

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(broadcast)
            with anyio.fail_after(5):
                for chan in s.chans[2:]:
                    env = await chan.receive()
                    assert env.message == b"news" and env.sender == s.hub.node_id
            assert not finished.is_set()  # delivered while the stalled peers were still waited on
        elapsed = anyio.current_time() - started
        (report,) = reports
        assert set(report.delivered) == {n.node_id for n in healthy}
        assert report.failed == {n.node_id: AttemptOutcome.TIMEOUT for n in stalled}
        assert not report.ok
        assert s.hub_chan.statistics().slow_peer_events == 2
        assert all(s.conn(n).is_open for n in stalled)  # slow is not dead: connections stay up
    return elapsed


async def test_broadcast_is_not_delayed_by_stalled_peers(transport: str) -> None:
    await _broadcast_past_two_stalled_peers(transport)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_stalled_peers_time_out_in_parallel() -> None:
    """One timeout in total, not one each (virtual time: the duration is exact, so this runs
    on trio's mock clock and the memory network only)."""
    elapsed = await _broadcast_past_two_stalled_peers("memory")
    assert elapsed == pytest.approx(BROADCAST_TIMEOUT)


async def test_broadcast_to_healthy_peers_only_waits_for_nobody(transport: str) -> None:
    async with star(transport, 3) as s:
        report = await s.hub_chan.send(BROADCAST, b"all", timeout=SHORT)
        assert set(report.delivered) == {n.node_id for n in s.spokes} and report.ok
        with anyio.fail_after(5):
            for chan in s.chans:
                assert (await chan.receive()).message == b"all"


async def test_memory_stays_flat_while_sending_to_a_stalled_peer() -> None:
    """Each attempt times out with SendTimeout and leaves nothing behind: the growth after
    many more attempts is bounded by a small constant, not proportional to their number."""
    async with star("memory", 1) as s:
        slow = s.spokes[0]
        conn = s.conn(slow)
        await stall(s.hub_chan, conn)
        payload = b"\x01" * 4096

        async def attempts(n: int) -> None:
            for _ in range(n):
                with pytest.raises(SendTimeout):
                    await s.hub_chan.send(slow.node_id, payload, timeout=0.002)
                with pytest.raises(WouldBlock):
                    s.hub_chan.send_nowait(slow.node_id, payload)

        tracemalloc.start()
        try:
            await attempts(20)  # warm-up: caches, lazily created objects
            gc.collect()
            baseline = tracemalloc.get_traced_memory()[0]
            await attempts(200)
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        # 200 attempts of 4 KiB each: keeping even one payload or ~150 bytes per attempt
        # would exceed this bound (it is ~300 bytes in practice)
        assert growth < 16 * 1024, f"memory grew by {growth} bytes over 200 attempts"
        assert _queue_depth(conn) == BULK.send_queue_size
        assert conn.is_open
        assert s.hub_chan.statistics().slow_peer_events == 220


async def test_message_too_large_is_refused_locally(transport: str) -> None:
    small = ChannelSpec(id=9, name="bulk", codec=BytesCodec(), response_codec=BytesCodec(),
                        max_message_size=100)
    async with star(transport, 1, small) as s:
        peer = s.spokes[0].node_id
        conn = s.conn(s.spokes[0])
        for call in (
            lambda: s.hub_chan.send(peer, b"x" * 101),
            lambda: s.hub_chan.send(BROADCAST, b"x" * 101),
            lambda: s.hub_chan.request(peer, b"x" * 101, timeout=5),
        ):
            with pytest.raises(MessageTooLarge):
                await call()
        with pytest.raises(MessageTooLarge):
            s.hub_chan.send_nowait(peer, b"x" * 101)
        assert _queue_depth(conn, small.id) == 0
        assert conn.core.statistics().channel(small.id).messages_sent == 0
        await s.hub_chan.send(peer, b"x" * 100)  # exactly the limit is fine
        with anyio.fail_after(5):
            assert (await s.chans[0].receive()).message == b"x" * 100
        with pytest.raises(WouldBlock):
            s.chans[0].receive_nowait()


async def test_send_to_unconnected_peer(transport: str) -> None:
    async with star(transport, 1) as s:
        gone = s.spokes[0]
        assert await s.hub.disconnect(gone.node_id)
        with pytest.raises(PeerNotConnected):
            await s.hub_chan.send(gone.node_id, b"x")
        with pytest.raises(NoRoute) as info:  # nobody to broadcast to: never a silent ok
            await s.hub_chan.send(BROADCAST, b"x")
        assert info.value.reason is NoRouteReason.NO_PEERS_CONNECTED
        await wait_until(lambda: gone.connected_peers() == [])

