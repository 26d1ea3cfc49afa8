"""Every message queued is delivered, under the mix of work that drives the data path through
all its branches at once, on every loop (asyncio and uvloop: the fast paths; trio: the tasks).

Four nodes in a full mesh over loopback TCP with small kernel socket buffers (so writes pause
the transport), a slow reader behind a small inbox (so the synchronous read path holds
messages and the reader task takes over), and every node sending from tasks (single sends,
bursts of ``send_nowait`` without yielding, broadcasts, large messages, requests) and from a
plain request handler on the read path (a send on its own connection, a broadcast, a raise).
Each delivery report says who got a message queued; the receivers' counts must match them
exactly, and every request must be answered. The workload is a fixed number of operations
(seeded), not a duration.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections import Counter

import anyio
import pytest
from anyio.abc import SocketAttribute

from overlay.errors import ErrorCode, RequestError, WouldBlock
from overlay.identity import NodeId
from overlay.node import Node
from overlay.peers._config import PeerManagerConfig
from overlay.router._channel import Channel, ChannelSpec, DeliveryReport, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._destination import BROADCAST
from tests.support import config_for, every_loop, wait_until

pytestmark = pytest.mark.anyio

anyio_backend = every_loop()

MSG = ChannelSpec(id=0x51, name="msg", codec=BytesCodec(), response_codec=BytesCodec(),
                  recv_queue_size=4, max_message_size=100_000)
REQ = ChannelSpec(id=0x52, name="req", codec=BytesCodec(), response_codec=BytesCodec(),
                  max_concurrent_requests=64)

NODES = 4
OPERATIONS = 25  # per sender task; two sender tasks per node
SMALL_BUFFER = 4096


async def test_every_queued_message_arrives_under_mixed_load() -> None:
    expected: Counter[tuple[NodeId, NodeId]] = Counter()
    received: Counter[tuple[NodeId, NodeId]] = Counter()
    outcomes: Counter[str] = Counter()

    def note(sender: NodeId, report: DeliveryReport) -> None:
        for target in report.delivered:
            expected[(sender, target)] += 1

    limits = PeerManagerConfig(exempt_networks=("127.0.0.0/8", "::1/128"))
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = [await stack.enter_async_context(Node(config_for("tcp", peers=limits)))
                             for _ in range(NODES)]
        ids = [node.node_id for node in nodes]
        for i, node in enumerate(nodes):
            msg = node.channel(MSG)
            rng = random.Random(1000 + i)

            def handler(env: Envelope[bytes], me: NodeId = node.node_id,
                        msg: Channel[bytes, bytes] = msg,
                        rng: random.Random = rng) -> bytes:
                x = rng.random()
                try:
                    if x < 0.3:  # on its own connection, from the read path
                        note(me, msg.send_nowait(env.sender, b"h" * rng.randrange(1, 300)))
                    elif x < 0.45:  # a broadcast from the read path
                        note(me, msg.send_nowait(BROADCAST, b"b" * rng.randrange(1, 300)))
                    elif x < 0.5:
                        raise RequestError(ErrorCode.UNAVAILABLE, "refused on purpose")
                except WouldBlock:
                    outcomes["handler would block"] += 1
                return env.message[: rng.randrange(1, 2000)]

            node.channel(REQ).handle_requests(handler)
        for i in range(NODES):
            for j in range(i + 1, NODES):
                assert await nodes[i].dial(nodes[j].address) == ids[j]
        await wait_until(lambda: all(len(n.connected_peers()) == NODES - 1 for n in nodes))
        for node in nodes:
            for peer in node.connected_peers():
                conn = node.router.get_peer(peer)
                assert conn is not None
                sock = conn.extra(SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)

        async def drain(i: int) -> None:
            slow = i == 0
            channel = nodes[i].channel(MSG)
            while True:
                env = await channel.receive()
                received[(env.sender, ids[i])] += 1
                if slow:  # behind its small inbox: the read path holds, the task takes over
                    for _ in range(3):
                        await anyio.lowlevel.checkpoint()

        async def sender(i: int, k: int) -> None:
            rng = random.Random(10 * i + k)
            me = ids[i]
            msg, req = nodes[i].channel(MSG), nodes[i].channel(REQ)
            others = [ids[j] for j in range(NODES) if j != i]
            for _ in range(OPERATIONS):
                x = rng.random()
                peer = rng.choice(others)
                if x < 0.25:
                    note(me, await msg.send(peer, b"s" * rng.randrange(1, 1500)))
                elif x < 0.4:  # a burst without yielding: direct writes, then deferred ones
                    for _ in range(20):
                        try:
                            note(me, msg.send_nowait(rng.choice(others), b"u" * 64))
                        except WouldBlock:
                            outcomes["burst would block"] += 1
                    await anyio.lowlevel.checkpoint()
                elif x < 0.55:
                    note(me, await msg.send(BROADCAST, b"B" * rng.randrange(1, 3000)))
                elif x < 0.65:  # many times the socket buffers: the transport pauses
                    note(me, await msg.send(peer, b"L" * rng.randrange(20_000, 40_000)))
                else:
                    try:
                        await req.request(peer, b"q" * rng.randrange(1, 5000), timeout=30)
                        outcomes["answered"] += 1
                    except RequestError:
                        outcomes["refused"] += 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(NODES):
                    tg.start_soon(drain, i)
                async with anyio.create_task_group() as senders:
                    for i in range(NODES):
                        for k in range(2):
                            senders.start_soon(sender, i, k)
                await wait_until(lambda: received == expected, timeout=20)
                tg.cancel_scope.cancel()
        assert all(len(n.connected_peers()) == NODES - 1 for n in nodes)  # nothing replaced
    assert received == expected
    assert sum(expected.values()) > 500
    assert outcomes["answered"] > 0 and outcomes["refused"] > 0
