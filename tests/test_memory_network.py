"""The in-memory network: pipe semantics, backpressure, hosts, faults (partition, latency)."""

from __future__ import annotations

import ipaddress
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import anyio
import pytest
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.address import NodeAddress
from overlay.errors import (
    AuthenticationError,
    ConfigError,
    DialError,
    InvalidAddressError,
    LocalProtocolError,
)
from overlay.testing import (
    LinkConditions,
    MemoryByteStream,
    MemoryNetwork,
    MemoryTransport,
    memory_stream_pair,
)
from overlay.transport import TransportConfig
from overlay.transport._secure import PeerAttribute, SecureStream
from tests.support import both_backends, echo_stream, seeded_identity, settle

anyio_backend = both_backends()


@asynccontextmanager
async def _serving(*transports: MemoryTransport) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for transport in transports:
            await tg.start(transport.serve, echo_stream)
        yield
        tg.cancel_scope.cancel()


# -- the byte pipe ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pair_round_trip_and_copy_semantics() -> None:
    a, b = memory_stream_pair()
    buffer = bytearray(b"mutable")
    await a.send(cast(bytes, buffer))
    buffer[:] = b"changed"  # the pipe keeps its own copy
    assert await b.receive() == b"mutable"
    await b.send(cast(bytes, memoryview(b"back")))
    assert await a.receive() == b"back"
    await a.send(b"")  # empty sends are no-ops
    await a.send(b"x")
    assert await b.receive() == b"x"


@pytest.mark.anyio
async def test_receive_splits_chunks_in_order() -> None:
    a, b = memory_stream_pair()
    await a.send(b"abcdefgh")
    await a.send(b"ij")
    assert await b.receive(3) == b"abc"
    assert await b.receive(3) == b"def"
    assert await b.receive(100) == b"gh"
    assert await b.receive(100) == b"ij"
    with pytest.raises(LocalProtocolError):
        await b.receive(0)


@pytest.mark.anyio
async def test_backpressure_blocks_sender_until_reader_reads() -> None:
    a, b = memory_stream_pair(max_chunks=2)
    sent: list[int] = []

    async def writer() -> None:
        for i in range(5):
            await a.send(bytes([i]))
            sent.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await settle()
        assert sent == [0, 1]  # two chunks buffered, the third send waits
        assert await b.receive() == b"\x00"
        await settle()
        assert sent == [0, 1, 2]
        received = [await b.receive() for _ in range(4)]
    assert received == [b"\x01", b"\x02", b"\x03", b"\x04"]


@pytest.mark.anyio
async def test_byte_cap_admits_one_big_chunk_then_blocks() -> None:
    a, b = memory_stream_pair(max_chunks=100, max_buffered=10)
    await a.send(b"x" * 1000)  # an empty pipe always admits one chunk
    blocked = True

    async def second() -> None:
        nonlocal blocked
        await a.send(b"y")
        blocked = False

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await settle()
        assert blocked
        assert await b.receive(2000) == b"x" * 1000
    assert not blocked
    assert await b.receive() == b"y"


@pytest.mark.anyio
async def test_send_eof_is_a_half_close() -> None:
    a, b = memory_stream_pair()
    await a.send(b"last")
    await a.send_eof()
    with pytest.raises(anyio.ClosedResourceError):
        await a.send(b"more")
    assert await b.receive() == b"last"
    with pytest.raises(anyio.EndOfStream):
        await b.receive()
    await b.send(b"reply")  # the other direction still works
    assert await a.receive() == b"reply"


@pytest.mark.anyio
async def test_aclose_gives_eof_to_reader_and_broken_to_writer() -> None:
    a, b = memory_stream_pair()
    await a.send(b"buffered")
    await a.aclose()
    await a.aclose()  # idempotent
    assert await b.receive() == b"buffered"
    with pytest.raises(anyio.EndOfStream):
        await b.receive()
    with pytest.raises(anyio.BrokenResourceError):
        await b.send(b"to nobody")
    for operation in (a.receive(), a.send(b"x"), a.send_eof()):
        with pytest.raises(anyio.ClosedResourceError):
            await operation


@pytest.mark.anyio
async def test_blocked_operations_wake_on_close() -> None:
    a, b = memory_stream_pair(max_chunks=1)
    c, _d = memory_stream_pair()
    await a.send(b"fill")
    outcomes: list[str] = []

    async def blocked_send() -> None:
        with pytest.raises(anyio.BrokenResourceError):
            await a.send(b"blocked")
        outcomes.append("send woken")

    async def blocked_receive() -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await c.receive()
        outcomes.append("receive woken")

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked_send)
        tg.start_soon(blocked_receive)
        await settle()
        await b.aclose()  # the reader goes away: the blocked writer is broken
        await settle()
        assert outcomes == ["send woken"]
        await c.aclose()  # a local close wakes our own blocked receive
    assert outcomes == ["send woken", "receive woken"]


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=300), max_size=30),
    sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=10),
    max_chunks=st.integers(min_value=1, max_value=4),
)
def test_pipe_preserves_the_byte_sequence(
    chunks: list[bytes], sizes: list[int], max_chunks: int
) -> None:
    async def main() -> None:
        a, b = memory_stream_pair(max_chunks=max_chunks, max_buffered=256)
        received = bytearray()

        async def writer() -> None:
            for chunk in chunks:
                await a.send(chunk)
            await a.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            index = 0
            while True:
                size = sizes[index % len(sizes)]
                index += 1
                try:
                    data = await b.receive(size)
                except anyio.EndOfStream:
                    break
                assert 0 < len(data) <= size
                received.extend(data)
        assert bytes(received) == b"".join(chunks)

    anyio.run(main)


def test_connection_is_cheap_in_memory() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        pairs = [memory_stream_pair() for _ in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(pairs) == 200
    assert grown / 200 < 4096, f"{grown / 200:.0f} bytes per connection"


# -- the network --------------------------------------------------------------------------------


def test_default_hosts_are_unique_private_and_in_distinct_netgroups() -> None:
    network = MemoryNetwork()
    hosts = [network.transport(seeded_identity(1)).host for _ in range(255)]
    assert len(set(hosts)) == 255
    assert all(ipaddress.ip_address(h) in ipaddress.ip_network("10.0.0.0/8") for h in hosts)
    assert len({h.split(".")[1] for h in hosts}) == 255  # distinct /16s
    assert network.transport(seeded_identity(2), host="192.0.2.7").host == "192.0.2.7"


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        MemoryNetwork(max_chunks=0)
    with pytest.raises(ConfigError):
        MemoryNetwork(backlog=0)
    with pytest.raises(ConfigError):
        LinkConditions(latency=-1)
    with pytest.raises(ConfigError):
        LinkConditions(loss=1.5)
    with pytest.raises(ConfigError):
        MemoryNetwork().transport(seeded_identity(1), TransportConfig(handshake_timeout=0))


@pytest.mark.anyio
async def test_remote_hosts_and_addresses() -> None:
    network = MemoryNetwork()
    gate_saw: list[str] = []

    def gate(host: str) -> bool:
        gate_saw.append(host)
        return True

    server = network.transport(seeded_identity(1), host="192.0.2.1", accept_gate=gate)
    clients = [network.transport(seeded_identity(10 + i), host="198.51.100.9") for i in range(2)]
    inbound: list[SecureStream] = []

    async def handler(stream: SecureStream) -> None:
        inbound.append(stream)
        await echo_stream(stream)

    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve, handler)
        assert addresses == [NodeAddress(server.node_id, "memory")] == [server.address]
        for client in clients:
            async with await client.dial(server.address, timeout=5) as stream:
                assert stream.extra(PeerAttribute.remote_host) == "192.0.2.1"
                assert stream.extra(PeerAttribute.remote_address) == f"memory:{server.node_id}"
                await stream.send(b"hi")
                assert await stream.receive() == b"hi"
        tg.cancel_scope.cancel()
    assert gate_saw == ["198.51.100.9", "198.51.100.9"]  # two peers behind one IP
    assert [s.extra(PeerAttribute.remote_host) for s in inbound] == ["198.51.100.9"] * 2
    assert all(
        s.extra(PeerAttribute.remote_address).startswith("memory:198.51.100.9:") for s in inbound
    )
    assert network.statistics().connections == 0


@pytest.mark.anyio
async def test_dial_errors() -> None:
    network = MemoryNetwork()
    server, client = network.transport(seeded_identity(1)), network.transport(seeded_identity(2))
    with pytest.raises(DialError, match="no listener"):
        await client.dial(server.address, timeout=5)
    with pytest.raises(InvalidAddressError):
        await client.dial(NodeAddress(server.node_id, "tcp", "127.0.0.1", 1), timeout=5)
    with pytest.raises(LocalProtocolError):
        await client.dial(server.address, timeout=0)
    async with _serving(server):
        twin = network.transport(seeded_identity(1))  # same node id
        with pytest.raises(LocalProtocolError, match="already listening"):
            await twin.serve(echo_stream)
        with pytest.raises(LocalProtocolError, match="already serving"):
            await server.serve(echo_stream)
        # a redirected id reaches the server, which proves its real id
        wrong = seeded_identity(3).node_id
        network.redirect(wrong, server.node_id)
        with pytest.raises(AuthenticationError):
            await client.dial(NodeAddress(wrong, "memory"), timeout=5)
        network.redirect(wrong, None)
        with pytest.raises(DialError):
            await client.dial(NodeAddress(wrong, "memory"), timeout=5)
    with pytest.raises(DialError):
        await client.dial(server.address, timeout=5)
    assert client.statistics().dial_failures == client.statistics().dials == 4


@pytest.mark.anyio
async def test_backlog_full_refuses_the_dial() -> None:
    network = MemoryNetwork(backlog=1)
    server, client = network.transport(seeded_identity(1)), network.transport(seeded_identity(2))
    listener = await server.listen_raw()  # bound but nobody accepting
    first = await client.connect_raw(server.address)
    with pytest.raises(DialError, match="backlog"):
        await client.connect_raw(server.address)
    assert (await listener.accept()).remote_host == client.host
    await listener.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await listener.accept()
    await first.stream.aclose()


@pytest.mark.anyio
async def test_listener_close_resets_queued_connections() -> None:
    network = MemoryNetwork()
    server, client = network.transport(seeded_identity(1)), network.transport(seeded_identity(2))
    listener = await server.listen_raw()
    raw = await client.connect_raw(server.address)
    await listener.aclose()
    with pytest.raises(anyio.EndOfStream):
        await raw.stream.receive()
    assert network.statistics().listeners == 0


@pytest.mark.anyio
async def test_partition_breaks_and_refuses_then_heal() -> None:
    network = MemoryNetwork()
    a, b, c = (network.transport(seeded_identity(i)) for i in (1, 2, 3))
    async with _serving(a, b, c):
        ab = await a.dial(b.address, timeout=5)
        ac = await a.dial(c.address, timeout=5)
        assert network.statistics().connections == 2
        network.partition([a.node_id, c.node_id], [b.node_id])
        assert not network.reachable(a.node_id, b.node_id)
        assert network.reachable(a.node_id, c.node_id)
        with pytest.raises(anyio.BrokenResourceError):
            await ab.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await ab.send(b"x")
        await ac.send(b"same side")
        assert await ac.receive() == b"same side"
        with pytest.raises(DialError, match="partition"):
            await b.dial(a.address, timeout=5)
        network.heal()
        async with await b.dial(a.address, timeout=5) as ba:
            await ba.send(b"healed")
            assert await ba.receive() == b"healed"
        await ab.aclose()
        await ac.aclose()
        assert network.statistics().broken == 1
    with pytest.raises(LocalProtocolError):
        network.partition([a.node_id], [a.node_id, b.node_id])


@pytest.mark.anyio
async def test_unlisted_nodes_share_one_group() -> None:
    network = MemoryNetwork()
    ids = [seeded_identity(i).node_id for i in range(4)]
    network.partition([ids[0]])
    assert network.reachable(ids[1], ids[2])
    assert not network.reachable(ids[0], ids[3])


@pytest.mark.anyio
async def test_disconnect_breaks_only_that_pair() -> None:
    network = MemoryNetwork()
    a, b, c = (network.transport(seeded_identity(i)) for i in (1, 2, 3))
    async with _serving(a, b, c):
        ab = await a.dial(b.address, timeout=5)
        ba = await b.dial(a.address, timeout=5)
        ac = await a.dial(c.address, timeout=5)
        assert network.disconnect(b.node_id, a.node_id) == 2
        for stream in (ab, ba):
            with pytest.raises(anyio.BrokenResourceError):
                await stream.receive()
            await stream.aclose()
        async with ac:
            await ac.send(b"fine")
            assert await ac.receive() == b"fine"
        async with await a.dial(b.address, timeout=5) as again:  # not a partition
            await again.send(b"ok")
            assert await again.receive() == b"ok"


@pytest.mark.anyio
async def test_hundred_node_ring() -> None:
    network = MemoryNetwork()
    nodes = [network.transport(seeded_identity(i)) for i in range(100)]
    async with _serving(*nodes):
        streams = []
        for i, node in enumerate(nodes):
            streams.append(await node.dial(nodes[(i + 1) % 100].address, timeout=5))
        for stream in streams:
            await stream.send(b"ping")
        for stream in streams:
            assert await stream.receive() == b"ping"
        assert network.statistics().connections == 100
        for stream in streams:
            await stream.aclose()
    assert network.statistics().connections == 0
    assert sum(node.statistics().accepted for node in nodes) == 100


# -- link conditions (virtual time: trio's MockClock) -------------------------------------------


@pytest.mark.parametrize(
    "anyio_backend", [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]
)
@pytest.mark.anyio
async def test_latency_and_loss_delay_but_keep_order() -> None:
    network = MemoryNetwork()
    a, b = network.transport(seeded_identity(1)), network.transport(seeded_identity(2))
    network.set_link(a.node_id, b.node_id, LinkConditions(latency=0.1))
    assert network.link_conditions(b.node_id, a.node_id).latency == 0.1
    listener = await b.listen_raw()
    start = anyio.current_time()
    raw_a = await a.connect_raw(b.address)
    assert anyio.current_time() - start == pytest.approx(0.2)  # one round trip
    raw_b = (await listener.accept()).stream
    assert isinstance(raw_b, MemoryByteStream)

    start = anyio.current_time()
    await raw_a.stream.send(b"one")
    await raw_a.stream.send(b"two")
    assert await raw_b.receive() == b"one"
    assert anyio.current_time() - start == pytest.approx(0.1)
    assert await raw_b.receive() == b"two"

    # every chunk "lost" once: delivered retransmit_delay later, still in order
    network.set_link(a.node_id, b.node_id, LinkConditions(latency=0.1, loss=1.0))
    start = anyio.current_time()
    await raw_a.stream.send(b"three")
    network.set_link(a.node_id, b.node_id, None)  # back to perfect: must not overtake
    await raw_a.stream.send(b"four")
    assert await raw_b.receive() == b"three"
    assert anyio.current_time() - start == pytest.approx(0.3)
    assert await raw_b.receive() == b"four"

    # a break wakes a reader waiting for a delayed chunk
    network.set_link(a.node_id, b.node_id, LinkConditions(latency=10))
    await raw_a.stream.send(b"slow")
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:

        async def disconnect_soon() -> None:
            await anyio.sleep(1)
            network.disconnect(a.node_id, b.node_id)

        tg.start_soon(disconnect_soon)
        with pytest.raises(anyio.BrokenResourceError):
            await raw_b.receive()
    assert anyio.current_time() - start == pytest.approx(1)
    await raw_a.stream.aclose()
    await raw_b.aclose()
    await listener.aclose()
