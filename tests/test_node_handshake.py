"""Connection set-up between real nodes: refusals carry a reason both sides see, the dialer
authenticates who answered, self-dials are refused and simultaneous dials end with exactly one
connection (loopback TCP and the memory network, asyncio and trio)."""

from __future__ import annotations

import logging

import anyio
import pytest

from overlay.address import ListenAddress, NodeAddress
from overlay.connection import _core as core_mod
from overlay.connection._core import ChannelParams, ConnectionCore, CoreConfig
from overlay.connection._observer import Observer
from overlay.errors import (
    AuthenticationError,
    IncompatiblePeerError,
    LocalProtocolError,
    NodeClosed,
    OverlayError,
)
from overlay.identity import NodeId, NodeKey
from overlay.node import PING, Node
from overlay.router._channel import ChannelSpec, Envelope
from overlay.router._codec import BytesCodec
from overlay.testing import MemoryNetwork, MemoryTransport
from overlay.transport import Transport
from overlay.transport._failures import Direction, HandshakeFailureReason
from overlay.transport._hello import receive_hello, send_hello
from overlay.transport._secure import PeerAttribute, SecureIdentity, SecureStream
from overlay.transport._tcp import TcpTransport
from overlay.wire._nodeinfo import (
    DisconnectReason,
    NodeInfo,
    decode_hello_reply,
    decode_node_info,
    encode_hello_reply,
    encode_node_info,
    hello_frame,
)
from tests.raw_peer import raw_peer
from tests.support import (
    both_backends,
    both_transports,
    config_for,
    connected_pair,
    make_node,
    node_pair,
    settle,
    virtual_time,
    wait_until,
)

pytestmark = pytest.mark.anyio

INBOUND = Direction.INBOUND
WRONG_NETWORK = HandshakeFailureReason.WRONG_NETWORK
NO_COMMON_CHANNEL = HandshakeFailureReason.NO_COMMON_CHANNEL

ECHO = ChannelSpec(id=5, name="echo", codec=BytesCodec(), response_codec=BytesCodec())

anyio_backend = both_backends()
transport = both_transports()


def _dialer(transport: str, net: MemoryNetwork, identity: SecureIdentity) -> Transport:
    return TcpTransport(identity) if transport == "tcp" else net.transport(identity)


async def _echo(env: Envelope[bytes]) -> bytes:
    return env.message + b"!"


async def test_wrong_network_is_refused_with_reason_on_both_sides(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overlay.node")
    net = MemoryNetwork()
    async with (
        make_node(config_for(transport, network="net-a"), net) as a,
        make_node(config_for(transport, network="net-b"), net) as b,
    ):
        a.channel(ECHO)
        b.channel(ECHO)
        with pytest.raises(IncompatiblePeerError) as info:
            await a.dial(b.address)
        assert info.value.reason == "wrong_network"
        await wait_until(lambda: b.handshake_failures[INBOUND].get(WRONG_NETWORK, 0) == 1)
        assert a.connected_peers() == [] and b.connected_peers() == []
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert any("inbound" in m and a.node_id in m and "wrong_network" in m for m in refusals)
        assert any("outbound" in m and b.node_id in m and "wrong_network" in m
                   for m in refusals)


async def test_no_common_channel_refused_by_the_listener(transport: str) -> None:
    """Every node has the built-in ping channel, so a peer without any channel in common is
    played by hand: it offers only channel 999 in its hello."""
    net = MemoryNetwork()
    async with make_node(config_for(transport), net) as b:
        b.channel(ECHO)
        identity = SecureIdentity(NodeKey.generate())
        stream = await _dialer(transport, net, identity).dial(b.address, timeout=5)
        async with stream:
            await send_hello(stream, encode_node_info(NodeInfo("overlay-local", channels=(999,))))
            with pytest.raises(IncompatiblePeerError) as info:
                decode_hello_reply(await receive_hello(stream, bytearray()))
        assert info.value.reason == "no_common_channel"
        await wait_until(lambda: b.handshake_failures[INBOUND].get(NO_COMMON_CHANNEL, 0) == 1)
        assert b.connected_peers() == []


async def test_no_common_channel_refused_by_the_dialer(transport: str) -> None:
    """The dialer checks the listener's NodeInfo too, and tells it why in a Disconnect frame."""
    net = MemoryNetwork()
    identity = SecureIdentity(NodeKey.generate())
    listener: Transport = (
        TcpTransport(identity, ListenAddress.parse("tcp://127.0.0.1:0"))
        if transport == "tcp" else net.transport(identity)
    )
    events: list[core_mod.Event] = []
    done = anyio.Event()

    async def raw_listener(stream: SecureStream) -> None:
        buffer = bytearray()
        offered = decode_node_info(await receive_hello(stream, buffer))
        assert ECHO.id in offered.channels
        await send_hello(stream, encode_hello_reply(NodeInfo("overlay-local", channels=(999,))))
        core = ConnectionCore(CoreConfig(ping_interval=0, idle_timeout=0), [],
                              now=anyio.current_time())
        core.receive_data(bytes(buffer), anyio.current_time())
        try:
            while True:
                core.receive_data(await stream.receive(), anyio.current_time())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        events.extend(core.events())
        done.set()

    async with (
        make_node(config_for(transport), net) as a,
        anyio.create_task_group() as tg,
    ):
        a.channel(ECHO)
        addresses = await tg.start(listener.serve, raw_listener)
        with pytest.raises(IncompatiblePeerError) as info:
            await a.dial(addresses[0])
        assert info.value.reason == "no_common_channel"
        with anyio.fail_after(5):
            await done.wait()
        assert [(type(e), getattr(e, "reason", None)) for e in events] == [
            (core_mod.DisconnectReceived, DisconnectReason.NO_COMMON_CHANNEL)
        ]
        assert a.connected_peers() == []
        tg.cancel_scope.cancel()


async def test_dialing_an_address_where_another_node_answers(transport: str) -> None:
    net = MemoryNetwork()
    impostor_target = NodeKey.generate().node_id
    async with node_pair(transport, [ECHO], network=net) as (a, b):
        real = b.address
        if transport == "tcp":
            wrong = NodeAddress(impostor_target, "tcp", real.host, real.port)
        else:
            wrong = net.misdirect(real, impostor_target)
        with pytest.raises(AuthenticationError) as info:
            await a.dial(wrong)
        assert impostor_target in str(info.value) and b.node_id in str(info.value)
        await settle(rounds=3)
        assert a.connected_peers() == [] and b.connected_peers() == []
        assert not b.peer_summaries()
        # the listener is unharmed: dialing it by its real id works
        assert await a.dial(real) == b.node_id


async def test_self_dial_is_refused(transport: str) -> None:
    async with make_node(config_for(transport), MemoryNetwork()) as a:
        a.channel(ECHO)
        with pytest.raises(LocalProtocolError):
            await a.dial(a.address)
        with pytest.raises(LocalProtocolError):
            await a.dial(str(a.address))
        assert a.connected_peers() == []


async def test_dial_when_connected_returns_the_existing_connection(transport: str) -> None:
    async with connected_pair(transport, [ECHO]) as (a, b):
        conn = a.router.get_peer(b.node_id)
        assert await a.dial(b.address) == b.node_id
        assert a.router.get_peer(b.node_id) is conn
        assert len(a.peer_summaries()) == 1


async def test_dial_after_close_raises_node_closed(transport: str) -> None:
    net = MemoryNetwork()
    async with make_node(config_for(transport), net) as b:
        b.channel(ECHO)
        a = make_node(config_for(transport), net)
        async with a:
            a.channel(ECHO)
        with pytest.raises(NodeClosed):
            await a.dial(b.address)


@pytest.mark.parametrize("attempt", range(4))
async def test_simultaneous_dial_ends_with_one_connection(transport: str, attempt: int) -> None:
    async with node_pair(transport) as (a, b):
        for node in (a, b):
            node.channel(ECHO).handle_requests(_echo)
        outcomes: dict[str, NodeId | OverlayError] = {}

        async def dial(name: str, src: Node, dst: Node) -> None:
            try:
                outcomes[name] = await src.dial(dst.address)
            except OverlayError as exc:  # the losing dial may be refused as a duplicate
                outcomes[name] = exc

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(dial, "a", a, b)
                tg.start_soon(dial, "b", b, a)
        for name, outcome in outcomes.items():
            if isinstance(outcome, IncompatiblePeerError):
                assert outcome.reason == "duplicate", (name, outcome)
            else:
                assert not isinstance(outcome, OverlayError), (name, outcome)
        await wait_until(lambda: a.connected_peers() == [b.node_id]
                         and b.connected_peers() == [a.node_id])
        # settled: every duplicate is gone on both sides, and it stays that way
        await settle(rounds=3)
        assert a.connected_peers() == [b.node_id] and b.connected_peers() == [a.node_id]
        assert len(a.peer_summaries()) == len(b.peer_summaries()) == 1
        conn_a = a.router.get_peer(b.node_id)
        conn_b = b.router.get_peer(a.node_id)
        assert conn_a is not None and conn_b is not None
        assert conn_a.is_open and conn_b.is_open
        assert conn_a.outbound != conn_b.outbound  # the two ends of one connection
        # the survivor is the one initiated by the smaller id (the same verdict on both ends)
        initiator = a if conn_a.outbound else b
        assert initiator.node_id == min(a.node_id, b.node_id)
        ca, cb = a.channel(ECHO), b.channel(ECHO)
        assert await ca.request(b.node_id, b"x", timeout=5) == b"x!"
        assert await cb.request(a.node_id, b"y", timeout=5) == b"y!"


# ------------------------------------------------ a newer connection from the same initiator


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, NodeId]] = []

    def on_peer_connected(self, peer: NodeId, *, outbound: bool, remote_host: str,
                          listen_addrs: tuple[str, ...]) -> None:
        self.events.append(("connected", peer))

    def on_peer_disconnected(self, peer: NodeId, reason: str) -> None:
        self.events.append(("disconnected", peer))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_replaced_connection_leaves_the_observer_connected() -> None:
    """A connection replaced by a newer one from the same initiator reports
    on_peer_disconnected *before* the newer one's on_peer_connected, so the observer (the peer
    manager) never believes a connected peer gone."""
    network = MemoryNetwork()
    seen = Recorder()
    config = config_for("memory")
    key_a = NodeKey.generate()
    async with make_node(config, network, key=key_a) as a, \
            make_node(config, network, observer=seen) as b:
        await a.dial(b.address)
        await wait_until(lambda: a.node_id in b.connected_peers())
        old = b.router.get_peer(a.node_id)
        # A second A-initiated connection while B still holds the old one (as when A
        # restarted, or after a partition that only A noticed): A's identity, a raw peer.
        await raw_peer(b, network, identity=SecureIdentity(key_a),
                       channels=[ChannelParams(c) for c in a.local_info().channels if c])
        await wait_until(lambda: b.router.get_peer(a.node_id) not in (None, old)
                         and old is not None and old.is_down)
        assert b.connected_peers() == [a.node_id]
        assert seen.events[-1] == ("connected", a.node_id), seen.events


class HeldDials(MemoryTransport):
    """A memory transport whose dials stop once the Noise handshake is done and our hello is
    sent, until the test sets the gate of that connection (keyed by its handshake hash): the
    test decides in which order the dialling node reads the hello replies."""

    def __init__(self, network: MemoryNetwork, identity: SecureIdentity) -> None:
        super().__init__(network, identity, "10.200.0.1")
        self.arrived: list[bytes] = []
        self.gates: dict[bytes, anyio.Event] = {}
        self.released: list[bytes] = []

    async def dial(self, address: NodeAddress, *, timeout: float,
                   first_data: bytes = b"") -> SecureStream:
        stream = await super().dial(address, timeout=timeout, first_data=first_data)
        key = stream.handshake_hash
        self.gates[key] = anyio.Event()
        self.arrived.append(key)
        await self.gates[key].wait()
        self.released.append(key)
        return stream


@pytest.mark.parametrize("anyio_backend", [virtual_time()])
async def test_two_concurrent_dials_to_one_peer_leave_one_connection() -> None:
    """With "a new connection from the same initiator replaces the old one", two concurrent
    dials to one peer whose hello replies are processed in a different order on the two ends
    must not leave each end keeping a different connection (each would close the other's as
    DUPLICATE and the peers would end up disconnected)."""
    network = MemoryNetwork()
    config = config_for("memory")
    key_a = NodeKey.generate()
    held = HeldDials(network, SecureIdentity(key_a))
    async with Node(config, key=key_a, transports=[held]) as a, \
            make_node(config, network) as b:
        # B registers the two inbound connections in some order and keeps the later one; A
        # is made to read its two hello replies in the opposite order (the order two sockets
        # become readable in is arbitrary, so this interleaving can happen unforced).
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.dial, b.address)
            tg.start_soon(a.dial, b.address)
            with anyio.move_on_after(1):  # only 1 arrives when A deduplicates the dials
                await wait_until(lambda: len(held.arrived) == 2)
            await wait_until(lambda: len(b.router.peers()) == 1)
            kept_by_b = b.router.peers()[0].extra(PeerAttribute.handshake_hash)
            order = sorted(held.arrived, key=lambda key: key != kept_by_b)
            for key in order:
                held.gates[key].set()
                await wait_until(lambda key=key: key in held.released)  # type: ignore[misc]
                await anyio.sleep(0.1)  # A registers it (and closes the older one)
        await anyio.sleep(5)  # let DUPLICATE disconnects play out
        assert a.connected_peers() == [b.node_id]
        assert b.connected_peers() == [a.node_id]


async def test_a_peer_hanging_up_during_the_hello_is_an_ordinary_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dialer that sends its hello and hangs up before the answer (a dial given up, a DHT
    lookup that finished): the listener's answer meets a closed stream. That is a set-up
    failure with reason ``connection``, counted and logged at debug, never a traceback. On the
    memory network, whose ``send`` to a closed peer raises at once (TCP would buffer it)."""
    caplog.set_level(logging.DEBUG, logger="overlay")
    net = MemoryNetwork()
    async with make_node(config_for("memory"), net) as b:
        hello = hello_frame(encode_node_info(NodeInfo("overlay-local", channels=(PING.id,))))
        stream = await net.transport(SecureIdentity(NodeKey.generate())).dial(
            b.address, timeout=5, first_data=hello)
        await stream.aclose()
        await wait_until(
            lambda: b.handshake_failures[INBOUND].get(HandshakeFailureReason.CONNECTION, 0) == 1)
        assert b.connected_peers() == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)
    hung_up = [r for r in caplog.records if "failed (connection)" in r.getMessage()]
    assert len(hung_up) == 1 and hung_up[0].levelno == logging.DEBUG
