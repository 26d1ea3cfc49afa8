"""TCP specifics: real ports, TCP_NODELAY, IPv6, dial error phases, serve's resilience."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute

from overlay.address import ListenAddress, NodeAddress
from overlay.errors import (
    ConfigError,
    ConnectFailure,
    DialError,
    HandshakeTimeout,
    InvalidAddressError,
    LocalProtocolError,
)
from overlay.transport import InboundHandler, RawConnection, TransportConfig
from overlay.transport._secure import PeerAttribute, SecureStream
from overlay.transport._tcp import TcpTransport, _unmap
from tests.support import both_backends, echo_stream, ipv6_available, seeded_identity

LOOPBACK = ListenAddress("tcp", "127.0.0.1", 0)


anyio_backend = both_backends()


@asynccontextmanager
async def _serving(
    transport: TcpTransport, handler: InboundHandler = echo_stream
) -> AsyncIterator[list[NodeAddress]]:
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(transport.serve, handler)
        yield addresses
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_real_port_is_reported_and_dialable_from_its_string_form() -> None:
    server = TcpTransport(seeded_identity(1), LOOPBACK)
    assert server.listen_addresses() == []
    async with _serving(server) as addresses:
        (address,) = addresses
        assert address.host == "127.0.0.1" and address.port > 0
        assert address.node_id == server.identity.node_id
        assert server.listen_addresses() == addresses
        parsed = NodeAddress.parse(str(address))
        async with await TcpTransport(seeded_identity(2)).dial(parsed, timeout=5) as stream:
            await stream.send(b"ping")
            assert await stream.receive() == b"ping"
    assert server.listen_addresses() == []
    with pytest.raises(DialError) as caught:  # the port is closed with serve
        await TcpTransport(seeded_identity(2)).dial(address, timeout=5)
    assert caught.value.reason is ConnectFailure.REFUSED  # decided at the transport boundary


@pytest.mark.anyio
async def test_tcp_nodelay_on_both_ends_and_socket_addresses() -> None:
    server = TcpTransport(seeded_identity(1), LOOPBACK)
    inbound: list[SecureStream] = []
    arrived = anyio.Event()

    async def handler(stream: SecureStream) -> None:
        inbound.append(stream)
        arrived.set()
        await echo_stream(stream)

    async with _serving(server, handler) as (address,):
        stream = await TcpTransport(seeded_identity(2)).dial(address, timeout=5)
        async with stream:
            await arrived.wait()
            for side in (stream, inbound[0]):
                sock = side.extra(SocketAttribute.raw_socket)
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert side.extra(PeerAttribute.remote_host) == "127.0.0.1"
            assert stream.extra(PeerAttribute.remote_address) == f"127.0.0.1:{address.port}"
            local_port = stream.extra(SocketAttribute.local_port)
            assert inbound[0].extra(PeerAttribute.remote_address) == f"127.0.0.1:{local_port}"


@pytest.mark.anyio
@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
async def test_ipv6_and_several_listen_addresses() -> None:
    server = TcpTransport(
        seeded_identity(1),
        [LOOPBACK, ListenAddress.parse("tcp://[::1]:0")],
        TransportConfig(max_pending_handshakes=4),
    )
    hosts: list[str] = []

    async def handler(stream: SecureStream) -> None:
        hosts.append(stream.extra(PeerAttribute.remote_host))
        await echo_stream(stream)

    async with _serving(server, handler) as addresses:
        assert [a.host for a in addresses] == ["127.0.0.1", "::1"]
        v6 = addresses[1]
        assert str(v6).endswith(f"@[::1]:{v6.port}")
        async with await TcpTransport(seeded_identity(2)).dial(
            NodeAddress.parse(str(v6)), timeout=5
        ) as s:
            assert s.extra(PeerAttribute.remote_address) == f"[::1]:{v6.port}"
            await s.send(b"six")
            assert await s.receive() == b"six"
    assert hosts == ["::1"]


def test_unmap_ipv4_mapped_addresses() -> None:
    assert _unmap("::ffff:192.0.2.1") == "192.0.2.1"
    assert _unmap("::1") == "::1"
    assert _unmap("fe80::1%eth0") == "fe80::1%eth0"
    assert _unmap("not-an-ip") == "not-an-ip"


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        TcpTransport(seeded_identity(1), ListenAddress("memory"))
    assert caught.value.key == "listen"
    with pytest.raises(ConfigError, match="handshake_timeout"):
        TransportConfig(handshake_timeout=-1)
    with pytest.raises(ConfigError, match="max_pending_handshakes"):
        TransportConfig(max_pending_handshakes=0)
    with pytest.raises(ConfigError, match="max_pending_handshakes"):
        TransportConfig(max_pending_handshakes=True)
    with pytest.raises(ConfigError, match="handshake_timeout"):
        TransportConfig(handshake_timeout=float("inf"))


@pytest.mark.anyio
async def test_dial_misuse_is_a_local_error() -> None:
    transport = TcpTransport(seeded_identity(1))
    memory = NodeAddress(seeded_identity(2).node_id, "memory")
    with pytest.raises(InvalidAddressError):
        await transport.dial(memory, timeout=5)
    with pytest.raises(LocalProtocolError):
        await transport.dial(NodeAddress(memory.node_id, "tcp", "127.0.0.1", 1), timeout=0)
    assert transport.statistics().dials == 0


class _HangingConnect(TcpTransport):
    async def _raw_connect(self, address: NodeAddress) -> RawConnection:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.anyio
async def test_connect_phase_timeout_is_a_dial_error() -> None:
    transport = _HangingConnect(seeded_identity(1))
    target = NodeAddress(seeded_identity(2).node_id, "tcp", "127.0.0.1", 9)
    with pytest.raises(DialError, match="timed out"):
        await transport.dial(target, timeout=0.05)
    stats = transport.statistics()
    assert (stats.dials, stats.dial_failures) == (1, 1)


@pytest.mark.anyio
async def test_silent_listener_is_a_handshake_timeout() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as raw_listener:
        port = raw_listener.extra(SocketAttribute.local_port)
        accepted: list[anyio.abc.SocketStream] = []

        async def hold(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)
            async with stream:
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(raw_listener.serve, hold)
            target = NodeAddress(seeded_identity(2).node_id, "tcp", "127.0.0.1", port)
            with pytest.raises(HandshakeTimeout):
                # the dial timeout (0.2 s) bounds the handshake, not the 10 s default
                await TcpTransport(seeded_identity(1)).dial(target, timeout=0.2)
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_connection_reset_before_accept_does_not_stop_serving() -> None:
    """A peer that connects and resets before the listener accepted (its address is then
    unknown) costs that connection only: serve goes on (it once ended the accept loop on trio,
    and with it the node)."""
    server = TcpTransport(seeded_identity(1), LOOPBACK)
    async with _serving(server) as (address,):
        for _ in range(3):
            # A blocking connect completes in the kernel's backlog; the abortive close (linger
            # 0: RST) happens before the event loop runs the accept loop again.
            with socket.create_connection((address.host, address.port)) as raw:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        async with await TcpTransport(seeded_identity(2)).dial(address, timeout=5) as stream:
            await stream.send(b"still serving")
            assert await stream.receive() == b"still serving"


@pytest.mark.anyio
async def test_handler_errors_are_counted_and_serve_goes_on() -> None:
    server = TcpTransport(seeded_identity(1), LOOPBACK)
    calls = 0

    async def flaky(stream: SecureStream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await stream.send(b"second")  # returns without closing: serve closes it

    async with _serving(server, flaky) as (address,):
        client = TcpTransport(seeded_identity(2))
        async with await client.dial(address, timeout=5) as first:
            with pytest.raises(anyio.EndOfStream):
                await first.receive()
        async with await client.dial(address, timeout=5) as second:
            assert await second.receive() == b"second"
            with pytest.raises(anyio.EndOfStream):
                await second.receive()
        stats = await server.wait_statistics(lambda s: s.active_inbound == 0)
    assert (stats.accepted, stats.handler_errors) == (2, 1)


@pytest.mark.anyio
async def test_serve_twice_and_bind_conflict() -> None:
    server = TcpTransport(seeded_identity(1), LOOPBACK)
    async with _serving(server) as (address,):
        with pytest.raises(LocalProtocolError, match="already serving"):
            await server.serve(echo_stream)
        taken = TcpTransport(seeded_identity(2), ListenAddress("tcp", "127.0.0.1", address.port))
        with pytest.raises(OSError):
            await taken.serve(echo_stream)
        assert taken.listen_addresses() == []
    # serve can run again once stopped
    async with _serving(server) as (again,):
        assert again.port > 0
