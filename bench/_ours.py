"""Our side of each case: overlay Nodes in this process, over loopback TCP (Noise) or LOCAL.

Every case opens its channels before dialling (a connection's channel set is fixed when it is
established), uses ``BytesCodec`` and the public API only: ``Channel.request``, ``Channel.send``,
``Channel.receive``, ``Node.dial``/``Node.disconnect``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from bench._common import Counter, Rate, measure_rate
from overlay.identity import NodeId
from overlay.node import Node
from overlay.node._config import AdminConfig, NodeConfig
from overlay.peers._config import PeerManagerConfig
from overlay.router._channel import Channel, ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._destination import LOCAL

__all__ = [
    "BULK",
    "ECHO",
    "ECHO_PIPELINED",
    "FANOUT",
    "LOCAL_SPEC",
    "TCP_CONFIG",
    "node_pair",
    "overlay_bulk",
    "overlay_dial_times",
    "overlay_fanout_costs",
    "overlay_local_rate",
    "overlay_pipelined",
    "overlay_round_trips",
    "many_peers_config",
]

TCP_CONFIG = NodeConfig(network="overlay-bench", listen=("tcp://127.0.0.1:0",),
                        admin=AdminConfig(enabled=False))
"""Loopback TCP on a free port; everything else at its default."""


def many_peers_config(peers: int) -> NodeConfig:
    """Loopback TCP, the peer manager's limits raised for ``peers`` connections (loopback exempt
    from the per-IP and diversity limits, as on a local testnet)."""
    limits = PeerManagerConfig(max_connections=2 * peers + 8, max_outbound=peers,
                               max_inbound_per_ip=peers, max_inbound_per_netgroup=peers,
                               max_outbound_per_netgroup=peers,
                               exempt_networks=("127.0.0.0/8", "::1/128"))
    return NodeConfig(network="overlay-bench", listen=("tcp://127.0.0.1:0",),
                      admin=AdminConfig(enabled=False), peers=limits)

ECHO = ChannelSpec(id=0x40, name="bench-echo", codec=BytesCodec(), response_codec=BytesCodec())
"""Round trips: the channel defaults."""

ECHO_PIPELINED = ChannelSpec(id=0x41, name="bench-pipelined", codec=BytesCodec(),
                             response_codec=BytesCodec(), send_queue_size=256,
                             max_concurrent_requests=256)
"""256 requests in flight: queues and the responder's concurrency sized for them."""

BULK = ChannelSpec(id=0x42, name="bench-bulk", codec=BytesCodec(), response_codec=BytesCodec(),
                   max_message_size=2 * 1024 * 1024)
"""1 MiB fire-and-forget messages (default queue sizes)."""

LOCAL_SPEC = ChannelSpec(id=0x43, name="bench-local", codec=BytesCodec(),
                         response_codec=BytesCodec())
"""LOCAL delivery (default ``recv_queue_size``: 64)."""


def _echo(env: Envelope[bytes]) -> bytes:
    """A plain function: served on the connection's read path (cannot block, like the
    baseline's echo)."""
    return env.message


@contextlib.asynccontextmanager
async def node_pair(
    spec: ChannelSpec[bytes, bytes],
) -> AsyncIterator[tuple[Channel[bytes, bytes], Channel[bytes, bytes], NodeId]]:
    """Two connected nodes with ``spec`` open on both and an echo handler on the second;
    yields (the first node's channel, the second node's channel, the second node's id)."""
    async with Node(TCP_CONFIG) as a, Node(TCP_CONFIG) as b:
        ca = a.channel(spec)
        cb = b.channel(spec)
        cb.handle_requests(_echo)
        await a.dial(b.address)
        yield ca, cb, b.node_id


async def overlay_round_trips(payload: bytes, warmup: float, duration: float) -> Rate:
    """Requests/s: one caller awaiting each 64-byte echo request in turn."""
    async with node_pair(ECHO) as (ca, _cb, peer):

        async def client(counter: Counter) -> None:
            while True:
                await ca.request(peer, payload)
                counter.n += 1

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            tg.start_soon(client, counter)

        return await measure_rate(start, warmup, duration)


async def overlay_pipelined(payload: bytes, in_flight: int, warmup: float,
                            duration: float) -> Rate:
    """Requests/s with ``in_flight`` tasks each looping echo requests on one connection."""
    async with node_pair(ECHO_PIPELINED) as (ca, _cb, peer):

        async def client(counter: Counter) -> None:
            while True:
                await ca.request(peer, payload)
                counter.n += 1

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            for _ in range(in_flight):
                tg.start_soon(client, counter)

        return await measure_rate(start, warmup, duration)


async def overlay_bulk(chunk: bytes, warmup: float, duration: float) -> Rate:
    """Bytes/s received: fire-and-forget ``send`` of ``chunk`` after ``chunk``, receiver drains."""
    async with node_pair(BULK) as (ca, cb, peer):

        async def sender() -> None:
            while True:
                await ca.send(peer, chunk)

        async def receiver(counter: Counter) -> None:
            while True:
                env = await cb.receive()
                counter.n += len(env.message)

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            tg.start_soon(receiver, counter)
            tg.start_soon(sender)

        return await measure_rate(start, warmup, duration)


async def overlay_dial_times(count: int, warm: int,
                             cpu: list[float] | None = None) -> list[float]:
    """Seconds of ``count`` ``dial()`` calls (TCP connect + Noise + NodeInfo exchange), each
    followed (untimed) by ``disconnect()`` and a wait until the listener dropped the peer.
    ``cpu`` gets the process CPU seconds of each (both ends: steadier on a loaded machine)."""
    times: list[float] = []
    async with Node(TCP_CONFIG) as a, Node(TCP_CONFIG) as b:
        a.channel(ECHO)
        b.channel(ECHO)
        address = b.address
        for i in range(count + warm):
            cpu_started = time.process_time()
            started = time.perf_counter()
            await a.dial(address)
            elapsed = time.perf_counter() - started
            cpu_elapsed = time.process_time() - cpu_started
            await a.disconnect(b.node_id)
            with anyio.fail_after(5):  # untimed: the listener must drop us before a re-dial
                while a.node_id in b.connected_peers():
                    await anyio.sleep(0.0002)
            if i >= warm:
                times.append(elapsed)
                if cpu is not None:
                    cpu.append(cpu_elapsed)
    return times


async def overlay_local_rate(item: Any, warmup: float, duration: float) -> Rate:
    """Messages/s of ``send(LOCAL, item)`` + ``receive()`` (one producer, one consumer)."""
    async with Node(TCP_CONFIG) as node:
        ch = node.channel(LOCAL_SPEC)

        async def produce() -> None:
            while True:
                await ch.send(LOCAL, item)

        async def consume(counter: Counter) -> None:
            while True:
                await ch.receive()
                counter.n += 1

        def start(tg: anyio.abc.TaskGroup, counter: Counter) -> None:
            tg.start_soon(produce)
            tg.start_soon(consume, counter)

        return await measure_rate(start, warmup, duration)


FANOUT = ChannelSpec(id=0x44, name="bench-fanout", codec=BytesCodec(),
                     response_codec=BytesCodec())
"""Broadcast vs single sends (default queue sizes: every timed burst fits in them)."""


async def overlay_fanout_costs(payload: bytes, peers: int, rounds: int
                               ) -> tuple[list[float], list[float]]:
    """Sender-side CPU seconds per delivery (``time.process_time``: the machine's load does not
    inflate it): ``peers`` single ``send(peer, payload)`` calls vs one
    ``send(BROADCAST, payload)`` reaching the same ``peers``, alternated ``rounds`` times.

    One hub dials ``peers`` nodes over loopback TCP; every spoke drains its channel. Only the
    ``send`` calls and their writes are timed: each burst ends with one checkpoint, whose step
    runs a deferred flush if there is one (neither kind of send yields while the queues have
    room, and the spokes' reads come after that step), so the encryption and the socket writes
    count whether the callers or the deferred flush do them; between bursts, untimed, every
    task runs until the writers, the sockets and the spokes are idle again. The cost of
    reading the CPU clock itself (the median of empty readings) is subtracted from each
    burst."""
    from overlay.router._destination import BROADCAST

    singles: list[float] = []
    broadcasts: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        config = many_peers_config(peers)
        hub = await stack.enter_async_context(Node(config))
        hub_ch = hub.channel(FANOUT)
        spokes = [await stack.enter_async_context(Node(config)) for _ in range(peers)]
        tg = await stack.enter_async_context(anyio.create_task_group())
        received = Counter()

        async def drain(ch: Channel[bytes, bytes]) -> None:
            while True:
                await ch.receive()
                received.n += 1

        for spoke in spokes:
            tg.start_soon(drain, spoke.channel(FANOUT))
        for spoke in spokes:
            await hub.dial(spoke.address)
        ids = [spoke.node_id for spoke in spokes]

        async def settle(expected: int) -> None:
            with anyio.fail_after(10):
                while received.n < expected:
                    await anyio.sleep(0.0005)

        # Reading the process CPU clock is a system call (~25 us on this VM, not a vDSO read):
        # the median cost of one empty reading interval is subtracted from every burst.
        empty = []
        for _ in range(51):
            started = time.process_time()
            empty.append(time.process_time() - started)
        overhead = sorted(empty)[len(empty) // 2]
        for _ in range(3):  # warm-up
            await hub_ch.send(BROADCAST, payload)
            for peer in ids:
                await hub_ch.send(peer, payload)
        await settle(6 * peers)
        for _ in range(rounds):
            # The count to wait for is taken before the burst: on asyncio the spokes may read
            # and count some deliveries within the burst's checkpoint (the callers write at
            # once and small reads are handled in the transport's callback).
            expected = received.n + peers
            started = time.process_time()
            for peer in ids:
                await hub_ch.send(peer, payload)
            await anyio.lowlevel.checkpoint()  # the writes, deferred or not, are in the burst
            singles.append(max(0.0, time.process_time() - started - overhead) / peers)
            await settle(expected)
            expected = received.n + peers
            started = time.process_time()
            report = await hub_ch.send(BROADCAST, payload)
            await anyio.lowlevel.checkpoint()
            broadcasts.append(max(0.0, time.process_time() - started - overhead) / peers)
            assert len(report.delivered) == peers, report
            await settle(expected)
        assert received.n == 6 * peers + 2 * rounds * peers  # every delivery, none twice
        tg.cancel_scope.cancel()
    return singles, broadcasts
