"""A flood of 1,000 inbound TCP connections from one IP against a running node (peer manager,
store, admin API): refused cheaply (at accept, before any cryptography), with bounded state and
memory, and the node keeps serving real peers afterwards."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import anyio
import anyio.abc
import pytest

import overlay
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.node._config import AdminConfig, ConnectionConfig, NodeConfig
from overlay.node._service import run_node
from overlay.router._channel import ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.transport import TransportStatistics
from tests.support import in_directory, wait_until

pytestmark = pytest.mark.anyio

FLOOD = 1000
PENDING = 16
ECHO = ChannelSpec(id=0x30, name="echo", codec=BytesCodec(), response_codec=BytesCodec())


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message


def _refused(stats: TransportStatistics) -> int:
    """Connections closed at accept: by the gate or a pending-handshake limit."""
    return (stats.rejected_by_gate + stats.rejected_per_ip + stats.rejected_per_netgroup
            + stats.rejected_overload)


async def test_thousand_connection_flood_from_one_ip(tmp_path: Path) -> None:
    config = NodeConfig(
        network="flood",
        listen=("tcp://127.0.0.1:0",),
        connection=ConnectionConfig(max_pending_handshakes=PENDING, handshake_timeout=30.0),
        admin=AdminConfig(enabled=False),
    )
    NodeKey.generate().save(tmp_path / "home" / config.node_key_file)  # what `init` writes
    async with anyio.create_task_group() as tg:
        control: Node = await tg.start(run_node, config, tmp_path / "home")
        node = control
        node.channel(ECHO).handle_requests(_echo)
        (transport,) = node.transports
        address = node.address
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            streams: list[anyio.abc.SocketStream] = []
            try:
                for _ in range(FLOOD):  # connect and say nothing: the cheapest attack
                    streams.append(await anyio.connect_tcp(address.host, address.port))
                stats = await transport.wait_statistics(
                    lambda s: _refused(s) + s.pending_handshakes >= FLOOD
                )
                gc.collect()
                held = tracemalloc.take_snapshot()
            finally:
                for stream in streams:
                    await stream.aclose()
        finally:
            tracemalloc.stop()
        # At most PENDING handshakes were ever in progress; every other connection was closed
        # at accept (counted), so the node's state did not grow with the flood.
        assert stats.pending_handshakes <= PENDING
        assert _refused(stats) >= FLOOD - PENDING
        assert node.connected_peers() == []
        # Memory allocated by overlay's own code and still held during the flood: the bounded
        # pending handshakes only (the test's 1,000 client sockets live in this process too,
        # so only allocations made in the overlay package's own files count).
        package = Path(overlay.__file__).parent
        grown = sum(
            stat.size_diff
            for stat in held.compare_to(before, "filename")
            if in_directory(stat.traceback[0].filename, package)
        )
        assert grown < 256 * 1024, grown
        await transport.wait_statistics(lambda s: s.pending_handshakes == 0)

        # A real peer from the same IP is served afterwards.
        async with Node(NodeConfig(network="flood", listen=("tcp://127.0.0.1:0",))) as peer:
            peer_echo = peer.channel(ECHO)
            await peer.dial(address)
            await wait_until(lambda: peer.node_id in node.connected_peers())
            assert await peer_echo.request(node.node_id, b"still here", timeout=5) == b"still here"
        tg.cancel_scope.cancel()
