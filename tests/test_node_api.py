"""Node API edges: exceptions leave ``async with Node`` unwrapped, a dial's timeout covers the
hello, redialling replaces a connection the other end still holds, close errors are fresh."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from overlay.address import ListenAddress, NodeAddress
from overlay.connection._core import ChannelParams, ResponseReceived
from overlay.errors import ConnectionClosed, HandshakeTimeout
from overlay.identity import NodeKey
from overlay.node import Node
from overlay.router._channel import ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.router._destination import LOCAL
from overlay.testing import MemoryNetwork
from overlay.transport import Transport
from overlay.transport._secure import SecureIdentity, SecureStream
from overlay.transport._tcp import TcpTransport
from tests.raw_peer import raw_peer
from tests.support import (
    both_backends,
    both_transports,
    config_for,
    connected_pair,
    make_node,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

ECHO = ChannelSpec(id=7, name="echo", codec=BytesCodec(), response_codec=BytesCodec())


anyio_backend = both_backends()
transport = both_transports()


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message


async def test_an_exception_in_the_body_leaves_unwrapped() -> None:
    with pytest.raises(KeyError, match="boom"):
        async with Node(config_for("tcp")):
            raise KeyError("boom")


async def test_an_outer_cancel_scope_ends_the_node_quietly() -> None:
    reached = False
    with anyio.move_on_after(0.05) as scope:
        async with Node(config_for("tcp")) as node:
            await anyio.sleep_forever()
    reached = True
    assert scope.cancelled_caught and reached
    assert node.connected_peers() == []


@contextlib.asynccontextmanager
async def _silent_after_noise(transport: str) -> AsyncIterator[tuple[Node, NodeAddress]]:
    """A running node and the address of a listener that completes the Noise handshake but
    never answers the hello (a real transport, no node behind it)."""
    net = MemoryNetwork()
    identity = SecureIdentity(NodeKey.generate())
    listener: Transport = (
        TcpTransport(identity, ListenAddress.parse("tcp://127.0.0.1:0"))
        if transport == "tcp" else net.transport(identity)
    )

    async def never_hello(stream: SecureStream) -> None:
        await anyio.sleep_forever()

    async with (
        make_node(config_for(transport), net) as node,
        anyio.create_task_group() as tg,
    ):
        addresses = await tg.start(listener.serve, never_hello)
        yield node, addresses[0]
        tg.cancel_scope.cancel()


async def test_dial_timeout_bounds_the_hello_too(transport: str) -> None:
    async with _silent_after_noise(transport) as (node, address):
        with pytest.raises(HandshakeTimeout):  # not after handshake_timeout (5 s)
            await node.dial(address, timeout=0.3)


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_dial_timeout_bounds_the_hello_exactly() -> None:
    """The dial fails when its own timeout expires, hello included (virtual time: the elapsed
    time is exact, so this runs on trio's mock clock only)."""
    async with _silent_after_noise("memory") as (node, address):
        started = anyio.current_time()
        with pytest.raises(HandshakeTimeout):
            await node.dial(address, timeout=0.3)
        assert anyio.current_time() - started == pytest.approx(0.3)


async def test_redial_replaces_a_connection_the_other_end_still_holds(transport: str) -> None:
    async with connected_pair(transport, [ECHO]) as (a, b):
        b.channel(ECHO).handle_requests(_echo)
        old_a = a.router.get_peer(b.node_id)
        old_b = b.router.get_peer(a.node_id)
        assert old_a is not None and old_b is not None
        old_a.close()  # a gave up on it; b has not noticed yet
        assert old_b.is_open
        await a.dial(b.address)  # must not return the closing connection
        new_a = a.router.get_peer(b.node_id)
        assert new_a is not None and new_a is not old_a and new_a.is_open
        assert await a.channel(ECHO).request(b.node_id, b"again", timeout=5) == b"again"
        await wait_until(lambda: (conn := b.router.get_peer(a.node_id)) is not None
                         and conn is not old_b)


async def test_each_failure_raises_a_fresh_exception(transport: str) -> None:
    async with connected_pair(transport, [ECHO]) as (a, b):
        conn = a.router.get_peer(b.node_id)
        assert conn is not None
        await conn.aclose()
        errors = []
        for _ in range(2):
            with pytest.raises(ConnectionClosed) as info:
                await conn.send_message(ECHO.id, b"x")
            errors.append(info.value)
        assert errors[0] is not errors[1]
        assert str(errors[0]) == str(errors[1])


async def test_equal_specs_built_separately_name_the_same_channel() -> None:
    def make() -> ChannelSpec[bytes, bytes]:
        return ChannelSpec(id=9, name="nine", codec=BytesCodec(), response_codec=BytesCodec())

    async with Node(config_for("tcp")) as node:
        first = node.channel(make())
        second = node.channel(make())  # equal spec: the same channel, not "already open"
        await first.send(LOCAL, b"hello")
        assert (await second.receive()).message == b"hello"


async def test_a_request_cancelled_before_it_starts_never_runs(transport: str) -> None:
    calls: list[bytes] = []

    async def handler(env: Envelope[bytes]) -> bytes:
        calls.append(env.message)
        return env.message

    network = MemoryNetwork()
    async with make_node(config_for(transport), network) as b:
        b.channel(ECHO).handle_requests(handler)
        peer = await raw_peer(b, network, channels=[ChannelParams(ECHO.id)])
        # A raw peer writes REQUEST and CANCEL together, so the responder reads both before
        # any worker starts the request.
        now = anyio.current_time()
        request_id = peer.core.send_request(ECHO.id, b"never")
        request_frame = peer.core.data_to_send(now)
        peer.core.cancel_request(request_id)
        cancel_frame = peer.core.data_to_send(now)
        assert request_frame and cancel_frame
        await peer.send(request_frame + cancel_frame)
        # The connection still works, and the cancelled request's handler never ran.
        answer = await peer.request(ECHO.id, b"after")
        assert isinstance(answer, ResponseReceived) and answer.payload == b"after"
        assert calls == [b"after"]
        conn = b.router.get_peer(peer.node_id)
        assert conn is not None
        assert conn.core.statistics().inbound_requests_active == 0
        await peer.aclose()
